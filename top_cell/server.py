"""Assembles and runs the top cell: registry, cell directory, inventory, services, shutdown.

The top cell is put together in two steps. :func:`assemble` builds the federation-facing parts
(the registry of leaves, the directory of their channels, the inventory derived from their
streams, and the servicers of CellService, CapacityService and AllocationService).
:func:`start` adds the router (NodeService and Operations), health and reflection, serves them on
a private Unix socket, and puts :mod:`top_cell.front` on the public address in front of them.
Tests hand :func:`start` their own :class:`TopParts` to run the router against leaves they
started, without a registry file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from cryptography.fernet import Fernet
from google.longrunning import operations_pb2_grpc
from grpc_health.v1 import health

from common.config import ConfigError
from common.keys import load_or_create_key
from common.server import (
    ServiceBinding,
    build_server,
    mark_not_serving,
    mark_serving,
)
from common.telemetry import setup_telemetry
from common.wire import add_servicer
from rackcells.v1 import (
    allocation_service_pb2,
    allocation_service_pb2_grpc,
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    cell_service_pb2,
    cell_service_pb2_grpc,
    node_service_pb2_grpc,
)
from top_cell.allocation_servicer import AllocationServicer
from top_cell.capacity_servicer import CapacityServicer
from top_cell.cell_servicer import CellServicer
from top_cell.config import TopConfig
from top_cell.cross_list import PageTokens
from top_cell.front import Front, FrontSocket, private_socket
from top_cell.inventory import start_inventory
from top_cell.registry import make_registry
from top_cell.router import (
    NODE_SERVICE,
    OPERATIONS_SERVICE,
    AddressIndex,
    CellChannels,
    NodeRouter,
    OperationsRouter,
)

__all__ = ["TopParts", "TopServer", "assemble", "page_token_key", "run", "start"]

log = logging.getLogger(__name__)

CELL_SERVICE = cell_service_pb2.DESCRIPTOR.services_by_name["CellService"].full_name
CAPACITY_SERVICE = capacity_service_pb2.DESCRIPTOR.services_by_name["CapacityService"].full_name
ALLOCATION_SERVICE = allocation_service_pb2.DESCRIPTOR.services_by_name[
    "AllocationService"
].full_name


@dataclass
class TopParts:
    """What the router is served with: the leaves' channels, the uid/MAC index, the other
    services, how to stop what they started (called in reverse order), and where to hear of a
    cell that changed (so the front drops a connection to where a cell no longer is)."""

    cells: CellChannels
    index: AddressIndex | None = None
    services: Sequence[ServiceBinding] = ()
    stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_cell_change: Callable[[Callable[[str], None]], None] | None = None


@dataclass
class TopServer:
    """A started top cell: the gRPC server and what it owns, for a clean stop."""

    config: TopConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: tuple[str, ...]
    parts: TopParts
    front: Front
    socket: FrontSocket

    async def stop(self, grace: float = 5.0) -> None:
        await mark_not_serving(self.health, self.services)
        await self.front.close(grace)
        await self.server.stop(grace)
        self.socket.remove()
        for stop in reversed(self.parts.stoppers):
            try:
                await stop()
            except Exception:
                log.exception("error while stopping the top cell")


def page_token_key(config: TopConfig) -> bytes:
    """The Fernet key that seals cross-cell page tokens: read from the key file, created (mode
    0600) if missing; a throw-away key when there is no file to keep it in."""
    path = config.key_path()
    if path is None:
        log.warning("no secret_key_file: page tokens will not survive a restart of the top cell")
        return Fernet.generate_key()
    return load_or_create_key(path)


async def assemble(config: TopConfig) -> TopParts:
    """Builds and starts the registry, the cell directory, the inventory and the services of
    the other top-cell modules."""
    try:
        registry = make_registry(config.registry)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    parts = await start_inventory(registry, config.db)
    try:
        await registry.start()
    except BaseException:
        await parts.stop()
        raise
    directory, inventory = parts.directory, parts.inventory
    services = (
        ServiceBinding(
            CELL_SERVICE,
            CellServicer(directory, inventory),
            cell_service_pb2_grpc.add_CellServiceServicer_to_server,
        ),
        ServiceBinding(
            CAPACITY_SERVICE,
            CapacityServicer(directory, inventory),
            capacity_service_pb2_grpc.add_CapacityServiceServicer_to_server,
        ),
        ServiceBinding(
            ALLOCATION_SERVICE,
            AllocationServicer(directory, inventory),
            allocation_service_pb2_grpc.add_AllocationServiceServicer_to_server,
        ),
    )
    return TopParts(
        cells=directory,
        index=inventory,
        services=services,
        stoppers=[registry.stop, parts.stop],
        on_cell_change=directory.on_change,
    )


async def start(config: TopConfig, parts: TopParts | None = None) -> TopServer:
    """Starts serving; returns once the port is bound and every service reports SERVING."""
    setup_telemetry("rackcells-top")
    loop = asyncio.get_running_loop()
    key = await loop.run_in_executor(None, page_token_key, config)
    if parts is None:
        parts = await assemble(config)
    bindings = [
        ServiceBinding(
            NODE_SERVICE,
            NodeRouter(
                parts.cells,
                index=parts.index,
                tokens=PageTokens(key),
                fanout_timeout=config.fanout_timeout,
            ),
            partial(add_servicer, node_service_pb2_grpc.add_NodeServiceServicer_to_server),
        ),
        ServiceBinding(
            OPERATIONS_SERVICE,
            OperationsRouter(parts.cells),
            operations_pb2_grpc.add_OperationsServicer_to_server,
        ),
        *parts.services,
    ]
    socket = private_socket()
    front = Front(parts.cells, socket.path)
    server: grpc.aio.Server | None = None
    try:
        server, _, health_servicer = build_server(socket.address, bindings)
        await server.start()
        port = await front.listen(config.listen)
    except BaseException:
        await front.close(0)
        if server is not None:
            await server.stop(0)
        socket.remove()
        for stop in reversed(parts.stoppers):
            await stop()
        raise
    if parts.on_cell_change is not None:
        parts.on_cell_change(front.cell_changed)
    services = tuple(b.full_name for b in bindings)
    await mark_serving(health_servicer, services)
    if config.port_file:
        Path(config.port_file).write_text(f"{port}\n")
    log.info("top cell serving on port %d (registry %s)", port, config.registry)
    return TopServer(config, server, port, health_servicer, services, parts, front, socket)


async def run(config: TopConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls and stops."""
    top = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("top cell stopping")
    await top.stop()
