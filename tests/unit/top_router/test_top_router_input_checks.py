"""The top's CreateNode, BatchCreateNodes and UpdateNode run the leaf's request checks
(common.node_checks) before the cross-cell MAC look-up and before forwarding, so bad input gets a
leaf's INVALID_ARGUMENT and field violations even when it also carries a MAC that another cell
holds.

The router's methods are called directly: a fake directory records which cell would have been
forwarded to and stops there, so no server or leaf is needed.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest
from cryptography.fernet import Fernet
from google.protobuf import field_mask_pb2

from common.errors import AlreadyExists, InvalidArgument, NotFound, RackcellsError, Unavailable
from rackcells.v1 import node_pb2, node_service_pb2
from top_cell.cross_list import PageTokens
from top_cell.router import NodeRouter

FOREIGN = "52:54:00:00:00:01"  # held by rack-2


class Forwarded(Exception):
    """Raised where the router would open the leaf's channel: the request got past the top."""


class Directory:
    def __init__(self) -> None:
        self.cells = ["rack-1", "rack-2", "rack-down"]
        self.asked: list[str] = []

    def names(self) -> list[str]:
        return list(self.cells)

    def channel(self, cell: str) -> grpc.aio.Channel:
        self.asked.append(cell)
        if cell == "rack-down":
            raise Unavailable(f"cell {cell} is down")
        raise Forwarded(cell)


class Index:
    def cell_of_uid(self, uid: str) -> str | None:
        return None

    def cell_of_mac(self, mac: str) -> str | None:
        return {FOREIGN: "rack-2"}.get(mac)


def _router() -> tuple[NodeRouter, Directory]:
    cells = Directory()
    tokens = PageTokens(Fernet.generate_key())
    return NodeRouter(cells, index=Index(), tokens=tokens, fanout_timeout=1.0), cells


def _node(*macs: str, **fields: Any) -> node_pb2.Node:
    return node_pb2.Node(
        bmc=node_pb2.BmcInfo(driver="fake"), ports=[node_pb2.Port(mac=m) for m in macs], **fields
    )


def _create(node_id: str, node: node_pb2.Node, cell: str = "rack-1") -> tuple[Exception, Directory]:
    router, cells = _router()
    request = node_service_pb2.CreateNodeRequest(parent=f"cells/{cell}", node_id=node_id, node=node)
    with pytest.raises((RackcellsError, Forwarded)) as info:
        asyncio.run(router.CreateNode(request, cast(Any, None)))
    return info.value, cells


def _update(
    paths: list[str], node: node_pb2.Node, cell: str = "rack-1"
) -> tuple[Exception, Directory]:
    router, cells = _router()
    node.name = f"cells/{cell}/nodes/n-1"
    request = node_service_pb2.UpdateNodeRequest(
        node=node, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    with pytest.raises((RackcellsError, Forwarded)) as info:
        asyncio.run(router.UpdateNode(request, cast(Any, None)))
    return info.value, cells


def _fields(err: BaseException) -> list[str]:
    assert isinstance(err, InvalidArgument), err
    return [v.field for v in err.violations]


def test_create_bad_node_id_with_a_foreign_mac_is_invalid_not_already_exists() -> None:
    err, cells = _create("Bad_Id", _node(FOREIGN))
    assert _fields(err) == ["node_id"]
    assert cells.asked == []


def test_create_reports_every_violation_together_as_a_leaf_does() -> None:
    err, _ = _create("Bad", _node("nope", FOREIGN, traits=["lower"]))
    assert _fields(err) == ["node_id", "node.traits[0]", "node.ports[0].mac"]


def test_create_checks_the_node_with_a_leafs_defaults() -> None:
    # No driver means ipmi at a leaf, and ipmi needs an address.
    node = node_pb2.Node(ports=[node_pb2.Port(mac=FOREIGN)])
    err, _ = _create("ok-id", node)
    assert _fields(err) == ["node.bmc.address"]


def test_create_valid_with_a_foreign_mac_is_already_exists_naming_the_port() -> None:
    err, cells = _create("ok-id", _node("aa:bb:cc:00:00:01", "52-54-00-00-00-01"))
    assert isinstance(err, AlreadyExists)
    assert err.metadata == {"mac": FOREIGN, "cell": "cells/rack-2", "field": "node.ports[1].mac"}
    assert cells.asked == []


def test_create_in_the_cell_that_holds_the_mac_is_left_to_its_leaf() -> None:
    err, cells = _create("ok-id", _node(FOREIGN), cell="rack-2")
    assert isinstance(err, Forwarded)
    assert cells.asked == ["rack-2"]


def test_create_for_an_unknown_cell_is_not_found_before_the_body_is_checked() -> None:
    # A leaf answers NOT_FOUND for a cell it does not serve before it looks at node_id.
    err, cells = _create("Bad_Id", _node(FOREIGN), cell="rack-77")
    assert isinstance(err, NotFound)
    assert cells.asked == []


def test_create_for_a_down_cell_still_gets_its_bad_input_named() -> None:
    err, cells = _create("Bad_Id", _node(), cell="rack-down")
    assert _fields(err) == ["node_id"]
    assert cells.asked == []


def test_update_immutable_path_with_a_foreign_mac_is_invalid_not_already_exists() -> None:
    err, cells = _update(["ports", "uid"], _node(FOREIGN))
    assert _fields(err) == ["update_mask"]
    assert cells.asked == []


def test_update_bad_mac_next_to_a_foreign_one_is_invalid() -> None:
    err, _ = _update(["ports"], _node(FOREIGN, "bogus"))
    assert _fields(err) == ["node.ports[1].mac"]


def test_update_star_mask_checks_macs_across_cells() -> None:
    err, cells = _update(["*"], _node(FOREIGN))
    assert isinstance(err, AlreadyExists)
    assert cells.asked == []


def test_update_without_ports_in_the_mask_ignores_the_ports_it_carries() -> None:
    err, cells = _update(["extra"], _node(FOREIGN, "bogus"))
    assert isinstance(err, Forwarded)
    assert cells.asked == ["rack-1"]


def _batch(*items: tuple[str, node_pb2.Node]) -> tuple[Exception, Directory]:
    router, cells = _router()
    request = node_service_pb2.BatchCreateNodesRequest(
        parent="cells/rack-1",
        requests=[node_service_pb2.CreateNodeRequest(node_id=i, node=n) for i, n in items],
    )
    with pytest.raises((RackcellsError, Forwarded)) as info:
        asyncio.run(router.BatchCreateNodes(request, cast(Any, None)))
    return info.value, cells


def test_batch_with_a_foreign_mac_is_already_exists_naming_the_request_and_port() -> None:
    err, cells = _batch(
        ("n-1", _node("52:54:00:00:00:09")), ("n-2", _node("aa:bb:cc:00:00:01", FOREIGN))
    )
    assert isinstance(err, AlreadyExists)
    assert err.metadata["field"] == "requests[1].node.ports[1].mac"
    assert cells.asked == []


def test_batch_bad_input_wins_over_a_foreign_mac_and_valid_batches_are_forwarded() -> None:
    err, cells = _batch(("n-1", _node(FOREIGN)), ("Bad", _node()))
    assert isinstance(err, InvalidArgument)
    assert [v.field for v in err.violations] == ["requests[1].node_id"]
    err, cells = _batch(("n-1", _node("52:54:00:00:00:09")), ("n-2", _node()))
    assert isinstance(err, Forwarded) and cells.asked == ["rack-1"]
