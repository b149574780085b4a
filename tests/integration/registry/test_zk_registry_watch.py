"""The top's ZooKeeper registry against real leaf registrations: cells appear and vanish as
leaves start, stop or die, malformed znodes are ignored, and subscribers hear it on the loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from zkkit import MembershipLog

from common.zk import SESSION_TIMEOUT
from leaf_cell.registration import Registration
from top_cell.registry import CellInfo, ZkRegistry

StartRegistry = Callable[[str], tuple[ZkRegistry, MembershipLog]]

# ZooKeeper expires sessions in buckets of one tick (2 s in scripts/services' zoo.cfg).
EXPIRY_BOUND = SESSION_TIMEOUT + 2 * 2.0 + 3.0


def test_subscribe_is_told_the_membership_at_once_and_on_the_loop(
    zk_url: str, registrations: Callable[..., Registration], zk_registry: StartRegistry
) -> None:
    registrations(zk_url, "rack-1", "127.0.0.1:7001", version="1.0")

    registry, log = zk_registry(zk_url)

    assert registry.cells() == {"rack-1": CellInfo("rack-1", "127.0.0.1:7001", "1.0")}
    assert log.calls[0][1] == registry.cells()
    assert log.calls[0][2] == "test-leaf-loop"
    assert registry.static is False


def test_a_cell_appears_when_its_leaf_registers_and_vanishes_at_once_on_a_clean_stop(
    zk_url: str, zk_registry: StartRegistry
) -> None:
    registry, log = zk_registry(zk_url)
    assert registry.cells() == {}

    reg = Registration(zk_url, "rack-2", "127.0.0.1:7002", "1")
    reg.start()
    try:
        log.wait_for(lambda m: "rack-2" in m, 5, "rack-2 to appear")
        assert registry.cells()["rack-2"].endpoint == "127.0.0.1:7002"
    finally:
        stopped = time.monotonic()
        reg.stop()
    seen = log.wait_for(lambda m: "rack-2" not in m, 5, "rack-2 to vanish")
    assert seen - stopped < 2.0
    assert all(thread == "test-leaf-loop" for _, _, thread in log.calls)


@pytest.fixture
def leaf_process(zk_url: str) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Runs a Registration in a child process (a leaf we can kill); kills leftovers by PID."""
    children: list[subprocess.Popen[str]] = []

    def _spawn(cell: str) -> subprocess.Popen[str]:
        code = textwrap.dedent(
            f"""
            import sys, time
            from leaf_cell.registration import Registration
            Registration({zk_url!r}, {cell!r}, "127.0.0.1:7009", "1").start()
            print("registered", flush=True)
            time.sleep(120)
            """
        )
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "registered"
        return child

    yield _spawn
    for child in children:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def test_a_killed_leaf_vanishes_within_the_session_timeout(
    zk_url: str, zk_registry: StartRegistry, leaf_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    _, log = zk_registry(zk_url)
    child = leaf_process("rack-3")
    log.wait_for(lambda m: "rack-3" in m, 5, "rack-3 to appear")

    os.kill(child.pid, signal.SIGKILL)
    killed = time.monotonic()
    child.wait(timeout=10)

    seen = log.wait_for(lambda m: "rack-3" not in m, EXPIRY_BOUND, "killed rack-3 to vanish")
    # Not before its session could have expired: membership is ZooKeeper's word, not a guess.
    assert seen - killed > SESSION_TIMEOUT * 0.5


def test_a_malformed_znode_is_ignored_and_the_other_cells_stay(
    zk_url: str,
    zk_root: str,
    zk_admin: KazooClient,
    registrations: Callable[..., Registration],
    zk_registry: StartRegistry,
) -> None:
    registrations(zk_url, "rack-1", "127.0.0.1:7001")
    zk_admin.create(f"{zk_root}/cells/rack-bad", b"not json", ephemeral=True)
    zk_admin.create(f"{zk_root}/cells/rack-noend", b'{"version": "1"}', ephemeral=True)
    zk_admin.create(f"{zk_root}/cells/Not_A_Label", b'{"endpoint": "h:1"}', ephemeral=True)

    registry, log = zk_registry(zk_url)
    assert set(registry.cells()) == {"rack-1"}

    # A malformed cell that is fixed appears; one that breaks again disappears.
    zk_admin.set(f"{zk_root}/cells/rack-bad", b'{"endpoint": "127.0.0.1:7005"}')
    log.wait_for(lambda m: "rack-bad" in m, 5, "the repaired znode to be accepted")
    zk_admin.set(f"{zk_root}/cells/rack-bad", b'{"endpoint": "no port"}')
    log.wait_for(lambda m: "rack-bad" not in m, 5, "the broken znode to be dropped")
    assert set(registry.cells()) == {"rack-1"}


def test_a_cell_that_restarts_quickly_is_seen_with_its_new_endpoint(
    zk_url: str, registrations: Callable[..., Registration], zk_registry: StartRegistry
) -> None:
    _, log = zk_registry(zk_url)
    first = Registration(zk_url, "rack-1", "127.0.0.1:7001", "1")
    first.start()
    log.wait_for(lambda m: "rack-1" in m, 5, "rack-1 to appear")

    first.stop()
    registrations(zk_url, "rack-1", "127.0.0.1:7101", version="2")

    log.wait_for(
        lambda m: m.get("rack-1") == CellInfo("rack-1", "127.0.0.1:7101", "2"),
        5,
        "rack-1 to come back at its new endpoint",
    )


def test_many_cells_are_all_seen(
    zk_url: str, registrations: Callable[..., Registration], zk_registry: StartRegistry
) -> None:
    names = [f"rack-{i}" for i in range(12)]
    for i, name in enumerate(names[:6]):
        registrations(zk_url, name, f"127.0.0.1:{7000 + i}")
    registry, log = zk_registry(zk_url)
    assert set(registry.cells()) == set(names[:6])
    for i, name in enumerate(names[6:], start=6):
        registrations(zk_url, name, f"127.0.0.1:{7000 + i}")
    log.wait_for(lambda m: set(m) == set(names), 5, "all twelve cells")
