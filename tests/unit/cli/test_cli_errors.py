"""Failed calls become one readable line; field violations replace the summary message."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from rackcells.cli.client import Session
from rackcells.cli.errors import describe_rpc_error, describe_status, rpc_failure
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc


def bad_request_status() -> status_pb2.Status:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="node.ports[0].mac", description="'zz' is not a MAC address"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="node_id", description="is required"),
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(bad)
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="summary that is replaced", details=[packed]
    )


class AbortingNodes(node_service_pb2_grpc.NodeServiceServicer):
    """A real servicer that fails the way the leaf does: rich statuses via trailers."""

    def GetNode(
        self, request: node_service_pb2.GetNodeRequest, context: grpc.ServicerContext
    ) -> node_pb2.Node:
        context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name} not found")
        raise AssertionError("unreachable")

    def CreateNode(
        self, request: node_service_pb2.CreateNodeRequest, context: grpc.ServicerContext
    ) -> node_pb2.Node:
        context.abort_with_status(rpc_status.to_status(bad_request_status()))
        raise AssertionError("unreachable")

    def DeleteNode(
        self, request: node_service_pb2.DeleteNodeRequest, context: grpc.ServicerContext
    ) -> Any:
        status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="cell rack-9 is down")
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason="CELL_UNAVAILABLE", domain="rackcells.io"))
        status.details.append(info)
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("unreachable")


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    node_service_pb2_grpc.add_NodeServiceServicer_to_server(AbortingNodes(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def call_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_not_found_is_code_and_message(endpoint: str) -> None:
    session = Session(endpoint=endpoint)
    err = call_error(
        lambda: session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name="cells/rack-1/nodes/x"), timeout=5
        )
    )
    assert describe_rpc_error(err, endpoint) == "NOT_FOUND: node cells/rack-1/nodes/x not found"
    session.close()


def test_invalid_argument_lists_field_violations(endpoint: str) -> None:
    session = Session(endpoint=endpoint)
    err = call_error(
        lambda: session.nodes.CreateNode(node_service_pb2.CreateNodeRequest(), timeout=5)
    )
    assert describe_rpc_error(err, endpoint) == (
        "INVALID_ARGUMENT: node.ports[0].mac: 'zz' is not a MAC address; node_id: is required"
    )
    session.close()


def test_unavailable_from_a_server_is_not_reported_as_unreachable(endpoint: str) -> None:
    session = Session(endpoint=endpoint)
    err = call_error(
        lambda: session.nodes.DeleteNode(
            node_service_pb2.DeleteNodeRequest(name="cells/rack-9/nodes/x"), timeout=5
        )
    )
    failure = rpc_failure(err)
    assert failure.from_server and failure.reason == "CELL_UNAVAILABLE"
    assert describe_rpc_error(err, endpoint) == "UNAVAILABLE: cell rack-9 is down"
    session.close()


def test_unreachable_endpoint_names_it() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"127.0.0.1:{port}"
    session = Session(endpoint=endpoint)
    err = call_error(
        lambda: session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name="cells/r/nodes/x"), timeout=5
        )
    )
    line = describe_rpc_error(err, endpoint)
    assert line.startswith(f"cannot reach {endpoint} (") and "\n" not in line
    session.close()


def test_fake_errors_without_details(transport_error: Callable[..., grpc.RpcError]) -> None:
    err = transport_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert "raise --timeout" in describe_rpc_error(err, "h:1")
    err = transport_error(grpc.StatusCode.PERMISSION_DENIED, "multi\nline")
    assert describe_rpc_error(err, "h:1") == "PERMISSION_DENIED: multi line"


def test_a_bare_rpc_error_still_gives_a_line() -> None:
    assert describe_rpc_error(grpc.RpcError("odd"), "h:1") == "UNKNOWN: odd"


def test_operation_error_status() -> None:
    assert describe_status(bad_request_status()).startswith("INVALID_ARGUMENT: node.ports[0].mac")
    assert describe_status(status_pb2.Status(code=code_pb2.ABORTED, message="lost the lock")) == (
        "ABORTED: lost the lock"
    )
