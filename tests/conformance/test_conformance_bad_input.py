"""Bad input gets the same status code and the same ``google.rpc.BadRequest`` field names
directly at a leaf and through the top cell, and changes nothing (DESIGN.md: "Bad input gets
INVALID_ARGUMENT with a field-level BadRequest and changes nothing").

One table, one test body: every case runs once per ``api`` parameter against the same expected
answer. The top must not answer differently because it checks some things itself before
forwarding (cross-cell MAC uniqueness, capacity and allocation filters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import pytest
from conformance_kit import (
    CELL,
    OTHER_CELL,
    RPC_GUARD,
    Api,
    Federation,
    describe,
    fake_node,
    new_mac,
    rpc_error,
    unique,
)
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from rackcells.v1 import (
    allocation_service_pb2,
    capacity_service_pb2,
    node_pb2,
    node_service_pb2,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OPS = f"cells/{CELL}/operations"


@dataclass(frozen=True)
class Ctx:
    """What the cases refer to: a node of the cell under test, and a MAC that a node of the
    other cell holds (the top's index knows it)."""

    node: node_pb2.Node
    foreign_mac: str


@pytest.fixture(scope="module")
def ctx(federation: Federation) -> Ctx:
    leaf = federation.api("leaf")
    node = leaf.create(unique("x"), fake_node(unique("rc-")))
    leaf.create(unique("x"), fake_node(unique("rc-")))  # so that listings have a second page
    other = federation.api("top", cell=OTHER_CELL)
    mac = new_mac()
    other.create(unique("x"), fake_node(unique("rc-"), macs=[mac]))
    other.settle()
    return Ctx(node, mac)


class Case(NamedTuple):
    id: str
    call: Callable[[Api, Ctx], grpc.RpcError]
    code: grpc.StatusCode
    fields: tuple[str, ...] = ()


# -- request makers ----------------------------------------------------------------------------


def create_case(
    node_id: str, macs: list[str] | None = None, **extra: Any
) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        ports = [ctx.foreign_mac if m == "FOREIGN" else m for m in (macs or [new_mac()])]
        parent = extra.get("parent", api.parent)
        node = fake_node(unique("rc-"), macs=ports, traits=extra.get("traits"))
        return rpc_error(
            api.nodes.CreateNode,
            node_service_pb2.CreateNodeRequest(parent=parent, node_id=node_id, node=node),
        )

    return run


def batch_case(
    *items: tuple[str, list[str]], parent: str | None = None
) -> Callable[[Api, Ctx], grpc.RpcError]:
    """BatchCreateNodes of (node_id, MACs) items; "FOREIGN" is the other cell's MAC."""

    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        requests = [
            node_service_pb2.CreateNodeRequest(
                node_id=node_id,
                node=fake_node(
                    unique("rc-"), macs=[ctx.foreign_mac if m == "FOREIGN" else m for m in macs]
                ),
            )
            for node_id, macs in items
        ]
        return rpc_error(
            api.nodes.BatchCreateNodes,
            node_service_pb2.BatchCreateNodesRequest(
                parent=api.parent if parent is None else parent, requests=requests
            ),
        )

    return run


def get(name: str) -> Callable[[Api, Ctx], grpc.RpcError]:
    return lambda api, ctx: rpc_error(api.nodes.GetNode, node_service_pb2.GetNodeRequest(name=name))


def listing(all_cells: bool = False, **request: Any) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        fields = {"parent": "cells/-" if all_cells else api.parent, **request}
        return rpc_error(api.nodes.ListNodes, node_service_pb2.ListNodesRequest(**fields))

    return run


def foreign_token(all_cells: bool) -> Callable[[Api, Ctx], grpc.RpcError]:
    """A page token of one filter, sent with another."""

    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        parent = "cells/-" if all_cells else api.parent
        first = api.nodes.ListNodes(
            node_service_pb2.ListNodesRequest(parent=parent, page_size=1), timeout=RPC_GUARD
        )
        assert first.next_page_token, "the cell should have more than one node"
        return rpc_error(
            api.nodes.ListNodes,
            node_service_pb2.ListNodesRequest(
                parent=parent,
                page_size=1,
                page_token=first.next_page_token,
                filter="maintenance = false",
            ),
        )

    return run


def update(
    paths: list[str], name: str | None = None, macs: list[str] | None = None
) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        node = node_pb2.Node(name=ctx.node.name if name is None else name, extra={"k": "v"})
        for mac in macs or []:
            node.ports.add(mac=ctx.foreign_mac if mac == "FOREIGN" else mac)
        return rpc_error(
            api.nodes.UpdateNode,
            node_service_pb2.UpdateNodeRequest(
                node=node, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )

    return run


def named(
    method: str, request_type: Any, name: str | None = None, **fields: Any
) -> Callable[[Api, Ctx], grpc.RpcError]:
    """A NodeService call naming ``name`` (default: the existing node)."""

    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        request = request_type(name=ctx.node.name if name is None else name, **fields)
        return rpc_error(getattr(api.nodes, method), request)

    return run


def watch(parent: str | None = None, **fields: Any) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        call = api.nodes.WatchNodes(
            node_service_pb2.WatchNodesRequest(parent=parent or api.parent, **fields),
            timeout=RPC_GUARD,
        )
        try:
            for event in call:
                raise AssertionError(f"expected an error, got an event: {event}")
        except grpc.RpcError as err:
            return err
        finally:
            call.cancel()
        raise AssertionError("expected an error, the stream ended")

    return run


def operation(method: str, request: Any) -> Callable[[Api, Ctx], grpc.RpcError]:
    return lambda api, ctx: rpc_error(getattr(api.ops, method), request)


def cap(parent: str | None = None, **fields: Any) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        request = capacity_service_pb2.GetCapacityRequest(parent=parent or api.parent, **fields)
        return rpc_error(api.capacity.GetCapacity, request)

    return run


def alloc(
    parent: str | None = None, allocation: dict[str, Any] | None = None, policy: int = 0
) -> Callable[[Api, Ctx], grpc.RpcError]:
    def run(api: Api, ctx: Ctx) -> grpc.RpcError:
        request = allocation_service_pb2.CreateAllocationRequest(
            parent=parent or api.parent,
            policy=policy,  # type: ignore[arg-type]
        )
        if allocation is not None:
            request.allocation.CopyFrom(allocation_service_pb2.Allocation(**allocation))
        return rpc_error(api.allocations.CreateAllocation, request)

    return run


def alloc_named(method: str, name: str) -> Callable[[Api, Ctx], grpc.RpcError]:
    request_type = getattr(allocation_service_pb2, f"{method}Request")
    return lambda api, ctx: rpc_error(getattr(api.allocations, method), request_type(name=name))


RC = "rc-nobody-has-this"
UNKNOWN_OP = f"{OPS}/0123456789abcdef0123456789abcdef"
NSR = node_service_pb2

CASES = [
    # CreateNode
    Case("create: node_id not a label", create_case("Bad_Id"), INVALID, ("node_id",)),
    Case("create: node_id missing", create_case(""), INVALID, ("node_id",)),
    Case(
        "create: bad MAC",
        create_case("ok-id", ["zz:zz:zz:zz:zz:zz"]),
        INVALID,
        ("node.ports[0].mac",),
    ),
    Case(
        "create: every mistake at once",
        create_case("Bad", ["nope"], traits=["lower"]),
        INVALID,
        ("node_id", "node.traits[0]", "node.ports[0].mac"),
    ),
    Case(
        "create: bad node_id with a MAC another cell holds",
        create_case("Bad_Id", ["FOREIGN"]),
        INVALID,
        ("node_id",),
    ),
    Case(
        "create: malformed parent",
        create_case("ok-id", parent=f"racks/{CELL}"),
        INVALID,
        ("parent",),
    ),
    Case("create: unknown cell", create_case("ok-id", parent="cells/no-such-cell"), NOT_FOUND),
    # BatchCreateNodes
    Case(
        "batch: a bad node_id and a bad MAC in different requests",
        batch_case(("ok-1", []), ("Bad_Id", []), ("ok-3", ["nope"])),
        INVALID,
        ("requests[1].node_id", "requests[2].node.ports[0].mac"),
    ),
    Case(
        "batch: a bad node_id beside a MAC another cell holds",
        batch_case(("ok-1", ["FOREIGN"]), ("Bad_Id", [])),
        INVALID,
        ("requests[1].node_id",),
    ),
    Case("batch: no requests", batch_case(), INVALID, ("requests",)),
    Case("batch: unknown cell", batch_case(("ok-1", []), parent="cells/no-such-cell"), NOT_FOUND),
    # GetNode
    Case("get: unknown node", get(f"cells/{CELL}/nodes/no-such-node"), NOT_FOUND),
    Case("get: malformed name", get(f"{CELL}/nodes/x"), INVALID, ("name",)),
    Case("get: upper-case node id", get(f"cells/{CELL}/nodes/N1"), INVALID, ("name",)),
    Case("get: empty name", get(""), INVALID, ("name",)),
    # ListNodes
    Case("list: unknown filter field", listing(filter='colour = "red"'), INVALID, ("filter",)),
    Case(
        "list cells/-: unknown filter field",
        listing(True, filter='colour = "red"'),
        INVALID,
        ("filter",),
    ),
    Case("list: unknown state", listing(filter="provision_state = SLEEPING"), INVALID, ("filter",)),
    Case(
        "list: OR",
        listing(filter="maintenance = true OR maintenance = false"),
        INVALID,
        ("filter",),
    ),
    Case("list: unknown order_by", listing(order_by="colour"), INVALID, ("order_by",)),
    Case(
        "list cells/-: bad direction",
        listing(True, order_by="name sideways"),
        INVALID,
        ("order_by",),
    ),
    Case("list: garbage page_token", listing(page_token="not-a-token"), INVALID, ("page_token",)),
    Case(
        "list cells/-: garbage page_token",
        listing(True, page_token="not-a-token"),
        INVALID,
        ("page_token",),
    ),
    Case("list: token of another filter", foreign_token(False), INVALID, ("page_token",)),
    Case("list cells/-: token of another filter", foreign_token(True), INVALID, ("page_token",)),
    Case("list: negative page_size", listing(page_size=-1), INVALID, ("page_size",)),
    Case("list cells/-: negative page_size", listing(True, page_size=-1), INVALID, ("page_size",)),
    Case("list: malformed parent", listing(parent="cells"), INVALID, ("parent",)),
    # UpdateNode
    Case("update: immutable path", update(["uid"]), INVALID, ("update_mask",)),
    Case("update: empty mask", update([]), INVALID, ("update_mask",)),
    Case(
        "update: immutable path with a MAC another cell holds",
        update(["ports", "uid"], macs=["FOREIGN"]),
        INVALID,
        ("update_mask",),
    ),
    Case("update: bad MAC", update(["ports"], macs=["bogus"]), INVALID, ("node.ports[0].mac",)),
    Case("update: malformed name", update(["extra"], name="nodes/x"), INVALID, ("node.name",)),
    Case("update: unknown node", update(["extra"], name=f"cells/{CELL}/nodes/nobody"), NOT_FOUND),
    # DeleteNode, SetPowerState, SetBootDevice, ChangeProvisionState
    Case(
        "delete: malformed name",
        named("DeleteNode", NSR.DeleteNodeRequest, "x"),
        INVALID,
        ("name",),
    ),
    Case(
        "delete: unknown node",
        named("DeleteNode", NSR.DeleteNodeRequest, f"cells/{CELL}/nodes/nobody"),
        NOT_FOUND,
    ),
    Case(
        "power: no action", named("SetPowerState", NSR.SetPowerStateRequest), INVALID, ("action",)
    ),
    Case(
        "power: unknown node",
        named("SetPowerState", NSR.SetPowerStateRequest, f"cells/{CELL}/nodes/nobody", action=1),
        NOT_FOUND,
    ),
    Case("boot: no device", named("SetBootDevice", NSR.SetBootDeviceRequest), INVALID, ("device",)),
    Case(
        "provision: no action",
        named("ChangeProvisionState", NSR.ChangeProvisionStateRequest),
        INVALID,
        ("action",),
    ),
    Case(
        "provision: unknown node",
        named(
            "ChangeProvisionState",
            NSR.ChangeProvisionStateRequest,
            f"cells/{CELL}/nodes/nobody",
            action=1,
        ),
        NOT_FOUND,
    ),
    # WatchNodes
    Case("watch: since_revision below -1", watch(since_revision=-5), INVALID, ("since_revision",)),
    Case("watch: malformed names entry", watch(names=["nodes/x"]), INVALID, ("names[0]",)),
    Case(
        "watch cells/-: malformed names entry",
        watch("cells/-", names=["nodes/x"]),
        INVALID,
        ("names[0]",),
    ),
    Case("watch: malformed parent", watch("cell/x"), INVALID, ("parent",)),
    Case("watch: unknown cell", watch("cells/no-such-cell"), NOT_FOUND),
    # Operations
    Case(
        "get op: malformed name",
        operation("GetOperation", operations_pb2.GetOperationRequest(name=OPS)),
        INVALID,
        ("name",),
    ),
    Case(
        "get op: unknown",
        operation("GetOperation", operations_pb2.GetOperationRequest(name=UNKNOWN_OP)),
        NOT_FOUND,
    ),
    Case(
        "wait op: unknown",
        operation("WaitOperation", operations_pb2.WaitOperationRequest(name=UNKNOWN_OP)),
        NOT_FOUND,
    ),
    Case(
        "cancel op: unknown",
        operation("CancelOperation", operations_pb2.CancelOperationRequest(name=UNKNOWN_OP)),
        NOT_FOUND,
    ),
    Case(
        "delete op: unknown",
        operation("DeleteOperation", operations_pb2.DeleteOperationRequest(name=UNKNOWN_OP)),
        NOT_FOUND,
    ),
    Case(
        "list ops: garbage page_token",
        operation(
            "ListOperations", operations_pb2.ListOperationsRequest(name=OPS, page_token="%%%")
        ),
        INVALID,
        ("page_token",),
    ),
    Case(
        "list ops: filter",
        operation(
            "ListOperations", operations_pb2.ListOperationsRequest(name=OPS, filter="done = true")
        ),
        INVALID,
        ("filter",),
    ),
    Case(
        "list ops: malformed name",
        operation("ListOperations", operations_pb2.ListOperationsRequest(name="operations")),
        INVALID,
        ("name",),
    ),
    # GetCapacity
    Case(
        "capacity: bad required trait",
        cap(required_traits=["lower"]),
        INVALID,
        ("required_traits[0]",),
    ),
    Case(
        "capacity: bad forbidden trait",
        cap(forbidden_traits=["A B"]),
        INVALID,
        ("forbidden_traits[0]",),
    ),
    Case(
        "capacity: bad resource class",
        cap(resource_class="not a class!"),
        INVALID,
        ("resource_class",),
    ),
    Case(
        "capacity: trait both required and forbidden",
        cap(required_traits=["CUSTOM_X"], forbidden_traits=["CUSTOM_X"]),
        INVALID,
        ("forbidden_traits",),
    ),
    Case("capacity: malformed parent", cap("cells"), INVALID, ("parent",)),
    Case("capacity: unknown cell", cap("cells/no-such-cell"), NOT_FOUND),
    # AllocationService
    Case(
        "allocate: no resource class",
        alloc(allocation={"required_traits": ["CUSTOM_X"]}),
        INVALID,
        ("allocation.resource_class",),
    ),
    Case("allocate: no allocation", alloc(), INVALID, ("allocation",)),
    Case(
        "allocate: bad trait",
        alloc(allocation={"resource_class": RC, "required_traits": ["x"]}),
        INVALID,
        ("allocation.required_traits[0]",),
    ),
    Case(
        "allocate: trait both required and forbidden",
        alloc(
            allocation={
                "resource_class": RC,
                "required_traits": ["CUSTOM_X"],
                "forbidden_traits": ["CUSTOM_X"],
            }
        ),
        INVALID,
        ("allocation.forbidden_traits",),
    ),
    Case(
        "allocate: bad resource class",
        alloc(allocation={"resource_class": "not a class!"}),
        INVALID,
        ("allocation.resource_class",),
    ),
    Case(
        "allocate: unknown policy",
        alloc(allocation={"resource_class": RC}, policy=7),
        INVALID,
        ("policy",),
    ),
    Case(
        "allocate: malformed parent",
        alloc("cells", allocation={"resource_class": RC}),
        INVALID,
        ("parent",),
    ),
    Case(
        "allocate: unknown cell",
        alloc("cells/no-such-cell", allocation={"resource_class": RC}),
        NOT_FOUND,
    ),
    Case(
        "get allocation: malformed name",
        alloc_named("GetAllocation", f"cells/{CELL}/allocs/x"),
        INVALID,
        ("name",),
    ),
    Case(
        "get allocation: unknown",
        alloc_named("GetAllocation", f"cells/{CELL}/allocations/nobody"),
        NOT_FOUND,
    ),
    Case(
        "get allocation: unknown cell",
        alloc_named("GetAllocation", "cells/no-such-cell/allocations/x"),
        NOT_FOUND,
    ),
    Case(
        "delete allocation: unknown",
        alloc_named("DeleteAllocation", f"cells/{CELL}/allocations/nobody"),
        NOT_FOUND,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_the_same_code_and_field_violations(api: Api, ctx: Ctx, case: Case) -> None:
    err = case.call(api, ctx)
    assert describe(err) == (case.code, list(case.fields)), err.details()
    assert err.code() != grpc.StatusCode.INTERNAL
    after = api.get(ctx.node.name.rsplit("/", 1)[1])
    assert after.etag == ctx.node.etag, "a refused call changed the node"
