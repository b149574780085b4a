"""CellService: the leaf cells as the top cell sees them, and the operator's scheduling switch.

State, heartbeat and generation are observed (:mod:`top_cell.cells`, :mod:`top_cell.inventory`);
only ``scheduling_disabled`` and ``disabled_reason`` can be changed, and they are persisted
before the answer, so a restart of the top cell keeps a drained cell drained.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2

from common.errors import InvalidArgument, NotFound
from common.names import parse_cell
from rackcells.v1 import cell_service_pb2, cell_service_pb2_grpc
from top_cell.capacity import cell_summary
from top_cell.cells import CellDirectory
from top_cell.inventory import Inventory

__all__ = ["MUTABLE_PATHS", "CellServicer", "cell_message"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

MUTABLE_PATHS = ("scheduling_disabled", "disabled_reason")
MAX_REASON = 1024


def cell_message(
    directory: CellDirectory, inventory: Inventory, cell: str
) -> cell_service_pb2.Cell:
    """The ``Cell`` resource of a known cell."""
    disabled, reason = directory.scheduling(cell)
    message = cell_service_pb2.Cell(
        name=f"cells/{cell}",
        endpoint=directory.info(cell).endpoint,
        state=directory.state(cell),
        inventory_generation=inventory.generation(cell),
        capacity=cell_summary(inventory, cell),
        scheduling_disabled=disabled,
        disabled_reason=reason,
        version=directory.version(cell),
    )
    beat = directory.last_heartbeat(cell)
    if beat is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(beat * 1e9))
        message.last_heartbeat.CopyFrom(ts)
    return message


def _mask_paths(paths: list[str]) -> set[str]:
    result: set[str] = set()
    for path in paths:
        if path == "*":
            result.update(MUTABLE_PATHS)
        elif path in MUTABLE_PATHS:
            result.add(path)
        else:
            raise InvalidArgument.field(
                "update_mask", f"{path!r} cannot be updated (one of {', '.join(MUTABLE_PATHS)})"
            )
    if not result:
        raise InvalidArgument.field("update_mask", "is required: name the fields to change")
    return result


class CellServicer(cell_service_pb2_grpc.CellServiceServicer):
    def __init__(self, directory: CellDirectory, inventory: Inventory) -> None:
        self._directory = directory
        self._inventory = inventory

    def _known(self, name: str, field: str) -> str:
        cell = parse_cell(name, field)
        if not self._directory.known(cell):
            raise NotFound(f"cell {cell} is not known", metadata={"field": field})
        return cell

    async def ListCells(
        self, request: cell_service_pb2.ListCellsRequest, context: Ctx
    ) -> cell_service_pb2.ListCellsResponse:
        return cell_service_pb2.ListCellsResponse(
            cells=[
                cell_message(self._directory, self._inventory, c) for c in self._directory.names()
            ]
        )

    async def GetCell(
        self, request: cell_service_pb2.GetCellRequest, context: Ctx
    ) -> cell_service_pb2.Cell:
        cell = self._known(request.name, "name")
        return cell_message(self._directory, self._inventory, cell)

    async def UpdateCell(
        self, request: cell_service_pb2.UpdateCellRequest, context: Ctx
    ) -> cell_service_pb2.Cell:
        """Enabling scheduling clears the reason unless the same request sets one."""
        if not request.HasField("cell"):
            raise InvalidArgument.field("cell", "is required")
        paths = _mask_paths(list(request.update_mask.paths))
        given = request.cell
        if len(given.disabled_reason) > MAX_REASON:
            raise InvalidArgument.field(
                "cell.disabled_reason", f"must be at most {MAX_REASON} characters"
            )
        cell = self._known(given.name, "cell.name")
        disabled, reason = self._directory.scheduling(cell)
        if "scheduling_disabled" in paths:
            disabled = given.scheduling_disabled
            if not disabled:
                reason = ""
        if "disabled_reason" in paths:
            reason = given.disabled_reason
        await self._directory.set_scheduling(cell, disabled, reason)
        return cell_message(self._directory, self._inventory, cell)
