"""Assembles and runs one leaf cell: database, migrations, services, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from importlib.metadata import version
from pathlib import Path

import grpc
from cryptography.fernet import Fernet
from google.longrunning import operations_pb2_grpc
from grpc_health.v1 import health
from sqlalchemy import Engine

from common.db import make_engine
from common.server import (
    ServiceBinding,
    build_server,
    mark_not_serving,
    mark_serving,
    parse_hostport,
)
from common.telemetry import setup_telemetry
from common.wire import add_servicer
from leaf_cell.agent_servicer import AgentServicer
from leaf_cell.allocations import AllocationStore
from leaf_cell.boot_http import BootHttpServer
from leaf_cell.conductor import Conductor
from leaf_cell.config import LeafConfig
from leaf_cell.db.migrate import upgrade
from leaf_cell.deploy import Deploys
from leaf_cell.events import EventBus
from leaf_cell.federation_servicers import AllocationServicer, CapacityServicer, InventoryServicer
from leaf_cell.image_cache import ImageCache
from leaf_cell.locks import NodeLocks
from leaf_cell.node_status import StatusStore
from leaf_cell.nodes import NodeStore
from leaf_cell.operations import OperationStore
from leaf_cell.operations_servicer import OperationsServicer
from leaf_cell.power_sync import PowerSync
from leaf_cell.registration import Registration, RegistrationError
from leaf_cell.secrets import SecretBox, load_or_create_key
from leaf_cell.servicer import NodeServicer
from rackcells.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    allocation_service_pb2_grpc,
    capacity_service_pb2_grpc,
    inventory_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
)

__all__ = ["LeafServer", "run"]

log = logging.getLogger(__name__)

NODE_SERVICE = node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
OPERATIONS_SERVICE = "google.longrunning.Operations"
AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
INVENTORY_SERVICE = "rackcells.v1.InventoryService"
ALLOCATION_SERVICE = "rackcells.v1.AllocationService"
CAPACITY_SERVICE = "rackcells.v1.CapacityService"
VERSION = version("rackcells")


@dataclass
class LeafServer:
    """A started leaf: the gRPC server and what it owns, for a clean stop."""

    config: LeafConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    engine: Engine
    executor: ThreadPoolExecutor
    services: tuple[str, ...]
    conductor: Conductor
    power_sync: PowerSync
    deploys: Deploys | None
    http: BootHttpServer | None
    registration: Registration | None = None

    async def stop(self, grace: float = 5.0) -> None:
        if self.registration is not None:
            # Leave the registry first, so the top stops routing here before we go.
            await asyncio.get_running_loop().run_in_executor(None, self.registration.stop)
        await mark_not_serving(self.health, self.services)
        await self.server.stop(grace)
        if self.http is not None:
            await self.http.stop()
        await self.conductor.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.engine.dispose()


def _secret_box(config: LeafConfig) -> SecretBox:
    path = config.key_path()
    return SecretBox(load_or_create_key(path) if path else Fernet.generate_key())


async def start(config: LeafConfig) -> LeafServer:
    """Migrates the database and starts serving; returns once the port is bound and healthy."""
    engine = make_engine(config.db, pool_size=config.db_pool_size)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, upgrade, engine)
    setup_telemetry(f"rackcells-leaf-{config.cell}")
    secrets = _secret_box(config)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="leaf-db")
    bus = EventBus()
    bus.bind_loop(loop)
    conductor = Conductor(
        config=config,
        nodes=NodeStore(engine, config.cell, secrets, on_events=bus.notify),
        status=StatusStore(engine, config.cell, secrets, on_events=bus.notify),
        locks=NodeLocks(
            engine,
            config.cell,
            holder=f"conductor/{config.cell}",
            lease=timedelta(seconds=config.lock_lease_seconds),
        ),
        operations=OperationStore(engine, config.cell),
        db_executor=executor,
    )
    await conductor.recover()
    power_sync = PowerSync(conductor)
    if config.power_sync_interval > 0:
        conductor.spawn(power_sync.run_forever(), name="power sync")
    endpoint: dict[str, str] = {}
    deploys: Deploys | None = None
    http: BootHttpServer | None = None
    if config.http_listen:
        cache = ImageCache(
            config.image_dir(), config.image_cache_bytes, fetch_timeout=config.deploy_image_timeout
        )
        deploys = Deploys(
            conductor,
            cache,
            http_base=lambda: config.http_advertise or (http.base_url if http else ""),
            grpc_endpoint=lambda: endpoint["grpc"],
        )
        conductor.operations.live_position = deploys.queue_position
        http = BootHttpServer(
            config.http_listen,
            cache,
            deploys.boot_script,
            agent_dir=Path(config.agent_dir) if config.agent_dir else None,
        )
    bindings = [
        ServiceBinding(
            NODE_SERVICE,
            NodeServicer(conductor, deploys, bus),
            partial(add_servicer, node_service_pb2_grpc.add_NodeServiceServicer_to_server),
        ),
        ServiceBinding(
            OPERATIONS_SERVICE,
            OperationsServicer(conductor, deploys),
            operations_pb2_grpc.add_OperationsServicer_to_server,
        ),
        ServiceBinding(
            INVENTORY_SERVICE,
            InventoryServicer(conductor, bus, VERSION),
            inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server,
        ),
        ServiceBinding(
            ALLOCATION_SERVICE,
            AllocationServicer(
                conductor, AllocationStore(engine, config.cell, on_events=bus.notify)
            ),
            allocation_service_pb2_grpc.add_AllocationServiceServicer_to_server,
        ),
        ServiceBinding(
            CAPACITY_SERVICE,
            CapacityServicer(conductor),
            capacity_service_pb2_grpc.add_CapacityServiceServicer_to_server,
        ),
        ServiceBinding(
            AGENT_SERVICE,
            AgentServicer(deploys),
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
        ),
    ]
    server, port, health_servicer = build_server(config.listen, bindings)
    host = parse_hostport(config.listen, "listen")[0]
    endpoint["grpc"] = config.advertise or (
        f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    )
    await server.start()
    if http is not None:
        await http.start()
    services = tuple(b.full_name for b in bindings)
    await mark_serving(health_servicer, services)
    registration = None
    if config.registry:
        try:
            registration = Registration(config.registry, config.cell, endpoint["grpc"], VERSION)
            await loop.run_in_executor(None, registration.start)
        except (RegistrationError, ValueError):
            await server.stop(0)
            raise
    if config.port_file:
        Path(config.port_file).write_text(f"{port}\n")
    log.info(
        "leaf cell %s serving on port %d (db %s)",
        config.cell,
        port,
        engine.url.render_as_string(hide_password=True),
    )
    return LeafServer(
        config,
        server,
        port,
        health_servicer,
        engine,
        executor,
        services,
        conductor,
        power_sync,
        deploys,
        http,
        registration,
    )


async def run(config: LeafConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls and stops."""
    leaf = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("leaf cell %s stopping", config.cell)
    await leaf.stop()
