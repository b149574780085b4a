"""The leaf's registration against a real ZooKeeper: the znode it keeps, how it goes away, and
how it comes back after the session is lost while the leaf keeps running."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient
from zkkit import free_port, wait_until

from leaf_cell.registration import Registration, RegistrationError


def owner(admin: KazooClient, path: str) -> int | None:
    stat = admin.exists(path)
    return None if stat is None else int(stat.ephemeralOwner)


def test_start_creates_an_ephemeral_znode_with_the_endpoint_as_json(
    zk_url: str, zk_root: str, zk_admin: KazooClient, registrations: Callable[..., Registration]
) -> None:
    reg = registrations(zk_url, "rack-1", "10.0.0.5:7001", version="2.0.1")

    data, stat = zk_admin.get(f"{zk_root}/cells/rack-1")
    assert json.loads(data) == {"cell": "rack-1", "endpoint": "10.0.0.5:7001", "version": "2.0.1"}
    assert stat.ephemeralOwner == reg.client.client_id[0]


def test_stop_removes_the_znode_at_once(zk_url: str, zk_root: str, zk_admin: KazooClient) -> None:
    reg = Registration(zk_url, "rack-1", "127.0.0.1:7001", "1")
    reg.start()
    assert zk_admin.exists(f"{zk_root}/cells/rack-1")

    reg.stop()

    assert zk_admin.exists(f"{zk_root}/cells/rack-1") is None
    reg.stop()  # idempotent


def test_a_new_registration_replaces_a_stale_znode_of_the_same_cell(
    zk: str,
    zk_url: str,
    zk_root: str,
    zk_admin: KazooClient,
    registrations: Callable[..., Registration],
) -> None:
    # A previous run of the leaf whose session is still alive (e.g. killed a moment ago).
    previous = KazooClient(zk)
    previous.start(timeout=10)
    try:
        previous.create(
            f"{zk_root}/cells/rack-1", b'{"endpoint": "10.9.9.9:1"}', ephemeral=True, makepath=True
        )

        reg = registrations(zk_url, "rack-1", "127.0.0.1:7001")

        data, stat = zk_admin.get(f"{zk_root}/cells/rack-1")
        assert json.loads(data)["endpoint"] == "127.0.0.1:7001"
        assert stat.ephemeralOwner == reg.client.client_id[0]
    finally:
        previous.stop()
        previous.close()
    # The old session ending does not take the new znode with it.
    assert owner(zk_admin, f"{zk_root}/cells/rack-1") == reg.client.client_id[0]


def test_a_dropped_connection_keeps_the_session_and_the_znode(
    zk_url: str, zk_root: str, zk_admin: KazooClient, registrations: Callable[..., Registration]
) -> None:
    reg = registrations(zk_url, "rack-1")
    session = reg.client.client_id[0]

    reg.client._connection._socket.shutdown(socket.SHUT_RDWR)

    wait_until(lambda: reg.client.connected, 10, "the registration to reconnect")
    assert reg.client.client_id[0] == session
    assert owner(zk_admin, f"{zk_root}/cells/rack-1") == session


def test_after_the_session_expires_the_znode_comes_back_without_a_restart(
    zk: str,
    zk_url: str,
    zk_root: str,
    zk_admin: KazooClient,
    registrations: Callable[..., Registration],
) -> None:
    reg = registrations(zk_url, "rack-1", "127.0.0.1:7001")
    old_session, password = reg.client.client_id

    # Closing the same session from another client is how ZooKeeper expires it on demand:
    # the server deletes the ephemeral znode and tells the registration its session is gone.
    thief = KazooClient(zk, client_id=(old_session, password))
    thief.start(timeout=10)
    thief.stop()
    thief.close()

    def recreated() -> bool:
        current = owner(zk_admin, f"{zk_root}/cells/rack-1")
        return current is not None and current != old_session

    wait_until(recreated, 15, "the znode to be re-created by a new session")
    data, stat = zk_admin.get(f"{zk_root}/cells/rack-1")
    assert stat.ephemeralOwner == reg.client.client_id[0]
    assert json.loads(data)["endpoint"] == "127.0.0.1:7001"


def test_start_fails_clearly_when_zookeeper_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    reg = Registration(
        f"zk://127.0.0.1:{port}/rackcells/cells", "rack-1", "127.0.0.1:7001", "1", timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(RegistrationError, match=f"127.0.0.1:{port}.*did not answer"):
        reg.start()
    assert time.monotonic() - started < 5
    reg.stop()  # nothing to do, no error
