"""Database engine helpers: one place that knows how SQLite and PostgreSQL are to be set up.

SQLite is the embedded default: WAL journal so that readers never wait for the writer,
``synchronous=NORMAL`` (durable at checkpoints, fast commits), foreign keys on, and a busy
timeout so that concurrent writers queue instead of failing. Statement parameters are hidden
from SQLAlchemy's exception messages so a failing INSERT can never echo a secret.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["make_engine"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """Creates the engine for ``url`` with the settings that suit its backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": 10},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        parsed,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )
