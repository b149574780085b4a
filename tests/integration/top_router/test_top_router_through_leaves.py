"""NodeService and Operations through a real top cell in front of three real leaf cells: named
calls answer exactly as the leaf does (nodes, errors with their details), cross-cell listings
return every node once in order over cells of different sizes, and the top's own federation
checks (MACs across cells, uid look-ups) hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from top_router_kit import (
    Proc,
    eventually,
    fails,
    fake_node,
    list_all,
    start_leaf,
    start_top,
    status_of,
    violation_fields,
)

from rackcells.v1 import (
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    cell_service_pb2,
    cell_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
)

SIZES = {"rack-1": 11, "rack-2": 4, "rack-3": 17}
CLASSES = ["baremetal", "gpu", "storage"]


@dataclass
class Fed:
    leaves: dict[str, Proc]
    top: Proc
    direct: dict[str, node_service_pb2_grpc.NodeServiceStub]
    stub: node_service_pb2_grpc.NodeServiceStub
    ops: operations_pb2_grpc.OperationsStub
    channel: grpc.Channel
    nodes: dict[str, node_pb2.Node]


def mac_of(cell: str, i: int) -> str:
    return f"52:54:00:{int(cell[-1]):02x}:00:{i:02x}"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp: Path = tmp_path_factory.mktemp("fed")
    leaves = {cell: start_leaf(cell, tmp) for cell in SIZES}
    channels: list[grpc.Channel] = []
    top: Proc | None = None
    try:
        for leaf in leaves.values():
            leaf.wait_ready()
        direct = {}
        nodes: dict[str, node_pb2.Node] = {}
        for cell, size in SIZES.items():
            ch = grpc.insecure_channel(leaves[cell].endpoint)
            channels.append(ch)
            direct[cell] = node_service_pb2_grpc.NodeServiceStub(ch)
            for i in range(size):
                node = direct[cell].CreateNode(
                    node_service_pb2.CreateNodeRequest(
                        parent=f"cells/{cell}",
                        node_id=f"n-{i:02d}",
                        node=fake_node(i, CLASSES[(i * 7 + len(cell)) % 3], mac_of(cell, i)),
                    )
                )
                nodes[node.name] = node
        top = start_top(list(leaves.values()), tmp, "--fanout-timeout", "3")
        top.wait_ready()
        channel = grpc.insecure_channel(top.endpoint)
        channels.append(channel)
        stub = node_service_pb2_grpc.NodeServiceStub(channel)

        def ready() -> None:
            # Every cell answers through the top, and the MAC index has caught up.
            page = stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-"), timeout=5)
            assert not page.unreachable and len(page.nodes) == len(nodes)
            fails(
                grpc.StatusCode.ALREADY_EXISTS,
                stub.CreateNode,
                node_service_pb2.CreateNodeRequest(
                    parent="cells/rack-2",
                    node_id="probe",
                    node=fake_node(0, "baremetal", mac_of("rack-3", 16)),
                ),
            )

        eventually(ready, what="top cell ready")
        yield Fed(
            leaves,
            top,
            direct,
            stub,
            operations_pb2_grpc.OperationsStub(channel),
            channel,
            nodes,
        )
    finally:
        for ch in channels:
            ch.close()
        if top is not None:
            assert top.stop() == 0, top.log()
        for leaf in leaves.values():
            leaf.stop()


def get_direct(fed: Fed, name: str) -> node_pb2.Node:
    cell = name.split("/")[1]
    return fed.direct[cell].GetNode(node_service_pb2.GetNodeRequest(name=name))


def test_get_through_the_top_equals_the_leafs_answer(fed: Fed) -> None:
    for name in ("cells/rack-1/nodes/n-03", "cells/rack-2/nodes/n-00", "cells/rack-3/nodes/n-16"):
        via_top = fed.stub.GetNode(node_service_pb2.GetNodeRequest(name=name), timeout=5)
        assert via_top == get_direct(fed, name)


def test_update_through_the_top(fed: Fed) -> None:
    name = "cells/rack-3/nodes/n-05"
    before = get_direct(fed, name)
    updated = fed.stub.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=name, extra={"owner": "team-a"}, etag=before.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["extra"]),
        ),
        timeout=5,
    )
    assert updated.extra["owner"] == "team-a"
    assert updated.etag != before.etag
    assert updated == get_direct(fed, name)
    # A stale etag: the leaf's ABORTED comes back with its details.
    err = fails(
        grpc.StatusCode.ABORTED,
        fed.stub.UpdateNode,
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=name, extra={"owner": "x"}, etag=before.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["extra"]),
        ),
    )
    assert status_of(err) is not None


def test_power_and_boot_device_through_the_top(fed: Fed) -> None:
    name = "cells/rack-2/nodes/n-01"
    on = fed.stub.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=name, action=node_service_pb2.POWER_ACTION_ON),
        timeout=10,
    )
    assert on.power_state == node_pb2.POWER_STATE_ON
    assert on == get_direct(fed, name)
    off = fed.stub.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=name, action=node_service_pb2.POWER_ACTION_OFF),
        timeout=10,
    )
    assert off.power_state == node_pb2.POWER_STATE_OFF
    boot = fed.stub.SetBootDevice(
        node_service_pb2.SetBootDeviceRequest(name=name, device=node_service_pb2.BOOT_DEVICE_PXE),
        timeout=10,
    )
    assert boot == get_direct(fed, name)


def test_delete_through_the_top(fed: Fed) -> None:
    created = fed.direct["rack-1"].CreateNode(
        node_service_pb2.CreateNodeRequest(
            parent="cells/rack-1", node_id="doomed", node=fake_node(99, "baremetal", "")
        )
    )
    fed.stub.DeleteNode(node_service_pb2.DeleteNodeRequest(name=created.name), timeout=5)
    fails(
        grpc.StatusCode.NOT_FOUND,
        fed.direct["rack-1"].GetNode,
        node_service_pb2.GetNodeRequest(name=created.name),
    )


@pytest.mark.parametrize(
    "request_",
    [
        node_service_pb2.CreateNodeRequest(
            parent="cells/rack-1",
            node_id="bad-one",
            node=node_pb2.Node(
                resource_class="baremetal",
                bmc=node_pb2.BmcInfo(driver="warp"),
                ports=[node_pb2.Port(mac="zz")],
            ),
        ),
        node_service_pb2.CreateNodeRequest(
            parent="cells/rack-1", node_id="Bad_Id", node=fake_node(1, "x", "")
        ),
    ],
)
def test_invalid_argument_from_the_leaf_arrives_unchanged(
    fed: Fed, request_: node_service_pb2.CreateNodeRequest
) -> None:
    at_leaf = fails(grpc.StatusCode.INVALID_ARGUMENT, fed.direct["rack-1"].CreateNode, request_)
    via_top = fails(grpc.StatusCode.INVALID_ARGUMENT, fed.stub.CreateNode, request_)
    assert via_top.details() == at_leaf.details()
    assert status_of(via_top) == status_of(at_leaf)
    assert violation_fields(via_top) and violation_fields(via_top) == violation_fields(at_leaf)


def test_not_found_passes_through(fed: Fed) -> None:
    request = node_service_pb2.GetNodeRequest(name="cells/rack-2/nodes/nope")
    at_leaf = fails(grpc.StatusCode.NOT_FOUND, fed.direct["rack-2"].GetNode, request)
    via_top = fails(grpc.StatusCode.NOT_FOUND, fed.stub.GetNode, request)
    assert via_top.details() == at_leaf.details()
    assert status_of(via_top) == status_of(at_leaf)


def test_unknown_cell_is_not_found(fed: Fed) -> None:
    err = fails(
        grpc.StatusCode.NOT_FOUND,
        fed.stub.GetNode,
        node_service_pb2.GetNodeRequest(name="cells/rack-42/nodes/n-00"),
    )
    assert "rack-42" in (err.details() or "")


def expected_order(fed: Fed, key: str = "", desc: bool = False, flt: str = "") -> list[str]:
    """The order a cross-cell listing must have, computed from each leaf's own full listing."""
    nodes: list[node_pb2.Node] = []
    for cell, stub in fed.direct.items():
        for page in list_all(stub, parent=f"cells/{cell}", filter=flt, page_size=1000):
            nodes.extend(page.nodes)
    nodes.sort(key=lambda n: (n.name.rsplit("/", 1)[1], n.name.split("/")[1]))
    if key:
        nodes.sort(key=lambda n: getattr(n, key), reverse=desc)
    return [n.name for n in nodes]


@pytest.mark.parametrize(
    ("order_by", "key", "desc", "flt"),
    [
        ("", "", False, ""),
        ("resource_class desc", "resource_class", True, ""),
        ("resource_class desc", "resource_class", True, 'traits:"CUSTOM_EVEN"'),
        ("resource_class", "resource_class", False, 'resource_class != "gpu"'),
    ],
)
def test_cross_cell_listing_returns_every_node_once_in_order(
    fed: Fed, order_by: str, key: str, desc: bool, flt: str
) -> None:
    pages = list(list_all(fed.stub, parent="cells/-", page_size=7, order_by=order_by, filter=flt))
    names = [n.name for p in pages for n in p.nodes]
    assert names == expected_order(fed, key, desc, flt)
    assert len(pages) >= len(names) // 7
    assert all(len(p.nodes) <= 7 and not p.unreachable for p in pages)


def test_cross_cell_token_is_bound_to_its_query(fed: Fed) -> None:
    first = fed.stub.ListNodes(
        node_service_pb2.ListNodesRequest(parent="cells/-", page_size=5, order_by="name desc")
    )
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        fed.stub.ListNodes,
        node_service_pb2.ListNodesRequest(
            parent="cells/-", page_size=5, page_token=first.next_page_token
        ),
    )
    assert violation_fields(err) == ["page_token"]
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        fed.stub.ListNodes,
        node_service_pb2.ListNodesRequest(parent="cells/-", filter="colour = blue"),
    )
    assert violation_fields(err) == ["filter"]


def test_a_mac_enrolled_in_another_cell_is_refused(fed: Fed) -> None:
    mac = mac_of("rack-1", 2)
    err = fails(
        grpc.StatusCode.ALREADY_EXISTS,
        fed.stub.CreateNode,
        node_service_pb2.CreateNodeRequest(
            parent="cells/rack-3",
            node_id="dup",
            node=fake_node(3, "baremetal", mac.upper().replace(":", "-")),
        ),
    )
    assert mac in (err.details() or "") and "rack-1" in (err.details() or "")
    fails(
        grpc.StatusCode.NOT_FOUND,
        fed.direct["rack-3"].GetNode,
        node_service_pb2.GetNodeRequest(name="cells/rack-3/nodes/dup"),
    )


def test_look_up_by_uid_and_mac_across_cells(fed: Fed) -> None:
    wanted = fed.nodes["cells/rack-3/nodes/n-09"]
    for flt in (f'uid = "{wanted.uid}"', f'mac = "{wanted.ports[0].mac}"'):
        page = fed.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-", filter=flt))
        assert [n.name for n in page.nodes] == [wanted.name]
        assert not page.next_page_token


def test_provisioning_operation_through_the_top(fed: Fed) -> None:
    name = "cells/rack-1/nodes/n-07"
    op = fed.stub.ChangeProvisionState(
        node_service_pb2.ChangeProvisionStateRequest(
            name=name, action=node_service_pb2.PROVISION_ACTION_MANAGE
        ),
        timeout=10,
    )
    assert op.name.startswith("cells/rack-1/operations/")
    done = fed.ops.WaitOperation(operations_pb2.WaitOperationRequest(name=op.name), timeout=15)
    got = fed.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
    assert got.name == done.name == op.name
    listed = fed.ops.ListOperations(
        operations_pb2.ListOperationsRequest(name="cells/rack-1/operations"), timeout=5
    )
    assert op.name in [o.name for o in listed.operations]
    fails(
        grpc.StatusCode.NOT_FOUND,
        fed.ops.GetOperation,
        operations_pb2.GetOperationRequest(name="cells/rack-1/operations/nope"),
    )


def test_watch_through_the_top(fed: Fed) -> None:
    one = fed.stub.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent="cells/rack-2", since_revision=0), timeout=10
    )
    first = next(one)
    assert first.node.startswith("cells/rack-2/")
    one.cancel()
    merged = fed.stub.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent="cells/-", since_revision=-1), timeout=15
    )
    for name in ("cells/rack-1/nodes/n-01", "cells/rack-3/nodes/n-02"):
        fed.stub.SetPowerState(
            node_service_pb2.SetPowerStateRequest(
                name=name, action=node_service_pb2.POWER_ACTION_ON
            ),
            timeout=10,
        )
    seen: set[str] = set()
    for event in merged:
        seen.add(event.node)
        if {"cells/rack-1/nodes/n-01", "cells/rack-3/nodes/n-02"} <= seen:
            break
    merged.cancel()


SERVICES = (
    "rackcells.v1.NodeService",
    "google.longrunning.Operations",
    "rackcells.v1.CellService",
    "rackcells.v1.CapacityService",
    "rackcells.v1.AllocationService",
)


def test_health_and_reflection(fed: Fed) -> None:
    health = health_pb2_grpc.HealthStub(fed.channel)
    for service in ("", *SERVICES):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(fed.channel)
    (answer,) = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert set(SERVICES) <= names


def test_the_other_top_services_are_served(fed: Fed) -> None:
    cells = cell_service_pb2_grpc.CellServiceStub(fed.channel).ListCells(
        cell_service_pb2.ListCellsRequest(), timeout=5
    )
    assert [c.name for c in cells.cells] == [f"cells/{c}" for c in sorted(SIZES)]
    capacity = capacity_service_pb2_grpc.CapacityServiceStub(fed.channel).GetCapacity(
        capacity_service_pb2.GetCapacityRequest(parent="cells/-"), timeout=5
    )
    assert capacity.totals.total >= sum(SIZES.values())
