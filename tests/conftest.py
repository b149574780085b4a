"""Fixtures shared by the whole suite: a database on each backend and in-process leaf cells.

``db_url`` runs a test once against SQLite (a file in the test's tmp_path) and once against
PostgreSQL (a fresh database created for the test and dropped after it). The PostgreSQL server
is the one ``scripts/services start postgres`` runs; its URL comes from ``RACKCELLS_TEST_PG_URL``.
Without that variable the PostgreSQL run is skipped, unless ``RACKCELLS_REQUIRE_PG=1`` (set by
scripts/test), in which case it fails, so that CI cannot silently lose the PostgreSQL run.

``module_db_url`` is the same per test module (PostgreSQL databases are slow to create).
``leaf_runner`` starts leaf cells in this process with ``leaf_cell.server.start`` on one
background event loop; tests talk to them through ordinary synchronous gRPC channels.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

PG_URL_ENV = "RACKCELLS_TEST_PG_URL"
REQUIRE_PG_ENV = "RACKCELLS_REQUIRE_PG"


def pg_admin_url() -> str:
    """The PostgreSQL server's URL; skips (or fails under RACKCELLS_REQUIRE_PG=1) without it."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if url:
        return url
    if os.environ.get(REQUIRE_PG_ENV, "").strip() == "1":
        pytest.fail(
            f"{PG_URL_ENV} is not set but {REQUIRE_PG_ENV}=1 requires the PostgreSQL run: "
            "start it with `scripts/services start postgres` and `eval $(scripts/services env)`",
            pytrace=False,
        )
    pytest.skip(
        f"PostgreSQL run skipped: {PG_URL_ENV} is not set "
        "(run `scripts/services start postgres` and `eval $(scripts/services env)`)"
    )


@contextmanager
def fresh_pg_database(admin_url: str) -> Iterator[str]:
    """Creates an empty database on the server of ``admin_url``; drops it afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"rackcells_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def _database(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'leaf.db'}"
        return
    with fresh_pg_database(pg_admin_url()) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the parametrised backend, private to this test."""
    with _database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database of the parametrised backend, shared by the tests of one module.

    Creating a PostgreSQL database costs about 0.2 s, so suites that only need empty tables
    share one database per module and empty it before each test.
    """
    with _database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


class LoopThread:
    """An asyncio event loop running in a daemon thread, for in-process grpc.aio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="test-leaf-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Runs ``coro`` on the loop and returns its result (the timeout only guards hangs)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@pytest.fixture(scope="session")
def leaf_loop() -> Iterator[LoopThread]:
    """One event loop for every in-process server of the session (grpc.aio binds to a loop)."""
    loop = LoopThread()
    yield loop
    loop.close()


def quiet_leaf_settings() -> dict[str, Any]:
    """Settings that switch off a leaf's periodic background work (the power-sync sweep), so
    that the database changes only through the calls a test makes. Only those settings the
    current LeafConfig has."""
    import dataclasses

    from leaf_cell.config import LeafConfig

    names = {f.name for f in dataclasses.fields(LeafConfig)}
    wanted = {"power_sync_interval": 0.0}
    return {k: v for k, v in wanted.items() if k in names}


class LeafRunner:
    """Starts in-process leaf cells for one test and stops whatever is still running after it."""

    def __init__(self, loop: LoopThread, tmp_path: Path) -> None:
        self._loop = loop
        self._tmp_path = tmp_path
        self._running: list[Any] = []

    def start(self, db: str, cell: str = "rack-1", **settings: Any) -> Any:
        """Starts a leaf serving ``cell`` from ``db`` on 127.0.0.1 with a free port."""
        from leaf_cell.config import LeafConfig
        from leaf_cell.server import start

        settings.setdefault("secret_key_file", str(self._tmp_path / f"{cell}.key"))
        for name, value in quiet_leaf_settings().items():
            settings.setdefault(name, value)
        config = LeafConfig(cell=cell, listen="127.0.0.1:0", db=db, **settings)
        leaf = self._loop.run(start(config))
        self._running.append(leaf)
        return leaf

    def stop(self, leaf: Any) -> None:
        if leaf in self._running:
            self._running.remove(leaf)
            self._loop.run(leaf.stop(grace=0))

    def stop_all(self) -> None:
        for leaf in reversed(list(self._running)):
            self.stop(leaf)


@pytest.fixture
def leaf_runner(leaf_loop: LoopThread, tmp_path: Path) -> Iterator[LeafRunner]:
    """Starts leaves for one test (keys in its tmp_path); stops them after it."""
    runner = LeafRunner(leaf_loop, tmp_path)
    yield runner
    runner.stop_all()


@pytest.fixture(scope="module")
def module_leaf_runner(
    leaf_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LeafRunner]:
    """Starts leaves shared by the tests of one module; stops them after the module."""
    runner = LeafRunner(leaf_loop, tmp_path_factory.mktemp("leaf"))
    yield runner
    runner.stop_all()
