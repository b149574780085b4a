"""Fixtures of the registry suite: a private registry path per test on the shared ZooKeeper,
leaf registrations that are stopped afterwards, and top-side registries running on the
session's event loop with a recorder subscribed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from zkkit import MembershipLog, PrivateZk, zk_hosts

from leaf_cell.registration import Registration
from top_cell.registry import ZkRegistry


@pytest.fixture(scope="session")
def zk() -> str:
    """HOST:PORT of the shared ZooKeeper server."""
    return zk_hosts()


@pytest.fixture
def zk_root(zk: str) -> Iterator[str]:
    """A znode of this test alone on the shared server (deleted afterwards)."""
    root = f"/rackcells-test/{uuid.uuid4().hex[:12]}"
    yield root
    admin = KazooClient(zk)
    admin.start(timeout=10)
    try:
        with contextlib.suppress(NoNodeError):  # nothing was created
            admin.delete(root, recursive=True)
    finally:
        admin.stop()
        admin.close()


@pytest.fixture
def zk_url(zk: str, zk_root: str) -> str:
    """The ``registry`` setting of this test: its own path on the shared server."""
    return f"zk://{zk}{zk_root}/cells"


@pytest.fixture
def zk_admin(zk: str) -> Iterator[KazooClient]:
    """An independent client to look at (and tamper with) the znodes."""
    client = KazooClient(zk)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def registrations() -> Iterator[Callable[..., Registration]]:
    """Starts leaf registrations; stops whatever is still registered after the test."""
    started: list[Registration] = []

    def _register(url: str, cell: str, endpoint: str = "127.0.0.1:7001", **kw: Any) -> Registration:
        reg = Registration(url, cell, endpoint, kw.pop("version", "1.2.3"), **kw)
        reg.start()
        started.append(reg)
        return reg

    yield _register
    for reg in started:
        reg.stop()


@pytest.fixture
def zk_registry(leaf_loop: Any) -> Iterator[Callable[[str], tuple[ZkRegistry, MembershipLog]]]:
    """Starts top-side registries on the session's event loop with a recorder subscribed."""
    started: list[ZkRegistry] = []

    def _start(url: str) -> tuple[ZkRegistry, MembershipLog]:
        registry = ZkRegistry(url)
        log = MembershipLog()

        async def start() -> None:
            await registry.start()
            registry.subscribe(log)

        leaf_loop.run(start())
        started.append(registry)
        return registry, log

    yield _start
    for registry in started:
        leaf_loop.run(registry.stop())


@pytest.fixture
def private_zk(zk: str, tmp_path: Path) -> Iterator[PrivateZk]:
    """A ZooKeeper server of this test alone (for restarting it), stopped afterwards."""
    server = PrivateZk(tmp_path / "state")
    server.start()
    yield server
    server.stop()
