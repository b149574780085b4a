"""The top cell's settings: flags of ``rackcells-top serve``, ``RACKCELLS_TOP_*`` variables, or a
YAML file given with ``--config``.

The registry has no default on purpose: a top cell that silently served an empty federation
because it looked for a ``cells.yaml`` in the wrong directory would be worse than one that
refuses to start and says what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, setting
from common.server import parse_hostport

__all__ = ["ENV_PREFIX", "TopConfig"]

ENV_PREFIX = "RACKCELLS_TOP"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class TopConfig:
    listen: str = setting("127.0.0.1:7000", "gRPC listen address HOST:PORT (port 0 picks one)")
    db: str = setting(
        "sqlite:///rackcells-top.db",
        "SQLAlchemy URL of the top's own database (operator flags, inventory cache): "
        "sqlite:///PATH (default) or postgresql+psycopg2://USER@HOST/DB",
    )
    registry: str = setting(
        "",
        "where the leaf cells are listed: static:FILE (YAML: cells: [{name, endpoint}]) or "
        "zk://HOST:PORT[,HOST:PORT...]/PATH (ZooKeeper); required",
    )
    fanout_timeout: float = setting(
        5.0,
        "seconds one leaf may take in a cross-cell call (a listing of cells/-); a slower cell "
        "is reported in unreachable. Also cut to the caller's own deadline",
    )
    secret_key_file: str = setting(
        "",
        "file with the key that seals cross-cell page tokens, created if missing; default: "
        "beside the SQLite database. With another database and no file, a throw-away key is "
        "used and page tokens stop working when the top restarts",
    )
    port_file: str = setting("", "write the bound gRPC port to this file once serving")
    log_level: str = setting("INFO", "log level: DEBUG, INFO, WARNING, ERROR")

    def __post_init__(self) -> None:
        if not self.registry:
            raise ConfigError(
                "registry is required: --registry static:FILE (a YAML list of cells) or "
                "--registry zk://HOST:PORT/PATH (or RACKCELLS_TOP_REGISTRY)"
            )
        if not self.registry.startswith(("static:", "zk://")):
            raise ConfigError(
                f"registry: {self.registry!r} is neither static:FILE nor zk://HOST:PORT/PATH"
            )
        try:
            parse_hostport(self.listen, "listen")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.fanout_timeout <= 0:
            raise ConfigError(f"fanout_timeout must be > 0, got {self.fanout_timeout}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {_LOG_LEVELS}")

    def key_path(self) -> Path | None:
        """Where the page-token key lives; None means a throw-away in-memory key."""
        if self.secret_key_file:
            return Path(self.secret_key_file)
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///") + ".key")
        return None
