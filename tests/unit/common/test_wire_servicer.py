"""common.wire: a servicer registered with add_servicer may answer with bytes or messages."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
import pytest

from common.errors import NotFound
from common.server import ServiceBinding, build_server
from common.wire import add_servicer, passing_bytes
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

WIRED = node_pb2.Node(name="cells/c/nodes/wired", extra={"k": "v"})


class _Servicer(node_service_pb2_grpc.NodeServiceServicer):
    async def GetNode(self, request: Any, context: Any) -> Any:
        if request.name.endswith("/wired"):
            return WIRED.SerializeToString()
        if request.name.endswith("/missing"):
            raise NotFound(f"node {request.name} not found")
        return node_pb2.Node(name=request.name)


@pytest.fixture
def stub(leaf_loop: Any) -> Iterator[node_service_pb2_grpc.NodeServiceStub]:
    binding = ServiceBinding(
        node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
        _Servicer(),
        partial(add_servicer, node_service_pb2_grpc.add_NodeServiceServicer_to_server),
    )

    async def start() -> tuple[grpc.aio.Server, int]:
        server, port, _health = build_server("127.0.0.1:0", [binding])
        await server.start()
        return server, port

    server, port = leaf_loop.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield node_service_pb2_grpc.NodeServiceStub(channel)
    channel.close()
    leaf_loop.run(server.stop(None))


def test_bytes_and_messages_both_reach_the_client(
    stub: node_service_pb2_grpc.NodeServiceStub,
) -> None:
    get = node_service_pb2.GetNodeRequest
    assert stub.GetNode(get(name="cells/c/nodes/wired")) == WIRED
    assert stub.GetNode(get(name="cells/c/nodes/built")) == node_pb2.Node(
        name="cells/c/nodes/built"
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.GetNode(get(name="cells/c/nodes/missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the error interceptor still applies


def test_passing_bytes_serializes_anything_else() -> None:
    serialize = passing_bytes(node_pb2.Node.SerializeToString)
    assert serialize(b"\x0a\x01x") == b"\x0a\x01x"
    assert serialize(node_pb2.Node(name="x")) == node_pb2.Node(name="x").SerializeToString()
    with pytest.raises(TypeError):
        passing_bytes(None)(object())
