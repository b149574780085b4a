"""A fake leaf cell and a fake registry for the top cell's inventory and allocation tests.

The fake leaf is a real grpc.aio server on 127.0.0.1 serving InventoryService.WatchInventory,
AllocationService and grpc.health.v1, with the semantics the top relies on: a snapshot (reset,
possibly in parts, the last with snapshot_complete) when asked for revision 0 or an unknown
revision, journalled changes otherwise, heartbeats, and claims that are atomic because the
search and the claim run without an ``await`` in between on one event loop.

Imported by the test modules of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.server import ServiceBinding, build_server
from rackcells.v1 import (
    allocation_service_pb2,
    allocation_service_pb2_grpc,
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    cell_service_pb2,
    cell_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    node_pb2,
)
from top_cell.allocation_servicer import AllocationServicer
from top_cell.capacity_servicer import CapacityServicer
from top_cell.cell_servicer import CellServicer
from top_cell.inventory import InventoryParts, start_inventory

PS = node_pb2.ProvisionState
AVAILABLE = PS.PROVISION_STATE_AVAILABLE


def summary(node_id: str, **fields: Any) -> inventory_service_pb2.NodeSummary:
    values: dict[str, Any] = {
        "uid": f"uid-{node_id}",
        "resource_class": "baremetal",
        "provision_state": AVAILABLE,
    }
    values.update(fields)
    return inventory_service_pb2.NodeSummary(node_id=node_id, **values)


def mac_of(cell_no: int, node_no: int) -> str:
    return f"52:54:{cell_no:02x}:00:{node_no // 256:02x}:{node_no % 256:02x}"


class FakeLeaf:
    """One fake leaf cell; start it on the test's event loop."""

    def __init__(self, cell: str, *, heartbeat: float = 0.5, chunk: int = 1000) -> None:
        self.cell = cell
        self.heartbeat = heartbeat
        self.chunk = chunk
        self.version = "fake-1"
        self.nodes: dict[str, inventory_service_pb2.NodeSummary] = {}
        self.revision = 0
        self.journal: list[tuple[int, list[inventory_service_pb2.NodeSummary], list[str]]] = []
        self.watch_requests: list[int] = []
        self.allocations: dict[str, allocation_service_pb2.Allocation] = {}
        self.create_calls = 0
        self.create_error: tuple[grpc.StatusCode, str] | None = None
        self.claim_delay = 0.0
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port = 0
        self._queues: set[asyncio.Queue[inventory_service_pb2.InventoryUpdate]] = set()
        self._ids = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> FakeLeaf:
        server = grpc.aio.server()
        inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(_Inventory(self), server)
        allocation_service_pb2_grpc.add_AllocationServiceServicer_to_server(
            _Allocations(self), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self.server, self.health = server, health_servicer
        return self

    async def set_serving(self, serving: bool) -> None:
        assert self.health is not None
        status = health_pb2.HealthCheckResponse
        await self.health.set("", status.SERVING if serving else status.NOT_SERVING)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    # -- changing the inventory ----------------------------------------------------------

    def change(
        self,
        upserts: Iterable[inventory_service_pb2.NodeSummary] = (),
        deleted: Iterable[str] = (),
    ) -> int:
        """One revision with these changes, pushed to every connected stream."""
        ups, dels = list(upserts), list(deleted)
        self.revision += 1
        for s in ups:
            self.nodes[s.node_id] = s
        for node_id in dels:
            self.nodes.pop(node_id, None)
        self.journal.append((self.revision, ups, dels))
        update = inventory_service_pb2.InventoryUpdate(
            cell=f"cells/{self.cell}",
            revision=self.revision,
            upserts=ups,
            deleted=dels,
            version=self.version,
        )
        for queue in self._queues:
            queue.put_nowait(update)
        return self.revision

    def add_nodes(
        self, count: int, *, prefix: str = "n", start: int = 0, cell_no: int = 0, **fields: Any
    ) -> list[str]:
        ids = [f"{prefix}{i}" for i in range(start, start + count)]
        self.change(
            summary(node_id, macs=[mac_of(cell_no, start + i)], **fields)
            for i, node_id in enumerate(ids)
        )
        return ids

    # -- serving ----------------------------------------------------------------------------

    def _updates_since(self, since: int) -> list[inventory_service_pb2.InventoryUpdate]:
        first = self.journal[0][0] if self.journal else self.revision + 1
        cell = f"cells/{self.cell}"
        if since == 0 or since > self.revision or since < first - 1:
            nodes = list(self.nodes.values())
            parts = [nodes[i : i + self.chunk] for i in range(0, len(nodes), self.chunk)] or [[]]
            return [
                inventory_service_pb2.InventoryUpdate(
                    cell=cell,
                    revision=self.revision,
                    reset=i == 0,
                    upserts=part,
                    snapshot_complete=i == len(parts) - 1,
                    version=self.version,
                )
                for i, part in enumerate(parts)
            ]
        return [
            inventory_service_pb2.InventoryUpdate(
                cell=cell, revision=rev, upserts=ups, deleted=dels, version=self.version
            )
            for rev, ups, dels in self.journal
            if rev > since
        ]

    def claim(
        self, request: allocation_service_pb2.CreateAllocationRequest
    ) -> allocation_service_pb2.Allocation | None:
        want = request.allocation
        required, forbidden = set(want.required_traits), set(want.forbidden_traits)
        for node_id in sorted(self.nodes):
            s = self.nodes[node_id]
            traits = set(s.traits)
            if (
                s.resource_class == want.resource_class
                and s.provision_state == AVAILABLE
                and not s.maintenance
                and not s.allocation
                and required <= traits
                and not forbidden & traits
            ):
                name = f"cells/{self.cell}/allocations/a{next(self._ids)}"
                claimed = inventory_service_pb2.NodeSummary()
                claimed.CopyFrom(s)
                claimed.allocation = name
                self.change([claimed])
                alloc = allocation_service_pb2.Allocation()
                alloc.CopyFrom(want)
                alloc.name = name
                alloc.node = f"cells/{self.cell}/nodes/{node_id}"
                self.allocations[name] = alloc
                return alloc
        return None


class _Inventory(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, leaf: FakeLeaf) -> None:
        self.leaf = leaf

    async def WatchInventory(self, request: Any, context: Any) -> Any:
        leaf = self.leaf
        leaf.watch_requests.append(request.since_revision)
        queue: asyncio.Queue[inventory_service_pb2.InventoryUpdate] = asyncio.Queue()
        leaf._queues.add(queue)
        try:
            for update in leaf._updates_since(request.since_revision):
                yield update
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), leaf.heartbeat)
                except TimeoutError:
                    update = inventory_service_pb2.InventoryUpdate(
                        cell=f"cells/{leaf.cell}", revision=leaf.revision, version=leaf.version
                    )
                yield update
        finally:
            leaf._queues.discard(queue)


class _Allocations(allocation_service_pb2_grpc.AllocationServiceServicer):
    def __init__(self, leaf: FakeLeaf) -> None:
        self.leaf = leaf

    async def CreateAllocation(self, request: Any, context: Any) -> Any:
        leaf = self.leaf
        leaf.create_calls += 1
        if leaf.claim_delay:
            await asyncio.sleep(leaf.claim_delay)
        if request.parent != f"cells/{leaf.cell}":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"parent {request.parent}")
        if leaf.create_error is not None:
            await context.abort(*leaf.create_error)
        alloc = leaf.claim(request)
        if alloc is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no available node")
        return alloc

    async def GetAllocation(self, request: Any, context: Any) -> Any:
        alloc = self.leaf.allocations.get(request.name)
        if alloc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return alloc

    async def DeleteAllocation(self, request: Any, context: Any) -> Any:
        leaf = self.leaf
        alloc = leaf.allocations.pop(request.name, None)
        if alloc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        node_id = alloc.node.rsplit("/", 1)[1]
        freed = inventory_service_pb2.NodeSummary()
        freed.CopyFrom(leaf.nodes[node_id])
        freed.allocation = ""
        leaf.change([freed])
        return empty_pb2.Empty()


@dataclass(frozen=True)
class Info:
    name: str
    endpoint: str
    version: str = ""


class FakeRegistry:
    """Implements the registry protocol of top_cell.registry with a settable membership."""

    def __init__(self, members: dict[str, str], *, static: bool = True) -> None:
        self._static = static
        self._members = {n: Info(n, e) for n, e in members.items()}
        self._subscribers: list[Callable[[dict[str, Info]], None]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def cells(self) -> dict[str, Info]:
        return dict(self._members)

    def subscribe(self, callback: Callable[[dict[str, Info]], None]) -> None:
        self._subscribers.append(callback)
        callback(dict(self._members))

    @property
    def static(self) -> bool:
        return self._static

    def set(self, members: dict[str, str]) -> None:
        self._members = {n: Info(n, e) for n, e in members.items()}
        for callback in self._subscribers:
            callback(dict(self._members))


@dataclass
class Top:
    """A top cell serving CellService, CapacityService and AllocationService."""

    parts: InventoryParts
    server: grpc.aio.Server
    port: int
    channel: grpc.aio.Channel
    cells: Any = None
    capacity: Any = None
    allocations: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.parts.stop()

    async def get_capacity(self, parent: str = "cells/-", **fields: Any) -> Any:
        return await self.capacity.GetCapacity(
            capacity_service_pb2.GetCapacityRequest(parent=parent, **fields)
        )

    async def get_cell(self, cell: str) -> cell_service_pb2.Cell:
        reply: cell_service_pb2.Cell = await self.cells.GetCell(
            cell_service_pb2.GetCellRequest(name=f"cells/{cell}")
        )
        return reply


async def start_top(
    registry: FakeRegistry,
    db_url: str,
    *,
    directory: dict[str, float] | None = None,
    inventory: dict[str, float] | None = None,
) -> Top:
    parts = await start_inventory(
        registry,
        db_url,
        directory_options={"health_interval": 0.3, "down_after": 1.0, **(directory or {})},
        inventory_options={"idle_timeout": 2.0, "retry_max": 0.5, **(inventory or {})},
    )
    d, inv = parts.directory, parts.inventory
    bindings = [
        ServiceBinding(
            "rackcells.v1.CellService",
            CellServicer(d, inv),
            cell_service_pb2_grpc.add_CellServiceServicer_to_server,
        ),
        ServiceBinding(
            "rackcells.v1.CapacityService",
            CapacityServicer(d, inv),
            capacity_service_pb2_grpc.add_CapacityServiceServicer_to_server,
        ),
        ServiceBinding(
            "rackcells.v1.AllocationService",
            AllocationServicer(d, inv),
            allocation_service_pb2_grpc.add_AllocationServiceServicer_to_server,
        ),
    ]
    server, port, _ = build_server("127.0.0.1:0", bindings)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Top(
        parts,
        server,
        port,
        channel,
        cells=cell_service_pb2_grpc.CellServiceStub(channel),
        capacity=capacity_service_pb2_grpc.CapacityServiceStub(channel),
        allocations=allocation_service_pb2_grpc.AllocationServiceStub(channel),
    )


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 5.0,
    what: str = "condition",
) -> float:
    """Polls ``check`` until true; returns how long it took; fails after ``timeout``."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())
