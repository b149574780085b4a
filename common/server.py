"""gRPC server assembly shared by both cells: error interceptor, health, reflection.

Every rackcells server answers ``grpc.health.v1`` (overall and per service) and server
reflection, so that any gRPC tool (grpcurl, buf curl, Kubernetes gRPC probes) works against it
without the .proto files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.grpc_errors import ErrorInterceptor

__all__ = ["ServiceBinding", "build_server", "parse_hostport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that registers it, with its full service name."""

    full_name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


def parse_hostport(text: str, setting: str) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (``[::1]:PORT`` for IPv6) and checks the port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{setting}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_server(
    listen: str,
    services: Sequence[ServiceBinding],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_workers_hint: int = 0,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Creates (not starts) an asyncio gRPC server with the given services, health and reflection.

    ``listen`` is ``HOST:PORT`` or ``unix:PATH``. Returns the server, the bound port (useful
    with port 0; not a port for a Unix socket) and the health servicer, whose
    statuses the caller sets to SERVING once it is ready.
    """
    del max_workers_hint
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    for binding in services:
        binding.add_to_server(binding.servicer, server)
        names.append(binding.full_name)
    names.append(reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    if listen.startswith("unix:"):
        bound = server.add_insecure_port(listen)
    else:
        host, port = parse_hostport(listen, "listen")
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, bound, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
    """Sets the overall status and each named service to SERVING."""
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_not_serving(
    health_servicer: health.aio.HealthServicer, names: Sequence[str]
) -> None:
    """Sets the overall status and each named service to NOT_SERVING, for a graceful stop."""
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
