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
    bmc_timeout: float = setting(5.0, "seconds one BMC call may take before it counts as failed")
    bmc_workers: int = setting(
        64, "threads for blocking BMC calls (the most BMCs talked to at once)"
    )
    lock_lease_seconds: float = setting(300.0, "node lock lease; a lease not renewed runs out")
    power_sync_interval: float = setting(
        60.0, "seconds between power-sync sweeps over the cell's nodes (0 turns the sweep off)"
    )
    power_sync_concurrency: int = setting(64, "BMCs the power sweep reads at once")
    power_sync_jitter: float = setting(
        0.1, "each sweep starts up to this fraction of the interval late, so cells do not align"
    )
    power_sync_policy: str = setting(
        "accept",
        "what the sweep does when a power state changed out of band: accept (record it) or "
        "enforce (set it back to the state on record)",
    )

    advertise: str = setting(
        "",
        "gRPC address HOST:PORT the top cell and the nodes' deploy agents use to reach this "
        "leaf (default: the listen address with the bound port)",
    )
    registry: str = setting(
        "",
        "register this cell in ZooKeeper: zk://HOST:PORT[,HOST:PORT…]/PATH (an ephemeral znode "
        "PATH/<cell> holding the advertised endpoint); empty: the top lists this cell statically",
    )
    http_listen: str = setting(
        "",
        "boot and image HTTP server HOST:PORT (iPXE scripts by MAC, cached images); "
        "empty: no HTTP server, so no deploys",
    )
    http_advertise: str = setting(
        "", "base URL nodes use to reach the HTTP server (default: http://<http_listen>)"
    )
    image_cache_dir: str = setting(
        "", "directory of the image cache (default: beside the SQLite database, or ./images)"
    )
    image_cache_bytes: int = setting(20 * 2**30, "size cap of the image cache in bytes (LRU)")
    agent_dir: str = setting(
        "", "directory with the deploy ramdisk's kernel and initramfs, served under /agent/"
    )
    deploy_concurrency: int = setting(
        20, "deploys that run at once in this cell; more wait in a FIFO queue"
    )
    power_on_rate: float = setting(
        5.0, "power-ons per second the cell allows (boot-storm pacing; 0 = unpaced)"
    )
    deploy_image_timeout: float = setting(1800.0, "seconds to get an image into the cache")
    deploy_pxe_timeout: float = setting(
        600.0, "seconds from power-on until the node fetches its boot script (POST + PXE)"
    )
    deploy_lookup_timeout: float = setting(
        600.0, "seconds from the boot script until the node's agent looks itself up"
    )
    deploy_write_timeout: float = setting(
        3600.0, "seconds from the agent's lookup until it reports the image written"
    )

    def __post_init__(self) -> None:
        problem = label_problem(self.cell)
        if problem:
            raise ConfigError(f"cell: {problem}")
        if self.workers < 1 or self.db_pool_size < 1 or self.bmc_workers < 1:
            raise ConfigError("workers, db_pool_size and bmc_workers must be at least 1")
        if self.power_sync_policy not in ("accept", "enforce"):
            raise ConfigError(
                f"power_sync_policy: {self.power_sync_policy!r} is not accept or enforce"
            )
        if self.registry and not self.registry.startswith("zk://"):
            raise ConfigError(f"registry: {self.registry!r} is not a zk://HOST:PORT/PATH URL")
        if self.deploy_concurrency < 1 or self.power_on_rate < 0:
            raise ConfigError("deploy_concurrency must be >= 1 and power_on_rate >= 0")
        if self.bmc_timeout <= 0 or self.power_sync_interval < 0 or self.power_sync_concurrency < 1:
            raise ConfigError(
                "bmc_timeout must be > 0, power_sync_interval >= 0, power_sync_concurrency >= 1"
            )

    def image_dir(self) -> Path:
        """Where cached images live."""
        if self.image_cache_dir:
            return Path(self.image_cache_dir)
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///") + ".images")
        return Path("images")

    def key_path(self) -> Path | None:
        """Where the secret key lives; None means an in-memory database with a throw-away key."""
        if self.secret_key_file:
            return Path(self.secret_key_file)
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///") + ".key")
        if self.db.startswith("sqlite"):
            return None
        raise ConfigError("secret_key_file is required with a database other than SQLite")
