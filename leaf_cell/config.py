"""The leaf cell's settings: flags of ``rackcells-leaf serve``, ``RACKCELLS_LEAF_*`` variables,
or a YAML file given with ``--config``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, setting
from common.names import label_problem

__all__ = ["ENV_PREFIX", "LeafConfig"]

ENV_PREFIX = "RACKCELLS_LEAF"


@dataclass(frozen=True)
class LeafConfig:
    cell: str = setting("", "this leaf's cell id (an RFC 1123 label, e.g. rack-1); required")
    listen: str = setting("127.0.0.1:7001", "gRPC listen address HOST:PORT (port 0 picks one)")
    db: str = setting(
        "sqlite:///rackcells-leaf.db",
        "SQLAlchemy database URL: sqlite:///PATH (default) or postgresql+psycopg2://USER@HOST/DB",
    )
    secret_key_file: str = setting(
        "",
        "file with the key that encrypts BMC passwords at rest, created if missing; "
        "default: beside the SQLite database (required for other databases)",
    )
    db_pool_size: int = setting(8, "database connections kept open")
    workers: int = setting(8, "threads that run blocking database work for the gRPC handlers")
    port_file: str = setting("", "write the bound gRPC port to this file once serving")
    log_level: str = setting("INFO", "log level: DEBUG, INFO, WARNING, ERROR")

    def __post_init__(self) -> None:
        problem = label_problem(self.cell)
        if problem:
            raise ConfigError(f"cell: {problem}")
        if self.workers < 1 or self.db_pool_size < 1:
            raise ConfigError("workers and db_pool_size must be at least 1")

    def key_path(self) -> Path | None:
        """Where the secret key lives; None means an in-memory database with a throw-away key."""
        if self.secret_key_file:
            return Path(self.secret_key_file)
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///") + ".key")
        if self.db.startswith("sqlite"):
            return None
        raise ConfigError("secret_key_file is required with a database other than SQLite")
