"""Allocations at the leaf: claim one matching available node atomically, for a scheduler.

The claim is a single conditional UPDATE of one candidate row (``… AND allocation = ''``), so
two claims can never take the same node: on SQLite writers are serialised; on PostgreSQL the
candidate is chosen with ``FOR UPDATE SKIP LOCKED``, so concurrent claims pick different rows
instead of queueing behind one. The node's ``allocation`` names the claim; releasing it clears
the name and leaves the node as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, delete, exists, insert, not_, select, update

from common.capacity import parse_query
from common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from common.names import ALL_CELLS, label_problem, parse_cell
from leaf_cell.convert import timestamp
from leaf_cell.db.models import AllocationRow, EventRow, NodeRow, TraitRow
from rackcells.v1 import allocation_service_pb2

__all__ = ["AllocationStore", "match_conditions"]

_NODES = cast(Table, NodeRow.__table__)
_TRAITS = cast(Table, TraitRow.__table__)
_ALLOCS = cast(Table, AllocationRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_ATTEMPTS = 20


def _now() -> datetime:
    return datetime.now(UTC)


def match_conditions(
    resource_class: str, required: Sequence[str], forbidden: Sequence[str]
) -> list[Any]:
    """WHERE clauses selecting nodes of ``resource_class`` (any if empty) with/without traits."""
    clauses: list[Any] = []
    if resource_class:
        clauses.append(_NODES.c.resource_class == resource_class)
    for trait in required:
        clauses.append(
            exists().where(and_(_TRAITS.c.node_pk == _NODES.c.id, _TRAITS.c.trait == trait))
        )
    for trait in forbidden:
        clauses.append(
            not_(exists().where(and_(_TRAITS.c.node_pk == _NODES.c.id, _TRAITS.c.trait == trait)))
        )
    return clauses


class AllocationStore:
    def __init__(
        self,
        engine: Engine,
        cell: str,
        clock: Callable[[], datetime] = _now,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self.cell = cell
        self._clock = clock
        self._on_events = on_events

    def _name(self, alloc_id: str) -> str:
        return f"cells/{self.cell}/allocations/{alloc_id}"

    def _parse(self, name: str) -> str:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "cells" or parts[2] != "allocations" or not parts[3]:
            raise InvalidArgument.field(
                "name", f"{name!r} is not of the form cells/{{cell}}/allocations/{{allocation}}"
            )
        problem = label_problem(parts[1])
        if problem:
            raise InvalidArgument.field("name", f"cell id {problem}")
        if parts[1] != self.cell:
            raise NotFound(f"cell {parts[1]} is not served here (this is cell {self.cell})")
        return parts[3]

    def _proto(self, row: Any) -> allocation_service_pb2.Allocation:
        return allocation_service_pb2.Allocation(
            name=self._name(row.id),
            resource_class=row.resource_class,
            required_traits=row.required_traits,
            forbidden_traits=row.forbidden_traits,
            node=f"cells/{self.cell}/nodes/{row.node_id}",
            create_time=timestamp(row.create_time),
        )

    def create(
        self, req: allocation_service_pb2.CreateAllocationRequest
    ) -> allocation_service_pb2.Allocation:
        cell = parse_cell(req.parent, allow_all=True)
        if cell not in (self.cell, ALL_CELLS):
            raise NotFound(f"cell {cell} is not served here (this is cell {self.cell})")
        # The same checks, in the same order, as the top cell makes (conformance).
        if not req.HasField("allocation"):
            raise InvalidArgument.field("allocation", "is required")
        if req.policy not in allocation_service_pb2.AllocationPolicy.values():
            raise InvalidArgument.field("policy", f"{req.policy} is not an AllocationPolicy")
        spec = req.allocation
        parse_query(
            spec.resource_class,
            spec.required_traits,
            spec.forbidden_traits,
            prefix="allocation.",
            class_required=True,
        )
        alloc_id = uuid.uuid4().hex
        name = self._name(alloc_id)
        now = self._clock()
        conditions = match_conditions(
            spec.resource_class, spec.required_traits, spec.forbidden_traits
        )
        for _ in range(_ATTEMPTS):
            with self._engine.begin() as conn:
                candidate = conn.execute(
                    select(_NODES.c.id, _NODES.c.node_id)
                    .where(
                        _NODES.c.provision_state == "AVAILABLE",
                        _NODES.c.maintenance.is_(False),
                        _NODES.c.allocation == "",
                        *conditions,
                    )
                    .order_by(_NODES.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).one_or_none()
                if candidate is None:
                    break
                claimed = conn.execute(
                    update(_NODES)
                    .where(_NODES.c.id == candidate.id, _NODES.c.allocation == "")
                    .values(allocation=name, revision=_NODES.c.revision + 1, update_time=now)
                ).rowcount
                if claimed != 1:
                    continue  # someone else won this row; try the next candidate
                row = {
                    "id": alloc_id,
                    "node_id": candidate.node_id,
                    "resource_class": spec.resource_class,
                    "required_traits": list(spec.required_traits),
                    "forbidden_traits": list(spec.forbidden_traits),
                    "create_time": now,
                }
                conn.execute(insert(_ALLOCS).values(row))
                conn.execute(
                    insert(_EVENTS).values(
                        node_id=candidate.node_id,
                        time=now,
                        kind="allocated",
                        detail=name,
                        phase="",
                        percent=0,
                    )
                )
            self._on_events()
            return self._proto(_Row(row))
        traits = ", ".join(spec.required_traits) or "none"
        raise ResourceExhausted(
            f"cell {self.cell} has no available node of class {spec.resource_class} with "
            f"traits {traits}"
        )

    def get(self, name: str) -> allocation_service_pb2.Allocation:
        alloc_id = self._parse(name)
        with self._engine.connect() as conn:
            row = conn.execute(select(_ALLOCS).where(_ALLOCS.c.id == alloc_id)).one_or_none()
        if row is None:
            raise NotFound(f"allocation {name} not found")
        return self._proto(row)

    def delete(self, name: str) -> None:
        alloc_id = self._parse(name)
        now = self._clock()
        with self._engine.begin() as conn:
            row = conn.execute(select(_ALLOCS).where(_ALLOCS.c.id == alloc_id)).one_or_none()
            if row is None:
                raise NotFound(f"allocation {name} not found")
            released = conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == row.node_id, _NODES.c.allocation == name)
                .values(allocation="", revision=_NODES.c.revision + 1, update_time=now)
            ).rowcount
            if released not in (0, 1):
                raise FailedPrecondition(f"allocation {name} is inconsistent")
            conn.execute(delete(_ALLOCS).where(_ALLOCS.c.id == alloc_id))
            conn.execute(
                insert(_EVENTS).values(
                    node_id=row.node_id, time=now, kind="released", detail=name, phase="", percent=0
                )
            )
        self._on_events()


class _Row:
    """Attribute access over a dict, so a just-inserted row converts like a fetched one."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
