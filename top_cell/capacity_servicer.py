"""CapacityService of the top cell: figures from the derived inventory, never from the leaves.

A parent scheduler may poll this often; the answer costs a few dictionary walks
(:mod:`top_cell.capacity`) and no network call, and says per cell how old its figures are.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from rackcells.v1 import capacity_service_pb2, capacity_service_pb2_grpc
from top_cell.capacity import capacity_report
from top_cell.cells import CellDirectory
from top_cell.inventory import Inventory

__all__ = ["CapacityServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class CapacityServicer(capacity_service_pb2_grpc.CapacityServiceServicer):
    def __init__(self, directory: CellDirectory, inventory: Inventory) -> None:
        self._directory = directory
        self._inventory = inventory

    async def GetCapacity(
        self, request: capacity_service_pb2.GetCapacityRequest, context: Ctx
    ) -> capacity_service_pb2.GetCapacityResponse:
        return capacity_report(self._directory, self._inventory, request)
