"""Reads served from the wire cache are never stale: after every kind of write, GetNode and
ListNodes give exactly what a store with an empty cache builds from the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from google.protobuf import field_mask_pb2
from sqlalchemy import Engine

from common.db import make_engine
from leaf_cell.db.migrate import upgrade
from leaf_cell.locks import NodeLocks
from leaf_cell.node_status import StatusStore
from leaf_cell.nodes import NodeStore
from leaf_cell.secrets import SecretBox
from leaf_cell.states import State
from rackcells.v1 import node_pb2, node_service_pb2

CELL = "rack-1"
NAME = f"cells/{CELL}/nodes/n1"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


def _create(store: NodeStore, node_id: str, mac: str) -> None:
    store.create(
        node_service_pb2.CreateNodeRequest(
            parent=f"cells/{CELL}",
            node_id=node_id,
            node=node_pb2.Node(
                bmc=node_pb2.BmcInfo(driver="fake", address="127.0.0.1", password="pw"),
                ports=[node_pb2.Port(mac=mac, pxe_enabled=True)],
                traits=["CUSTOM_A"],
            ),
        )
    )


def _list(store: NodeStore) -> list[node_pb2.Node]:
    request = node_service_pb2.ListNodesRequest(parent=f"cells/{CELL}", page_size=1)
    nodes: list[node_pb2.Node] = []
    while True:
        page = store.list_nodes(request)
        nodes += page.nodes
        if not page.next_page_token:
            return nodes
        request.page_token = page.next_page_token


def test_every_write_is_seen_through_the_cache(engine: Engine, box: SecretBox) -> None:
    store = NodeStore(engine, CELL, box)
    status = StatusStore(engine, CELL, box)
    locks = NodeLocks(engine, CELL, "conductor/test")
    _create(store, "n1", "52:54:00:00:00:01")
    _create(store, "n2", "52:54:00:00:00:02")

    def check(step: str) -> None:
        fresh = NodeStore(engine, CELL, box)  # an empty cache: built from the rows
        assert store.get(NAME) == fresh.get(NAME), step
        assert _list(store) == _list(fresh), step

    check("created")
    lease = locks.acquire("n1", "testing")
    check("locked")
    assert store.get(NAME).lock.holder == "conductor/test"
    locks.renew(lease)
    check("lease renewed")
    locks.release(lease)
    check("unlocked")
    assert not store.get(NAME).HasField("lock")
    status.record_power("n1", "ON")
    check("power recorded")
    status.touch_synced([t.pk for t in status.sync_targets(()) if t.node_id == "n1"])
    check("synced")
    status.set_provision("n1", State.MANAGEABLE, None)
    check("provision state")
    status.set_instance_info("n1", {"image_url": "http://127.0.0.1/i.img"})
    check("instance info")
    store.update(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=NAME, traits=["CUSTOM_B"], extra={"k": "v"}),
            update_mask=field_mask_pb2.FieldMask(paths=["traits", "extra"]),
        )
    )
    check("updated")
    store.delete(node_service_pb2.DeleteNodeRequest(name=NAME))
    _create(store, "n1", "52:54:00:00:00:09")
    check("deleted and enrolled again")
