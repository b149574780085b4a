"""Database engine helpers: one place that knows how SQLite and PostgreSQL are to be set up.

SQLite is the embedded default: WAL journal so that readers never wait for the writer,
``synchronous=NORMAL`` (durable at checkpoints, fast commits), foreign keys on, and a busy
timeout so that concurrent writers queue instead of failing. Statement parameters are hidden
from SQLAlchemy's exception messages so a failing INSERT can never echo a secret.

SQLite has one writer at a time, and a writer that finds the database locked backs off in
sleeps of up to 100 ms. With a dozen request threads enrolling nodes that turns contention into
idle time, so writers of one process queue on a lock of their own instead (:class:`_WriteGate`):
a connection takes it just before its first INSERT, UPDATE or DELETE of a transaction and gives
it back at commit or rollback. Readers never take it (WAL lets them run beside the writer), and
writers in other processes still meet SQLite's busy timeout as before.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["make_engine"]


_BUSY_TIMEOUT_S = 10.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


class _WriteGate:
    """One process's writers to one SQLite file, in turn.

    A plain lock, not an RLock: a transaction may end in another thread than it began (a pool
    resetting a connection), and only a plain lock may be released there. A thread that already
    writes through another connection does not wait for itself; SQLite's busy timeout decides,
    as it would without the gate. A writer that waits longer than the busy timeout goes on
    without the gate and so meets the same timeout error it would have met anyway.
    """

    _gates: dict[str, _WriteGate] = {}
    _gates_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @classmethod
    def of(cls, database: str) -> _WriteGate:
        with cls._gates_lock:
            return cls._gates.setdefault(database, cls())

    def enter(self) -> bool:
        """Waits for the turn; False when the caller goes on without holding the gate."""
        me = threading.get_ident()
        if self._owner == me:
            return False
        if not self._lock.acquire(timeout=_BUSY_TIMEOUT_S):
            return False
        self._owner = me
        return True

    def leave(self) -> None:
        self._owner = None
        self._lock.release()


class _GatedConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions pass the file's :class:`_WriteGate`."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._gate = _WriteGate.of(str(database))
        self._holding = False

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _GatedCursor)

    def before(self, sql: str) -> None:
        # Python's sqlite3 opens the transaction itself, just before the first write of one.
        if not self._holding and not self.in_transaction and sql.lstrip()[:6].upper() in _WRITES:
            self._holding = self._gate.enter()

    def after(self) -> None:
        """Gives the gate back once no transaction is open (commit, rollback, autocommit)."""
        if self._holding and not self.in_transaction:
            self._holding = False
            self._gate.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.after()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.after()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                self._gate.leave()


class _GatedCursor(sqlite3.Cursor):
    connection: _GatedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> _GatedCursor:
        self.connection.before(sql)
        try:
            super().execute(sql, parameters)
        finally:
            self.connection.after()
        return self

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _GatedCursor:
        self.connection.before(sql)
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            self.connection.after()
        return self


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
            connect_args={
                "check_same_thread": False,
                "timeout": _BUSY_TIMEOUT_S,
                "factory": _GatedConnection,
            },
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
