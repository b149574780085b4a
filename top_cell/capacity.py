"""Capacity figures: the counters behind them and the answer to ``GetCapacity``.

A parent scheduler asks "how many nodes of class X with traits Y are free, and where?" many
times a second, so the answer must not walk 40,000 nodes. :class:`CountTable` holds, for one
cell, the counters of every (resource class, trait set) group, updated incrementally as node
summaries change, plus a per-class total and, per trait, the groups that have it. A query
without traits reads the class totals; one with traits intersects the groups of its required
traits, removes those of its forbidden ones and sums what is left in one C-level ``sum()``.
Nodes of a rack share a handful of trait sets, so this is microseconds; even with a different
trait set on every node it stays in the low milliseconds for 40,000 nodes.

The categories overlap on purpose (an allocated node may also be active); their definitions
are those of ``CapacityCounts`` in ``capacity_service.proto`` and live in :func:`contribution`.

Figures come from the derived inventory only; leaves are never asked. Each cell's figures carry
the revision they reflect and their age, and a cell the top has never heard from is listed in
``unreachable`` rather than reported as empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2, timestamp_pb2

from common.capacity import CapacityQuery, parse_query
from common.errors import NotFound
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
    "pack",
    "packed_contribution",
    "parse_query",
    "unpack",
]

FIELDS = ("total", "available", "allocated", "deploying", "active", "failed", "maintenance")
AVAILABLE = 1

_PS = node_pb2.ProvisionState
_DEPLOYING = frozenset({_PS.PROVISION_STATE_DEPLOYING, _PS.PROVISION_STATE_WAIT_CALL_BACK})
_FAILED = frozenset(
    {
        _PS.PROVISION_STATE_CLEAN_FAILED,
        _PS.PROVISION_STATE_DEPLOY_FAILED,
        _PS.PROVISION_STATE_ERROR,
    }
)


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


# The counters of a group are packed into one int, _BITS bits per field, so that summing the
# groups a query matches is one C-level sum() and a group costs one small int of memory. A
# field never goes negative (every removal undoes an earlier addition), so fields never borrow.
_BITS = 32
_MASK = (1 << _BITS) - 1


def pack(counts: Sequence[int]) -> int:
    return sum(value << (i * _BITS) for i, value in enumerate(counts))


def unpack(packed: int) -> list[int]:
    return [(packed >> (i * _BITS)) & _MASK for i in range(len(FIELDS))]


@lru_cache(maxsize=256)
def packed_contribution(provision_state: int, maintenance: bool, allocated: bool) -> int:
    return pack(contribution(provision_state, maintenance, allocated))


class _ClassGroups:
    """The groups of one resource class: trait set → packed counters, the class total, and
    trait → the trait sets containing it (so a trait filter is a few set operations even when
    every node has its own trait set)."""

    __slots__ = ("by_trait", "groups", "total")

    def __init__(self) -> None:
        self.groups: dict[frozenset[str], int] = {}
        self.by_trait: dict[str, set[frozenset[str]]] = {}
        self.total = 0

    def matching(self, req: frozenset[str], forb: frozenset[str]) -> int:
        if not req and not forb:
            return self.total
        groups = self.groups
        if not req:
            # Everything minus the groups that have a forbidden trait.
            bad: set[frozenset[str]] = set()
            for t in forb:
                bad.update(self.by_trait.get(t, ()))
            return self.total - sum(map(groups.__getitem__, bad))
        sets = [self.by_trait.get(t) for t in req]
        if any(s is None for s in sets):
            return 0
        ordered = sorted((s for s in sets if s is not None), key=len)
        keys = ordered[0].intersection(*ordered[1:])
        for t in forb:
            holders = self.by_trait.get(t)
            if holders:
                keys -= holders
        return sum(map(groups.__getitem__, keys))


class CountTable:
    """One cell's counters by resource class and trait set, maintained node by node."""

    __slots__ = ("_by_class",)

    def __init__(self) -> None:
        self._by_class: dict[str, _ClassGroups] = {}

    def add(self, resource_class: str, traits: frozenset[str], delta: int) -> None:
        c = self._by_class.get(resource_class)
        if c is None:
            c = self._by_class[resource_class] = _ClassGroups()
        old = c.groups.get(traits)
        if old is None:
            c.groups[traits] = delta
            for t in traits:
                c.by_trait.setdefault(t, set()).add(traits)
        else:
            c.groups[traits] = old + delta
        c.total += delta

    def remove(self, resource_class: str, traits: frozenset[str], delta: int) -> None:
        c = self._by_class[resource_class]
        left = c.groups[traits] - delta
        c.total -= delta
        if left & _MASK:
            c.groups[traits] = left
            return
        # No node left in the group (the total field is 0): drop it, so that churning trait
        # sets cannot grow the table.
        del c.groups[traits]
        for t in traits:
            holders = c.by_trait[t]
            holders.discard(traits)
            if not holders:
                del c.by_trait[t]
        if not c.groups:
            del self._by_class[resource_class]

    def classes(self) -> list[str]:
        return sorted(self._by_class)

    def groups(self) -> int:
        """How many (class, trait set) groups there are: the cost of a filtered query."""
        return sum(len(c.groups) for c in self._by_class.values())

    def count(self, query: CapacityQuery) -> list[int]:
        """The summed counters of every node the query matches."""
        if query.resource_class:
            one = self._by_class.get(query.resource_class)
            classes: Iterable[_ClassGroups] = () if one is None else (one,)
        else:
            classes = self._by_class.values()
        req, forb = query.required, query.forbidden
        return unpack(sum(c.matching(req, forb) for c in classes))


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
