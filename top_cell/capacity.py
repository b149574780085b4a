"""Capacity figures: the counters behind them and the answer to ``GetCapacity``.

A parent scheduler asks "how many nodes of class X with traits Y are free, and where?" many
times a second, so the answer must not walk 40,000 nodes. :class:`CountTable` holds, for one
cell, a list of counters per (resource class, trait set), updated incrementally as node
summaries change. Nodes of a rack share a handful of trait sets, so a query with trait filters
sums a few counter lists; even when every node has its own trait set the walk is over C-level
set comparisons and stays in the low milliseconds.

The categories overlap on purpose (an allocated node may also be active); their definitions
are those of ``CapacityCounts`` in ``capacity_service.proto`` and live in :func:`contribution`.

Figures come from the derived inventory only; leaves are never asked. Each cell's figures carry
the revision they reflect and their age, and a cell the top has never heard from is listed in
``unreachable`` rather than reported as empty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2, timestamp_pb2

from common.errors import FieldViolation, InvalidArgument, NotFound
from common.names import ALL_CELLS, parse_cell
from rackcells.v1 import capacity_service_pb2, node_pb2

if TYPE_CHECKING:
    from top_cell.cells import CellDirectory
    from top_cell.inventory import Inventory

__all__ = [
    "FIELDS",
    "CapacityQuery",
    "CountTable",
    "capacity_report",
    "cell_summary",
    "contribution",
    "counts_message",
    "parse_query",
]

FIELDS = ("total", "available", "allocated", "deploying", "active", "failed", "maintenance")
TOTAL, AVAILABLE = 0, 1

_PS = node_pb2.ProvisionState
_DEPLOYING = frozenset({_PS.PROVISION_STATE_DEPLOYING, _PS.PROVISION_STATE_WAIT_CALL_BACK})
_FAILED = frozenset(
    {
        _PS.PROVISION_STATE_CLEAN_FAILED,
        _PS.PROVISION_STATE_DEPLOY_FAILED,
        _PS.PROVISION_STATE_ERROR,
    }
)
_RESOURCE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
_TRAIT = re.compile(r"^[A-Z0-9_]{1,255}$")


@lru_cache(maxsize=256)
def contribution(provision_state: int, maintenance: bool, allocated: bool) -> tuple[int, ...]:
    """What one node adds to each counter of :data:`FIELDS`."""
    return (
        1,
        int(provision_state == _PS.PROVISION_STATE_AVAILABLE and not maintenance and not allocated),
        int(allocated),
        int(provision_state in _DEPLOYING),
        int(provision_state == _PS.PROVISION_STATE_ACTIVE),
        int(provision_state in _FAILED),
        int(maintenance),
    )


@dataclass(frozen=True)
class CapacityQuery:
    """A validated filter: resource class (empty: every class) and trait conditions."""

    resource_class: str = ""
    required: frozenset[str] = frozenset()
    forbidden: frozenset[str] = frozenset()

    def describe(self) -> str:
        text = f"class {self.resource_class or '(any)'}"
        if self.required:
            text += f" with traits {', '.join(sorted(self.required))}"
        if self.forbidden:
            text += f" without traits {', '.join(sorted(self.forbidden))}"
        return text


def parse_query(
    resource_class: str,
    required: Sequence[str],
    forbidden: Sequence[str],
    *,
    prefix: str = "",
    class_required: bool = False,
) -> CapacityQuery:
    """Checks a filter as the caller sent it; every bad field is named (``prefix`` + field)."""
    bad: list[FieldViolation] = []
    if not resource_class:
        if class_required:
            bad.append(FieldViolation(f"{prefix}resource_class", "is required"))
    elif not _RESOURCE_CLASS.match(resource_class):
        bad.append(
            FieldViolation(
                f"{prefix}resource_class",
                f"{resource_class!r} must match {_RESOURCE_CLASS.pattern}",
            )
        )
    for field, traits in (("required_traits", required), ("forbidden_traits", forbidden)):
        for i, trait in enumerate(traits):
            if not _TRAIT.match(trait):
                bad.append(
                    FieldViolation(
                        f"{prefix}{field}[{i}]",
                        f"{trait!r} is not a trait (upper case letters, digits and _)",
                    )
                )
    both = sorted(set(required) & set(forbidden))
    if both:
        bad.append(
            FieldViolation(
                f"{prefix}forbidden_traits", f"{', '.join(both)} also in required_traits"
            )
        )
    if bad:
        raise InvalidArgument.of(bad)
    return CapacityQuery(resource_class, frozenset(required), frozenset(forbidden))


class CountTable:
    """One cell's counters: resource class → trait set → a list of len(FIELDS) counts."""

    __slots__ = ("_by_class",)

    def __init__(self) -> None:
        self._by_class: dict[str, dict[frozenset[str], list[int]]] = {}

    def add(self, resource_class: str, traits: frozenset[str], delta: Sequence[int]) -> None:
        groups = self._by_class.get(resource_class)
        if groups is None:
            groups = self._by_class[resource_class] = {}
        counts = groups.get(traits)
        if counts is None:
            groups[traits] = list(delta)
            return
        for i, d in enumerate(delta):
            counts[i] += d

    def remove(self, resource_class: str, traits: frozenset[str], delta: Sequence[int]) -> None:
        groups = self._by_class[resource_class]
        counts = groups[traits]
        for i, d in enumerate(delta):
            counts[i] -= d
        if counts[TOTAL] == 0:
            # Drop empty groups so that churning trait sets cannot grow the table.
            del groups[traits]
            if not groups:
                del self._by_class[resource_class]

    def classes(self) -> list[str]:
        return sorted(self._by_class)

    def count(self, query: CapacityQuery) -> list[int]:
        """The sums of the counters of every group the query matches."""
        if query.resource_class:
            one = self._by_class.get(query.resource_class)
            tables: Iterable[dict[frozenset[str], list[int]]] = () if one is None else (one,)
        else:
            tables = self._by_class.values()
        req, forb = query.required, query.forbidden
        picked: list[list[int]] = []
        for groups in tables:
            if not req and not forb:
                picked.extend(groups.values())
            elif not forb:
                picked.extend([c for t, c in groups.items() if req <= t])
            else:
                picked.extend([c for t, c in groups.items() if req <= t and forb.isdisjoint(t)])
        if not picked:
            return [0] * len(FIELDS)
        if len(picked) == 1:
            return list(picked[0])
        return [sum(column) for column in zip(*picked, strict=True)]


def counts_message(counts: Sequence[int]) -> capacity_service_pb2.CapacityCounts:
    return capacity_service_pb2.CapacityCounts(**dict(zip(FIELDS, counts, strict=True)))


def cell_summary(inventory: Inventory, cell: str) -> capacity_service_pb2.CapacityCounts:
    """All classes of one cell together (the ``capacity`` of a ``Cell``)."""
    return counts_message(inventory.count(cell, CapacityQuery()))


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def capacity_report(
    directory: CellDirectory,
    inventory: Inventory,
    request: capacity_service_pb2.GetCapacityRequest,
) -> capacity_service_pb2.GetCapacityResponse:
    """Answers GetCapacity from the derived inventory, without asking any leaf.

    ``totals`` is the sum over the listed cells, stale ones included; ``schedulable`` says per
    cell whether its available nodes can be claimed now (UP and not disabled).
    """
    cell = parse_cell(request.parent, "parent", allow_all=True)
    query = parse_query(request.resource_class, request.required_traits, request.forbidden_traits)
    if cell == ALL_CELLS:
        scope = directory.names()
    elif directory.known(cell):
        scope = [cell]
    else:
        raise NotFound(f"cell {cell} is not known", metadata={"field": "parent"})
    now = time.time()
    reply = capacity_service_pb2.GetCapacityResponse()
    totals = [0] * len(FIELDS)
    for name in scope:
        as_of = inventory.as_of(name)
        if as_of is None:
            reply.unreachable.append(f"cells/{name}")
            continue
        counts = inventory.count(name, query)
        for i, value in enumerate(counts):
            totals[i] += value
        age = duration_pb2.Duration()
        age.FromNanoseconds(max(0, int((now - as_of) * 1e9)))
        reply.cells.append(
            capacity_service_pb2.CellCapacity(
                cell=f"cells/{name}",
                counts=counts_message(counts),
                generation=inventory.generation(name),
                as_of=_timestamp(as_of),
                age=age,
                schedulable=directory.schedulable(name),
            )
        )
    reply.totals.CopyFrom(counts_message(totals))
    return reply
