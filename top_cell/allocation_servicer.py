"""AllocationService of the top cell: thin handlers over :class:`top_cell.allocation.Allocator`.

Each call carries the caller's remaining deadline and metadata (auth, trace context) to the
leaf; a leaf's own error status comes back to the caller unchanged, as the router relays it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from rackcells.v1 import allocation_service_pb2, allocation_service_pb2_grpc
from top_cell.allocation import Allocator, LeafFailed
from top_cell.cells import CellDirectory
from top_cell.inventory import Inventory
from top_cell.router import forward_metadata, relay_error

__all__ = ["AllocationServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class AllocationServicer(allocation_service_pb2_grpc.AllocationServiceServicer):
    def __init__(
        self, directory: CellDirectory, inventory: Inventory, *, attempt_timeout: float = 10.0
    ) -> None:
        self.allocator = Allocator(directory, inventory, attempt_timeout=attempt_timeout)

    async def CreateAllocation(
        self, request: allocation_service_pb2.CreateAllocationRequest, context: Ctx
    ) -> allocation_service_pb2.Allocation:
        try:
            return await self.allocator.create(
                request, timeout=context.time_remaining(), metadata=forward_metadata(context)
            )
        except LeafFailed as exc:
            await relay_error(context, exc.error, exc.cell)

    async def GetAllocation(
        self, request: allocation_service_pb2.GetAllocationRequest, context: Ctx
    ) -> allocation_service_pb2.Allocation:
        try:
            return await self.allocator.get(
                request.name, timeout=context.time_remaining(), metadata=forward_metadata(context)
            )
        except LeafFailed as exc:
            await relay_error(context, exc.error, exc.cell)

    async def DeleteAllocation(
        self, request: allocation_service_pb2.DeleteAllocationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        try:
            return await self.allocator.delete(
                request.name, timeout=context.time_remaining(), metadata=forward_metadata(context)
            )
        except LeafFailed as exc:
            await relay_error(context, exc.error, exc.cell)
