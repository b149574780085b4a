"""The router against in-process fake leaves that record what reaches them: named calls go to the
cell in the name with the caller's metadata (minus hop headers) and deadline; the leaf's status
and details come back unchanged; the top's own checks (names, cross-cell MACs, uid/MAC look-ups,
watch rules) answer before any leaf is asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from top_router_fakes import FakeLeaf, make_node

from common.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from common.server import ServiceBinding, build_server
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc
from top_cell.config import TopConfig
from top_cell.server import TopParts, start

CELLS = ("rack-1", "rack-2", "rack-3")


@dataclass
class Seen:
    method: str
    metadata: dict[str, Any]
    remaining: float | None


@dataclass
class LeafState:
    cell: str
    listing: FakeLeaf
    seen: list[Seen] = field(default_factory=list)
    events: asyncio.Queue[Any] | None = None


class FakeNodeService(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, state: LeafState) -> None:
        self.s = state

    def _see(self, method: str, context: Any) -> None:
        self.s.seen.append(
            Seen(method, dict(context.invocation_metadata() or ()), context.time_remaining())
        )

    async def GetNode(self, request: Any, context: Any) -> node_pb2.Node:
        self._see("GetNode", context)
        node_id = request.name.rsplit("/", 1)[1]
        if node_id == "missing":
            raise NotFound(f"node {request.name} not found", metadata={"node": request.name})
        if node_id == "bad":
            raise InvalidArgument.of(
                [FieldViolation("name", "is bad"), FieldViolation("name.x", "also bad")]
            )
        if node_id == "slow":
            await asyncio.sleep(10)
        return make_node(self.s.cell, node_id)

    async def CreateNode(self, request: Any, context: Any) -> node_pb2.Node:
        self._see("CreateNode", context)
        return make_node(self.s.cell, request.node_id)

    async def ListNodes(self, request: Any, context: Any) -> Any:
        self._see("ListNodes", context)
        return self.s.listing.list_nodes(request)

    async def WatchNodes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self._see("WatchNodes", context)
        assert self.s.events is not None
        while True:
            item = await self.s.events.get()
            if isinstance(item, Exception):
                raise item
            yield item


class FakeOperations(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(self, state: LeafState) -> None:
        self.s = state

    async def GetOperation(self, request: Any, context: Any) -> operations_pb2.Operation:
        self.s.seen.append(Seen("GetOperation", {}, None))
        return operations_pb2.Operation(name=request.name, done=True)

    async def ListOperations(self, request: Any, context: Any) -> Any:
        self.s.seen.append(Seen("ListOperations", {}, None))
        return operations_pb2.ListOperationsResponse(
            operations=[operations_pb2.Operation(name=f"cells/{self.s.cell}/operations/1")]
        )


class FakeDirectory:
    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.down: set[str] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def names(self) -> list[str]:
        return sorted(self.ports)

    def is_reachable(self, cell: str) -> bool:
        return cell not in self.down

    def endpoint(self, cell: str) -> str | None:
        if cell not in self.ports or cell in self.down:
            return None
        return f"127.0.0.1:{self.ports[cell]}"

    def channel(self, cell: str) -> grpc.aio.Channel:
        if cell not in self.ports:
            raise NotFound(f"cell {cell} is not known", metadata={"cell": f"cells/{cell}"})
        if cell in self.down:
            raise Unavailable(f"cell {cell} is DOWN", metadata={"cell": f"cells/{cell}"})
        if cell not in self._channels:
            self._channels[cell] = grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[cell]}")
        return self._channels[cell]


class FakeIndex:
    def __init__(self) -> None:
        self.macs = {"52:54:00:00:00:01": "rack-2"}
        self.uids = {"uid-rack-3-x": "rack-3"}

    def cell_of_uid(self, uid: str) -> str | None:
        return self.uids.get(uid)

    def cell_of_mac(self, mac: str) -> str | None:
        return self.macs.get(mac)


@dataclass
class Fed:
    leaves: dict[str, LeafState]
    leaf_ports: dict[str, int]
    directory: FakeDirectory
    top_port: int
    channel: grpc.Channel
    stub: node_service_pb2_grpc.NodeServiceStub
    ops: operations_pb2_grpc.OperationsStub

    def reset(self) -> None:
        for leaf in self.leaves.values():
            leaf.seen.clear()
        self.directory.down.clear()

    def called(self) -> list[tuple[str, str]]:
        return [(c, s.method) for c, leaf in self.leaves.items() for s in leaf.seen]


@pytest.fixture(scope="module")
def fed(leaf_loop: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp: Path = tmp_path_factory.mktemp("top")
    leaves: dict[str, LeafState] = {}
    servers = []
    ports: dict[str, int] = {}

    async def start_leaf(cell: str) -> None:
        state = LeafState(cell, FakeLeaf(cell, [make_node(cell, f"n-{i}") for i in range(3)]))
        state.events = asyncio.Queue()
        server, port, _ = build_server(
            "127.0.0.1:0",
            [
                ServiceBinding(
                    "rackcells.v1.NodeService",
                    FakeNodeService(state),
                    node_service_pb2_grpc.add_NodeServiceServicer_to_server,
                ),
                ServiceBinding(
                    "google.longrunning.Operations",
                    FakeOperations(state),
                    operations_pb2_grpc.add_OperationsServicer_to_server,
                ),
            ],
        )
        await server.start()
        leaves[cell] = state
        servers.append(server)
        ports[cell] = port

    for cell in CELLS:
        leaf_loop.run(start_leaf(cell))
    directory = FakeDirectory(dict(ports))
    directory.ports["rack-9"] = 1  # registered, nothing listens there
    config = TopConfig(
        listen="127.0.0.1:0",
        db=f"sqlite:///{tmp / 'top.db'}",
        registry="static:unused.yaml",
        fanout_timeout=1.0,
        secret_key_file=str(tmp / "top.key"),
    )
    top = leaf_loop.run(
        start(config, TopParts(cells=directory, index=FakeIndex()))  # type: ignore[arg-type]
    )
    channel = grpc.insecure_channel(
        f"127.0.0.1:{top.port}", options=[("grpc.primary_user_agent", "caller-agent/1.0")]
    )
    yield Fed(
        leaves,
        ports,
        directory,
        top.port,
        channel,
        node_service_pb2_grpc.NodeServiceStub(channel),
        operations_pb2_grpc.OperationsStub(channel),
    )
    channel.close()
    leaf_loop.run(top.stop(0))
    for server in servers:
        leaf_loop.run(server.stop(0))


@pytest.fixture
def f(fed: Fed) -> Fed:
    fed.reset()
    return fed


def fails(code: grpc.StatusCode, call: Any, request: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kw)
    assert info.value.code() == code, info.value.details()
    return info.value


def fields(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def test_named_call_reaches_its_cell_with_metadata_and_deadline(f: Fed) -> None:
    node = f.stub.GetNode(
        node_service_pb2.GetNodeRequest(name="cells/rack-2/nodes/n-1"),
        timeout=3.0,
        metadata=[
            ("authorization", "Bearer s3cret"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-extra-bin", b"\x00\x01"),
        ],
    )
    assert node.name == "cells/rack-2/nodes/n-1"
    assert f.called() == [("rack-2", "GetNode")]
    seen = f.leaves["rack-2"].seen[0]
    assert seen.metadata["authorization"] == "Bearer s3cret"
    assert seen.metadata["traceparent"].startswith("00-0af7651916cd43dd")
    assert seen.metadata["x-extra-bin"] == b"\x00\x01"
    assert "caller-agent" not in seen.metadata.get("user-agent", "")
    # The caller's deadline, not a longer one. gRPC turns a deadline into each hop's timeout
    # with a clock it caches, so on a busy machine the leaf may see a few ms more than 3 s.
    assert seen.remaining is not None and 1.0 < seen.remaining <= 3.0 + 0.05


def test_leaf_errors_come_back_unchanged(f: Fed) -> None:
    direct = grpc.insecure_channel(f"127.0.0.1:{f.leaf_ports['rack-1']}")
    try:
        leaf_stub = node_service_pb2_grpc.NodeServiceStub(direct)
        for node_id, code in (("bad", "INVALID_ARGUMENT"), ("missing", "NOT_FOUND")):
            request = node_service_pb2.GetNodeRequest(name=f"cells/rack-1/nodes/{node_id}")
            via_top = fails(getattr(grpc.StatusCode, code), f.stub.GetNode, request)
            at_leaf = fails(getattr(grpc.StatusCode, code), leaf_stub.GetNode, request)
            assert via_top.details() == at_leaf.details()
            assert rpc_status.from_call(via_top) == rpc_status.from_call(at_leaf)  # type: ignore[arg-type]
        assert fields(via_top) == []
        assert fields(fails(grpc.StatusCode.INVALID_ARGUMENT, f.stub.GetNode, _get("bad"))) == [
            "name",
            "name.x",
        ]
    finally:
        direct.close()


def _get(node_id: str, cell: str = "rack-1") -> node_service_pb2.GetNodeRequest:
    return node_service_pb2.GetNodeRequest(name=f"cells/{cell}/nodes/{node_id}")


@pytest.mark.parametrize("name", ["", "nodes/x", "cells/Rack_1/nodes/x", "cells/rack-1/nodes/"])
def test_malformed_names_are_refused_by_the_top(f: Fed, name: str) -> None:
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT, f.stub.GetNode, node_service_pb2.GetNodeRequest(name=name)
    )
    assert fields(err) == ["name"]
    assert f.called() == []


def test_update_names_the_node_name_field(f: Fed) -> None:
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        f.stub.UpdateNode,
        node_service_pb2.UpdateNodeRequest(node=node_pb2.Node(name="bogus")),
    )
    assert fields(err) == ["node.name"]


def test_unknown_down_and_dead_cells(f: Fed) -> None:
    fails(grpc.StatusCode.NOT_FOUND, f.stub.GetNode, _get("n-1", "rack-77"))
    f.directory.down.add("rack-3")
    err = fails(grpc.StatusCode.UNAVAILABLE, f.stub.GetNode, _get("n-1", "rack-3"))
    assert "rack-3" in (err.details() or "")
    err = fails(grpc.StatusCode.UNAVAILABLE, f.stub.GetNode, _get("n-1", "rack-9"), timeout=5)
    assert "rack-9" in (err.details() or "")


def test_deadline_ends_a_slow_call(f: Fed) -> None:
    fails(grpc.StatusCode.DEADLINE_EXCEEDED, f.stub.GetNode, _get("slow"), timeout=0.5)


def test_create_with_a_mac_of_another_cell_is_refused_at_the_top(f: Fed) -> None:
    node = node_pb2.Node(
        bmc=node_pb2.BmcInfo(driver="fake"),
        ports=[node_pb2.Port(mac="aa:bb:cc:00:00:01"), node_pb2.Port(mac="52-54-00-00-00-01")],
    )
    request = node_service_pb2.CreateNodeRequest(parent="cells/rack-1", node_id="new", node=node)
    err = fails(grpc.StatusCode.ALREADY_EXISTS, f.stub.CreateNode, request)
    assert "52:54:00:00:00:01" in (err.details() or "")
    assert "rack-2" in (err.details() or "")
    assert f.called() == []
    # In the cell that owns the MAC, the leaf decides.
    request.parent = "cells/rack-2"
    assert f.stub.CreateNode(request).name == "cells/rack-2/nodes/new"


def test_update_of_ports_checks_macs_across_cells(f: Fed) -> None:
    from google.protobuf import field_mask_pb2

    request = node_service_pb2.UpdateNodeRequest(
        node=node_pb2.Node(
            name="cells/rack-1/nodes/n-1", ports=[node_pb2.Port(mac="5254.0000.0001")]
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["ports"]),
    )
    fails(grpc.StatusCode.ALREADY_EXISTS, f.stub.UpdateNode, request)
    assert f.called() == []


def test_cross_cell_list_asks_every_reachable_cell(f: Fed) -> None:
    f.directory.down.add("rack-9")
    page = f.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-", page_size=4))
    assert [n.name for n in page.nodes] == [
        "cells/rack-1/nodes/n-0",
        "cells/rack-2/nodes/n-0",
        "cells/rack-3/nodes/n-0",
        "cells/rack-1/nodes/n-1",
    ]
    assert list(page.unreachable) == ["cells/rack-9"]
    assert sorted(c for c, _ in f.called()) == list(CELLS)


def test_cross_cell_list_with_a_dead_cell_succeeds_with_the_rest(f: Fed) -> None:
    page = f.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-"), timeout=5)
    assert len(page.nodes) == 9
    assert list(page.unreachable) == ["cells/rack-9"]


def test_uid_filter_asks_only_the_owning_cell(f: Fed) -> None:
    f.directory.down.add("rack-9")
    f.stub.ListNodes(
        node_service_pb2.ListNodesRequest(parent="cells/-", filter='uid = "uid-rack-3-x"')
    )
    assert f.called() == [("rack-3", "ListNodes")]
    f.reset()
    f.directory.down.add("rack-9")
    f.stub.ListNodes(
        node_service_pb2.ListNodesRequest(parent="cells/-", filter='mac = "52:54:00:00:00:01"')
    )
    assert f.called() == [("rack-2", "ListNodes")]
    f.reset()
    f.directory.down.add("rack-9")
    f.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-", filter='uid = "nope"'))
    assert sorted(c for c, _ in f.called()) == list(CELLS)


def test_single_cell_list_is_forwarded_as_is(f: Fed) -> None:
    page = f.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/rack-1", page_size=2))
    assert [n.name for n in page.nodes] == ["cells/rack-1/nodes/n-0", "cells/rack-1/nodes/n-1"]
    assert page.next_page_token.startswith("{")  # the leaf's own token, untouched
    assert f.called() == [("rack-1", "ListNodes")]


def _event(cell: str, revision: int) -> node_service_pb2.NodeEvent:
    return node_service_pb2.NodeEvent(revision=revision, node=f"cells/{cell}/nodes/n-0")


def test_watch_of_all_cells_merges_their_streams(f: Fed, leaf_loop: Any) -> None:
    f.directory.down.add("rack-9")
    stream = f.stub.WatchNodes(node_service_pb2.WatchNodesRequest(parent="cells/-"), timeout=10)
    assert dict(stream.initial_metadata())["rackcells-unreachable"] == "cells/rack-9"
    for cell, rev in (("rack-1", 1), ("rack-3", 7), ("rack-1", 2), ("rack-2", 4)):
        events = f.leaves[cell].events
        assert events is not None
        leaf_loop.loop.call_soon_threadsafe(events.put_nowait, _event(cell, rev))
    got = [next(stream) for _ in range(4)]
    assert sorted((e.node, e.revision) for e in got) == sorted(
        [
            ("cells/rack-1/nodes/n-0", 1),
            ("cells/rack-1/nodes/n-0", 2),
            ("cells/rack-2/nodes/n-0", 4),
            ("cells/rack-3/nodes/n-0", 7),
        ]
    )
    assert [e.revision for e in got if e.node.startswith("cells/rack-1/")] == [1, 2]
    events = f.leaves["rack-2"].events
    assert events is not None
    leaf_loop.loop.call_soon_threadsafe(events.put_nowait, Unavailable("leaf stopping"))
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "leaf stopping"


def test_watch_of_one_cell_relays_its_stream(f: Fed, leaf_loop: Any) -> None:
    stream = f.stub.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent="cells/rack-2", since_revision=5), timeout=10
    )
    events = f.leaves["rack-2"].events
    assert events is not None
    leaf_loop.loop.call_soon_threadsafe(events.put_nowait, _event("rack-2", 6))
    assert next(stream).revision == 6
    stream.cancel()


def test_watch_of_all_cells_cannot_resume_from_one_revision(f: Fed) -> None:
    stream = f.stub.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent="cells/-", since_revision=3), timeout=5
    )
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(info.value) == ["since_revision"]


def test_operations_are_routed_by_name(f: Fed) -> None:
    op = f.ops.GetOperation(operations_pb2.GetOperationRequest(name="cells/rack-3/operations/42"))
    assert op.name == "cells/rack-3/operations/42"
    f.ops.ListOperations(operations_pb2.ListOperationsRequest(name="cells/rack-1/operations"))
    assert sorted(f.called()) == [("rack-1", "ListOperations"), ("rack-3", "GetOperation")]
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        f.ops.GetOperation,
        operations_pb2.GetOperationRequest(name="cells/rack-3/nodes/42"),
    )
    assert fields(err) == ["name"]
    err = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        f.ops.ListOperations,
        operations_pb2.ListOperationsRequest(name="cells/-/operations"),
    )
    assert fields(err) == ["name"]
    # A method the fake leaf does not implement: the leaf's UNIMPLEMENTED comes back.
    fails(
        grpc.StatusCode.UNIMPLEMENTED,
        f.ops.CancelOperation,
        operations_pb2.CancelOperationRequest(name="cells/rack-3/operations/42"),
    )
