"""Both sides of the registry across ZooKeeper restarts (a private server, restarted through
scripts/services): the last membership is kept while ZooKeeper is down, and afterwards leaves
and top resync without being restarted, also when the server comes back without its data."""

from __future__ import annotations

import time
from collections.abc import Callable

from kazoo.client import KazooClient
from zkkit import MembershipLog, PrivateZk, wait_until

from leaf_cell.registration import Registration
from top_cell.registry import ZkRegistry

StartRegistry = Callable[[str], tuple[ZkRegistry, MembershipLog]]


def cells_on_server(hosts: str, path: str) -> set[str]:
    admin = KazooClient(hosts)
    admin.start(timeout=10)
    try:
        return set(admin.get_children(path)) if admin.exists(path) else set()
    finally:
        admin.stop()
        admin.close()


def test_a_restart_keeps_sessions_and_the_watches_keep_working(
    private_zk: PrivateZk, registrations: Callable[..., Registration], zk_registry: StartRegistry
) -> None:
    url = f"zk://{private_zk.hosts}/rackcells/cells"
    registrations(url, "rack-1", "127.0.0.1:7001")
    leaving = registrations(url, "rack-2", "127.0.0.1:7002")
    registry, log = zk_registry(url)
    assert set(registry.cells()) == {"rack-1", "rack-2"}

    private_zk.stop()
    time.sleep(0.5)
    assert set(registry.cells()) == {"rack-1", "rack-2"}  # the last membership is kept
    private_zk.start()

    # The sessions survived (the server keeps them in its data): nothing changed ...
    wait_until(lambda: leaving.client.connected, 10, "the leaf to reconnect")
    assert set(registry.cells()) == {"rack-1", "rack-2"}
    # ... and the watches still fire in both directions.
    leaving.stop()
    log.wait_for(lambda m: set(m) == {"rack-1"}, 10, "rack-2 to vanish after the restart")
    registrations(url, "rack-3", "127.0.0.1:7003")
    log.wait_for(lambda m: set(m) == {"rack-1", "rack-3"}, 10, "rack-3 to appear")


def test_a_server_that_lost_its_data_is_repopulated_and_the_top_resyncs(
    private_zk: PrivateZk, registrations: Callable[..., Registration], zk_registry: StartRegistry
) -> None:
    url = f"zk://{private_zk.hosts}/rackcells/cells"
    registrations(url, "rack-1", "127.0.0.1:7001")
    gone = Registration(url, "rack-2", "127.0.0.1:7002", "1", timeout=2.0)
    gone.start()
    registry, log = zk_registry(url)
    assert set(registry.cells()) == {"rack-1", "rack-2"}

    private_zk.stop()
    private_zk.wipe()
    stopped = time.monotonic()
    gone.stop()  # cannot reach ZooKeeper: gives up on the znode quickly ...
    assert time.monotonic() - stopped < 5
    assert set(registry.cells()) == {"rack-1", "rack-2"}  # ... and the top keeps its view
    private_zk.start()

    # Every session expired with the data: rack-1 re-registers by itself, rack-2 is gone, and
    # the top, whose own session and watched path vanished too, follows.
    wait_until(
        lambda: cells_on_server(private_zk.hosts, "/rackcells/cells") == {"rack-1"},
        20,
        "rack-1 to re-register",
    )
    log.wait_for(lambda m: set(m) == {"rack-1"}, 10, "the top to resync to rack-1 alone")
    registrations(url, "rack-3", "127.0.0.1:7003")
    log.wait_for(lambda m: set(m) == {"rack-1", "rack-3"}, 10, "rack-3 to appear")
