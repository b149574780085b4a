"""The leaf's own capacity figures, counted from its database with the shared definitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from google.protobuf import duration_pb2
from sqlalchemy import Engine, Table, func, select

from common import capacity
from common.errors import NotFound
from common.names import ALL_CELLS, parse_cell
from leaf_cell.allocations import match_conditions
from leaf_cell.convert import timestamp
from leaf_cell.db.models import EventRow, NodeRow
from rackcells.v1 import capacity_service_pb2

__all__ = ["capacity_of"]

_NODES = cast(Table, NodeRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)


def capacity_of(
    engine: Engine,
    cell: str,
    req: capacity_service_pb2.GetCapacityRequest,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> capacity_service_pb2.GetCapacityResponse:
    parent = parse_cell(req.parent, allow_all=True)
    if parent not in (cell, ALL_CELLS):
        raise NotFound(f"cell {parent} is not served here (this is cell {cell})")
    capacity.parse_query(req.resource_class, req.required_traits, req.forbidden_traits)
    conditions = match_conditions(req.resource_class, req.required_traits, req.forbidden_traits)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                _NODES.c.provision_state,
                _NODES.c.maintenance,
                _NODES.c.allocation != "",
                func.count(),
            )
            .where(*conditions)
            .group_by(_NODES.c.provision_state, _NODES.c.maintenance, _NODES.c.allocation != "")
        ).all()
        generation = int(conn.execute(select(func.max(_EVENTS.c.id))).scalar() or 0)
    counts = capacity_service_pb2.CapacityCounts()
    for state, maintenance, allocated, n in rows:
        capacity.add(counts, capacity.buckets(state, bool(maintenance), bool(allocated)), n)
    now = clock()
    return capacity_service_pb2.GetCapacityResponse(
        totals=counts,
        cells=[
            capacity_service_pb2.CellCapacity(
                cell=f"cells/{cell}",
                counts=counts,
                generation=generation,
                as_of=timestamp(now),
                age=duration_pb2.Duration(),
                schedulable=True,
            )
        ],
    )
