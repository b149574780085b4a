"""Every public service answers standard health checks and is listed by server reflection the
same way at a leaf and at the top cell, so that any gRPC tool works against either."""

from __future__ import annotations

import grpc
from conformance_kit import RPC_GUARD, Api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

PUBLIC = {
    "rackcells.v1.NodeService",
    "google.longrunning.Operations",
    "rackcells.v1.CapacityService",
    "rackcells.v1.AllocationService",
}


def test_every_public_service_reports_serving(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    for service in ("", *sorted(PUBLIC)):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_GUARD)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    unknown = health_pb2.HealthCheckRequest(service="rackcells.v1.NoSuchService")
    try:
        stub.Check(unknown, timeout=RPC_GUARD)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("an unknown service reported a status")


def test_reflection_lists_every_public_service(api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=RPC_GUARD))
    listed = {s.name for r in replies for s in r.list_services_response.service}
    assert listed >= PUBLIC | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
