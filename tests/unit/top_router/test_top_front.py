"""The top's HTTP/2 front (top_cell.front, top_cell.h2wire): what it routes where, and that it
relays what a plain gRPC proxy would: big answers past the default windows, long streams to a
slow reader, cancellation, a leaf that drops the connection, a request too big to route."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_status import rpc_status

from common.errors import Unavailable
from common.server import ServiceBinding, build_server
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc
from top_cell.config import TopConfig
from top_cell.front import cell_of_call, error_headers
from top_cell.server import TopParts, TopServer, start

BIG = 3 * 1024 * 1024  # past every default HTTP/2 window (64 KiB) and the front's (1 MiB)
EVENTS = 400


def _message(request: Any) -> bytes:
    data = request.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


NODE = b"/rackcells.v1.NodeService/"
OPS = b"/google.longrunning.Operations/"


@pytest.mark.parametrize(
    ("path", "request_", "cell"),
    [
        (NODE + b"GetNode", node_service_pb2.GetNodeRequest(name="cells/r1/nodes/n1"), "r1"),
        (NODE + b"ListNodes", node_service_pb2.ListNodesRequest(parent="cells/r2"), "r2"),
        (NODE + b"ListNodes", node_service_pb2.ListNodesRequest(parent="cells/-"), None),
        (NODE + b"WatchNodes", node_service_pb2.WatchNodesRequest(parent="cells/-"), None),
        (NODE + b"GetNode", node_service_pb2.GetNodeRequest(name="nodes/n1"), None),
        (NODE + b"GetNode", node_service_pb2.GetNodeRequest(name="cells/R_1/nodes/x"), None),
        (
            NODE + b"CreateNode",
            node_service_pb2.CreateNodeRequest(parent="cells/r1", node_id="x"),
            None,
        ),
        (
            NODE + b"UpdateNode",
            node_service_pb2.UpdateNodeRequest(node=node_pb2.Node(name="cells/r1/nodes/n1")),
            None,
        ),
        (
            OPS + b"GetOperation",
            operations_pb2.GetOperationRequest(name="cells/r3/operations/7"),
            "r3",
        ),
        (
            OPS + b"ListOperations",
            operations_pb2.ListOperationsRequest(name="cells/r3/operations"),
            "r3",
        ),
        (OPS + b"ListOperations", operations_pb2.ListOperationsRequest(name="cells/-"), None),
    ],
)
def test_only_plain_named_calls_are_relayed_straight(
    path: bytes, request_: Any, cell: str | None
) -> None:
    assert cell_of_call(path, _message(request_)) == cell


def test_incomplete_or_compressed_first_messages_are_not_routed() -> None:
    whole = _message(node_service_pb2.GetNodeRequest(name="cells/r1/nodes/n1"))
    assert cell_of_call(NODE + b"GetNode", whole[:-1]) is None
    assert cell_of_call(NODE + b"GetNode", b"\x01" + whole[1:]) is None
    assert cell_of_call(NODE + b"GetNode", whole[:3]) is None


def test_error_trailers_carry_status_and_details() -> None:
    err = Unavailable("cell r1 went away: 100% gone", metadata={"cell": "cells/r1"})
    trailers = dict(error_headers(err, response_started=False))
    assert trailers[b"grpc-status"] == b"14"
    assert trailers[b"grpc-message"] == b"cell r1 went away: 100%25 gone"
    assert trailers[b":status"] == b"200"
    assert b":status" not in dict(error_headers(err, response_started=True))


# -- through a running top ----------------------------------------------------------------------


@dataclass
class LeafSeen:
    cancelled: threading.Event = field(default_factory=threading.Event)


class BigLeaf(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, seen: LeafSeen) -> None:
        self.seen = seen

    async def GetNode(self, request: Any, context: Any) -> node_pb2.Node:
        if request.name.endswith("/slow"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.seen.cancelled.set()
                raise
        node = node_pb2.Node(name=request.name)
        if request.name.endswith("/big"):
            node.extra["blob"] = "x" * BIG
        return node

    async def WatchNodes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(EVENTS):
            node = f"cells/r1/nodes/n{i}"
            yield node_service_pb2.NodeEvent(revision=i + 1, node=node, detail="d" * 20000)


class Directory:
    def __init__(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints
        self.down: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self.endpoints)

    def is_reachable(self, cell: str) -> bool:
        return True

    def endpoint(self, cell: str) -> str | None:
        return None if cell in self.down else self.endpoints.get(cell)

    def channel(self, cell: str) -> grpc.aio.Channel:
        if cell not in self.endpoints or cell in self.down:
            raise Unavailable(f"cell {cell} is down")
        return grpc.aio.insecure_channel(self.endpoints[cell])


@dataclass
class Top:
    stub: node_service_pb2_grpc.NodeServiceStub
    seen: LeafSeen
    server: TopServer
    directory: Directory


async def _hang_up_server() -> tuple[asyncio.AbstractServer, int]:
    """A 'leaf' that accepts a connection and drops it as soon as anything arrives."""

    class HangUp(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.close()

    server = await asyncio.get_running_loop().create_server(HangUp, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def top(leaf_loop: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Top]:
    tmp: Path = tmp_path_factory.mktemp("front")
    seen = LeafSeen()

    async def start_leaf() -> tuple[grpc.aio.Server, int]:
        binding = ServiceBinding(
            "rackcells.v1.NodeService",
            BigLeaf(seen),
            node_service_pb2_grpc.add_NodeServiceServicer_to_server,
        )
        server, port, _ = build_server("127.0.0.1:0", [binding])
        await server.start()
        return server, port

    leaf, leaf_port = leaf_loop.run(start_leaf())
    hang_up, hang_up_port = leaf_loop.run(_hang_up_server())
    directory = Directory({"r1": f"127.0.0.1:{leaf_port}", "r2": f"127.0.0.1:{hang_up_port}"})
    config = TopConfig(
        listen="127.0.0.1:0",
        db=f"sqlite:///{tmp / 'top.db'}",
        registry="static:unused.yaml",
        secret_key_file=str(tmp / "top.key"),
    )
    server = leaf_loop.run(start(config, TopParts(cells=directory)))  # type: ignore[arg-type]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Top(node_service_pb2_grpc.NodeServiceStub(channel), seen, server, directory)
    channel.close()
    leaf_loop.run(server.stop(0))
    hang_up.close()
    leaf_loop.run(leaf.stop(0))


def test_an_answer_bigger_than_every_window_arrives_whole(top: Top) -> None:
    node = top.stub.GetNode(node_service_pb2.GetNodeRequest(name="cells/r1/nodes/big"), timeout=30)
    assert node.extra["blob"] == "x" * BIG


def test_a_long_stream_reaches_a_slow_reader_in_order(top: Top) -> None:
    events = top.stub.WatchNodes(node_service_pb2.WatchNodesRequest(parent="cells/r1"), timeout=60)
    revisions = []
    for i, event in enumerate(events):
        if i < 40:
            threading.Event().wait(0.01)  # read slowly while the leaf writes on
        revisions.append(event.revision)
    assert revisions == list(range(1, EVENTS + 1))


def test_a_cancelled_call_is_cancelled_at_the_leaf(top: Top) -> None:
    future = top.stub.GetNode.future(
        node_service_pb2.GetNodeRequest(name="cells/r1/nodes/slow"), timeout=30
    )
    threading.Event().wait(0.5)
    future.cancel()
    assert top.seen.cancelled.wait(10)


def test_a_leaf_that_hangs_up_gives_unavailable_naming_the_cell(top: Top) -> None:
    with pytest.raises(grpc.RpcError) as info:
        top.stub.GetNode(node_service_pb2.GetNodeRequest(name="cells/r2/nodes/n1"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "r2" in (info.value.details() or "")
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None and status.details  # ErrorInfo names the cell


def test_a_request_too_big_to_route_still_gets_its_answer_from_the_router(top: Top) -> None:
    name = "cells/r1/nodes/" + "n" * (2 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        top.stub.GetNode(node_service_pb2.GetNodeRequest(name=name), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # ... and the connection is still good afterwards
    assert top.stub.GetNode(node_service_pb2.GetNodeRequest(name="cells/r1/nodes/a")).name


def test_a_cell_gone_down_loses_its_connection_and_gets_a_new_one_when_back(
    top: Top, leaf_loop: Any
) -> None:
    request = node_service_pb2.GetNodeRequest(name="cells/r1/nodes/a")
    assert top.stub.GetNode(request, timeout=10).name == request.name
    front = top.server.front
    endpoint = front.endpoints["r1"]
    relayed = front.pool.connection(endpoint)
    assert relayed is not None

    top.directory.down.add("r1")
    leaf_loop.run(_changed(front, "r1"))
    assert front.pool.connection(endpoint) is None
    with pytest.raises(grpc.RpcError) as info:  # the router answers for a DOWN cell
        top.stub.GetNode(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    top.directory.down.discard("r1")
    assert top.stub.GetNode(request, timeout=10).name == request.name
    assert front.pool.connection(endpoint) not in (None, relayed)


async def _changed(front: Any, cell: str) -> None:
    front.cell_changed(cell)


def test_a_peer_that_breaks_http2_gets_goaway_and_the_top_serves_on(top: Top) -> None:
    with socket.create_connection(("127.0.0.1", top.server.port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 16)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    # our SETTINGS first, then GOAWAY (type 7) with PROTOCOL_ERROR
    assert b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" in received
    request = node_service_pb2.GetNodeRequest(name="cells/r1/nodes/a")
    assert top.stub.GetNode(request, timeout=10).name == request.name


def test_a_top_that_cannot_listen_leaves_nothing_behind(leaf_loop: Any, tmp_path: Path) -> None:
    sockets = Path(tempfile.gettempdir())
    before = set(sockets.glob("rackcells-top-*"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = TopConfig(
            listen=f"127.0.0.1:{taken.getsockname()[1]}",
            db=f"sqlite:///{tmp_path / 'top.db'}",
            registry="static:unused.yaml",
            secret_key_file=str(tmp_path / "top.key"),
        )
        with pytest.raises(OSError):
            leaf_loop.run(start(config, TopParts(cells=Directory({}))))  # type: ignore[arg-type]
    assert set(sockets.glob("rackcells-top-*")) == before
