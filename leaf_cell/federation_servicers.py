"""The leaf's side of the federation APIs: inventory stream, allocations, capacity.

Thin handlers: the work is in :mod:`leaf_cell.inventory_stream`, :mod:`leaf_cell.allocations`
and :mod:`leaf_cell.capacity`. A leaf serves Allocation and Capacity for its own cell with the
same semantics the top cell offers for all cells.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from leaf_cell.allocations import AllocationStore
from leaf_cell.capacity import capacity_of
from leaf_cell.conductor import Conductor
from leaf_cell.events import EventBus
from leaf_cell.inventory_stream import watch_inventory
from rackcells.v1 import (
    allocation_service_pb2,
    allocation_service_pb2_grpc,
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
)

__all__ = ["AllocationServicer", "CapacityServicer", "InventoryServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, conductor: Conductor, bus: EventBus, version: str) -> None:
        self._c = conductor
        self._bus = bus
        self._version = version

    async def WatchInventory(
        self, request: inventory_service_pb2.WatchInventoryRequest, context: Ctx
    ) -> AsyncIterator[inventory_service_pb2.InventoryUpdate]:
        async for update in watch_inventory(
            request,
            self._c.nodes.cell,
            self._c.nodes.engine,
            self._bus,
            self._c.db,
            version=self._version,
        ):
            yield update


class AllocationServicer(allocation_service_pb2_grpc.AllocationServiceServicer):
    def __init__(self, conductor: Conductor, store: AllocationStore) -> None:
        self._c = conductor
        self._store = store

    async def CreateAllocation(
        self, request: allocation_service_pb2.CreateAllocationRequest, context: Ctx
    ) -> allocation_service_pb2.Allocation:
        return await self._c.db(self._store.create, request)

    async def GetAllocation(
        self, request: allocation_service_pb2.GetAllocationRequest, context: Ctx
    ) -> allocation_service_pb2.Allocation:
        return await self._c.db(self._store.get, request.name)

    async def DeleteAllocation(
        self, request: allocation_service_pb2.DeleteAllocationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._c.db(self._store.delete, request.name)
        return empty_pb2.Empty()


class CapacityServicer(capacity_service_pb2_grpc.CapacityServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    async def GetCapacity(
        self, request: capacity_service_pb2.GetCapacityRequest, context: Ctx
    ) -> capacity_service_pb2.GetCapacityResponse:
        return await self._c.db(capacity_of, self._c.nodes.engine, self._c.nodes.cell, request)
