"""Where the top cell legitimately answers differently from a leaf, because it speaks for every
cell: CellService exists only on the top; ``cells/-`` means every cell (merged listings, merged
watches, capacity per cell, claims placed by policy); MACs are unique across cells; operations
and resumable watches stay per cell. Each difference is checked here on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from conformance_kit import (
    CELL,
    OTHER_CELL,
    PA,
    RPC_GUARD,
    WAIT_GUARD,
    Api,
    Federation,
    error_info,
    eventually,
    fake_node,
    new_mac,
    rpc_error,
    unique,
    violation_fields,
)
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from rackcells.v1 import (
    allocation_service_pb2,
    capacity_service_pb2,
    cell_service_pb2,
    node_pb2,
    node_service_pb2,
)

AP = allocation_service_pb2.AllocationPolicy


@pytest.fixture
def top(federation: Federation) -> Api:
    return federation.api("top")


@pytest.fixture
def top_b(federation: Federation) -> Api:
    """The top cell, speaking of the second cell."""
    return federation.api("top", cell=OTHER_CELL)


def test_only_the_top_serves_cell_service(federation: Federation, top: Api) -> None:
    def listed() -> cell_service_pb2.ListCellsResponse:
        reply = top.cells.ListCells(cell_service_pb2.ListCellsRequest(), timeout=RPC_GUARD)
        assert all(c.version for c in reply.cells), "no inventory stream delivered yet"
        return reply

    cells = eventually(listed, "every cell's version from its inventory stream").cells
    assert [c.name for c in cells] == [f"cells/{CELL}", f"cells/{OTHER_CELL}"]
    for cell in cells:
        leaf = federation.leaves[cell.name.split("/")[1]]
        assert cell.endpoint == leaf.endpoint
        assert cell.state == cell_service_pb2.CELL_STATE_UP
        assert cell.HasField("last_heartbeat")
    one = top.cells.GetCell(
        cell_service_pb2.GetCellRequest(name=f"cells/{CELL}"), timeout=RPC_GUARD
    )
    assert one.name == f"cells/{CELL}"
    unknown = rpc_error(top.cells.GetCell, cell_service_pb2.GetCellRequest(name="cells/nobody"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    leaf = federation.api("leaf")
    err = rpc_error(leaf.cells.ListCells, cell_service_pb2.ListCellsRequest())
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def _merged_order(nodes: list[node_pb2.Node], desc: bool) -> list[str]:
    """Node id order across cells; cells break ties by name, ascending either way."""
    ordered = sorted(nodes, key=lambda n: n.name.split("/")[1])
    ordered.sort(key=lambda n: n.name.rsplit("/", 1)[1], reverse=desc)
    return [n.name for n in ordered]


@pytest.mark.parametrize("order_by", ["", "name desc"])
def test_listing_every_cell_merges_the_cells_in_order_across_pages(
    top: Api, top_b: Api, order_by: str
) -> None:
    rc, prefix = unique("rc-"), unique("m")
    made = [top.create(f"{prefix}-{i:02d}", fake_node(rc)) for i in (0, 2, 3, 5, 8, 9)]
    made += [top_b.create(f"{prefix}-{i:02d}", fake_node(rc)) for i in (1, 3, 4, 6, 7, 10)]
    pages = list(
        top.pages(
            parent="cells/-", filter=f'resource_class = "{rc}"', order_by=order_by, page_size=3
        )
    )
    assert [len(p.nodes) for p in pages] == [3, 3, 3, 3]
    names = [n.name for p in pages for n in p.nodes]
    assert names == _merged_order(made, desc=order_by == "name desc")
    # Each cell's own listing is just its part.
    assert top.list_names(filter=f'resource_class = "{rc}"', order_by=order_by) == [
        n for n in names if n.startswith(f"cells/{CELL}/")
    ]


def test_look_ups_by_uid_and_mac_find_a_node_in_any_cell(top: Api, top_b: Api) -> None:
    mac = new_mac()
    node = top_b.create(unique("u"), fake_node(unique("rc-"), macs=[mac]))
    top_b.settle()
    assert top.list_names(parent="cells/-", filter=f'uid = "{node.uid}"') == [node.name]
    assert top.list_names(parent="cells/-", filter=f'mac = "{mac}"') == [node.name]


def test_a_mac_enrolled_in_one_cell_is_refused_in_another(top: Api, top_b: Api) -> None:
    mac = new_mac()
    held = top_b.create(unique("h"), fake_node(unique("rc-"), macs=[mac]))
    top_b.settle()

    err = rpc_error(
        top.nodes.CreateNode,
        node_service_pb2.CreateNodeRequest(
            parent=top.parent,
            node_id=unique("h"),
            node=fake_node(unique("rc-"), macs=[mac.upper()]),
        ),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    info = error_info(err)
    assert info is not None and dict(info.metadata) == {
        "mac": mac,
        "cell": f"cells/{OTHER_CELL}",
        "field": "node.ports[0].mac",
    }
    mine = top.create(unique("h"), fake_node(unique("rc-")))
    err = rpc_error(
        top.nodes.UpdateNode,
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=mine.name, ports=[node_pb2.Port(mac=mac)]),
            update_mask=field_mask_pb2.FieldMask(paths=["ports"]),
        ),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert top.get(mine.name.rsplit("/", 1)[1]) == mine
    assert top_b.get(held.name.rsplit("/", 1)[1]).ports[0].mac == mac


def test_operations_are_listed_one_cell_at_a_time_at_the_top(
    federation: Federation, top: Api
) -> None:
    err = rpc_error(
        top.ops.ListOperations, operations_pb2.ListOperationsRequest(name="cells/-/operations")
    )
    assert (err.code(), violation_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])
    leaf = federation.api("leaf")
    leaf.ops.ListOperations(
        operations_pb2.ListOperationsRequest(name="cells/-/operations"), timeout=RPC_GUARD
    )


def _events(
    api: Api, request: node_service_pb2.WatchNodesRequest
) -> Iterator[node_service_pb2.NodeEvent]:
    call = api.nodes.WatchNodes(request, timeout=WAIT_GUARD)
    try:
        yield from call
    finally:
        call.cancel()


def test_a_watch_of_every_cell_merges_the_cells_streams(top: Api, top_b: Api) -> None:
    a = top.create(unique("w"), fake_node(unique("rc-")))
    b = top_b.create(unique("w"), fake_node(unique("rc-")))
    events = _events(
        top, node_service_pb2.WatchNodesRequest(parent="cells/-", names=[a.name, b.name])
    )
    created = {next(events).node, next(events).node}
    assert created == {a.name, b.name}
    top_b.run(b.name.rsplit("/", 1)[1], PA.PROVISION_ACTION_MANAGE)
    later = next(events)
    assert (later.node, later.kind) == (b.name, "provision")

    err = rpc_error(
        lambda request, timeout: next(_events(top, request)),
        node_service_pb2.WatchNodesRequest(parent="cells/-", since_revision=5),
    )
    assert (err.code(), violation_fields(err)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["since_revision"],
    )


def test_capacity_of_every_cell_has_one_entry_per_cell(top: Api, top_b: Api) -> None:
    rc = unique("rc-")
    top.create(unique("c"), fake_node(rc))
    for _ in range(2):
        top_b.create(unique("c"), fake_node(rc))
    top.settle()
    top_b.settle()
    reply = top.capacity.GetCapacity(
        capacity_service_pb2.GetCapacityRequest(parent="cells/-", resource_class=rc),
        timeout=RPC_GUARD,
    )
    assert [(c.cell, c.counts.total, c.schedulable) for c in reply.cells] == [
        (f"cells/{CELL}", 1, True),
        (f"cells/{OTHER_CELL}", 2, True),
    ]
    assert reply.totals.total == 3 and not reply.unreachable


@pytest.mark.parametrize(
    ("policy", "first"),
    [(AP.ALLOCATION_POLICY_SPREAD, OTHER_CELL), (AP.ALLOCATION_POLICY_PACK, CELL)],
)
def test_claims_of_every_cell_pick_the_cell_by_policy(
    top: Api, top_b: Api, policy: int, first: str
) -> None:
    rc = unique("rc-")
    for api, count in ((top, 1), (top_b, 2)):
        for _ in range(count):
            node_id = unique("p")
            api.create(node_id, fake_node(rc))
            api.make_available(node_id)
        api.settle()
    granted = top.allocations.CreateAllocation(
        allocation_service_pb2.CreateAllocationRequest(
            parent="cells/-",
            allocation=allocation_service_pb2.Allocation(resource_class=rc),
            policy=policy,  # type: ignore[arg-type]
        ),
        timeout=RPC_GUARD,
    )
    assert granted.node.startswith(f"cells/{first}/nodes/")


def test_a_cell_taken_out_of_scheduling_gets_no_claims_but_answers_named_calls(
    top: Api, top_b: Api
) -> None:
    rc, node_id = unique("rc-"), unique("s")
    top_b.create(node_id, fake_node(rc))
    top_b.make_available(node_id)
    top_b.settle()
    mask = field_mask_pb2.FieldMask(paths=["scheduling_disabled", "disabled_reason"])
    cell = cell_service_pb2.Cell(name=top_b.parent, scheduling_disabled=True, disabled_reason="t")
    top.cells.UpdateCell(
        cell_service_pb2.UpdateCellRequest(cell=cell, update_mask=mask), timeout=RPC_GUARD
    )
    try:
        request = allocation_service_pb2.CreateAllocationRequest(
            parent=top_b.parent, allocation=allocation_service_pb2.Allocation(resource_class=rc)
        )
        err = rpc_error(top.allocations.CreateAllocation, request)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        request.parent = "cells/-"
        err = rpc_error(top.allocations.CreateAllocation, request)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert top_b.get(node_id).allocation == ""
        got = top.cells.GetCell(
            cell_service_pb2.GetCellRequest(name=top_b.parent), timeout=RPC_GUARD
        )
        assert (got.state, got.disabled_reason) == (cell_service_pb2.CELL_STATE_DISABLED, "t")
    finally:
        cell.scheduling_disabled = False
        top.cells.UpdateCell(
            cell_service_pb2.UpdateCellRequest(cell=cell, update_mask=mask), timeout=RPC_GUARD
        )
    granted = top.allocations.CreateAllocation(request, timeout=RPC_GUARD)
    assert granted.node == top_b.name(node_id)


@pytest.mark.parametrize("deleted", ["a", "b"])
def test_a_merged_listing_loses_no_node_when_the_last_one_returned_is_deleted(
    top: Api, top_b: Api, deleted: str
) -> None:
    """Between pages of a ``cells/-`` listing the node returned last is deleted; every node that
    exists throughout the listing must still be returned, once (a leaf's own listing promises
    this: "nodes enrolled or deleted between pages neither repeat nor shift the rest")."""
    rc, prefix = unique("rc-"), unique("g")
    for i in range(1, 11):  # odd ids in conf-a, even ids in conf-b
        (top if i % 2 else top_b).create(f"{prefix}-{i:02d}", fake_node(rc))
    request = {"parent": "cells/-", "filter": f'resource_class = "{rc}"', "page_size": 3}
    first = top.nodes.ListNodes(node_service_pb2.ListNodesRequest(**request), timeout=RPC_GUARD)
    returned = [n.name for n in first.nodes]
    assert returned == [
        top.name(f"{prefix}-01"),
        top_b.name(f"{prefix}-02"),
        top.name(f"{prefix}-03"),
    ]
    gone = returned[2] if deleted == "a" else returned[1]
    top.nodes.DeleteNode(node_service_pb2.DeleteNodeRequest(name=gone), timeout=RPC_GUARD)

    token = first.next_page_token
    while token:
        page = top.nodes.ListNodes(
            node_service_pb2.ListNodesRequest(page_token=token, **request), timeout=RPC_GUARD
        )
        returned += [n.name for n in page.nodes]
        token = page.next_page_token
    everyone = sorted(
        [top.name(f"{prefix}-{i:02d}") for i in range(1, 11, 2)]
        + [top_b.name(f"{prefix}-{i:02d}") for i in range(2, 11, 2)],
        key=lambda n: n.rsplit("/", 1)[1],
    )
    assert returned == everyone  # the deleted node was returned before it went
