"""Claims through the top cell: pick a cell by policy, claim at its leaf, try the next on a miss.

The leaf is the only place a claim can be atomic (one conditional update in its database), so
the top never decides *which node*; it decides *which cell to ask first*. Candidates are the
cells that are UP, not disabled, and whose derived inventory shows at least one available
matching node. SPREAD asks the cell with the most such nodes first (spreads load and failure
domains), PACK the one with the fewest (keeps whole racks free); ties go by name so the order
is deterministic.

The inventory can be a moment behind the leaves, so a cell that turns out to have nothing left
(RESOURCE_EXHAUSTED), refuses (FAILED_PRECONDITION) or cannot be reached (UNAVAILABLE) is
skipped and the next one asked, all within the caller's deadline. Any other status of a leaf is
the caller's answer and comes back unchanged. Only ``UNAVAILABLE`` raised before a request
left is retried elsewhere without doubt; a claim that timed out is not retried, because the
leaf may have granted it and a second claim would strand a node.

On success the node is counted as allocated at once (its stream confirms it shortly), so that
a burst of claims does not keep choosing a cell that just ran dry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import empty_pb2

from common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RackcellsError,
)
from common.names import ALL_CELLS, label_problem, parse_cell
from rackcells.v1 import allocation_service_pb2, allocation_service_pb2_grpc
from top_cell.capacity import AVAILABLE, CapacityQuery, parse_query
from top_cell.cells import CellDirectory
from top_cell.inventory import Inventory

__all__ = [
    "RETRY_CODES",
    "Allocator",
    "LeafFailed",
    "NoCapacity",
    "parse_allocation_name",
    "rank_cells",
]

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]
_POLICY = allocation_service_pb2.AllocationPolicy

RETRY_CODES = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
    }
)


class NoCapacity(RackcellsError):
    """No cell could grant the claim."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class LeafFailed(Exception):
    """A leaf answered with an error that is the caller's answer; relay it unchanged."""

    def __init__(self, cell: str, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"cell {cell}: {error.code().name}: {error.details()}")
        self.cell = cell
        self.error = error


def rank_cells(
    available: Mapping[str, int], policy: allocation_service_pb2.AllocationPolicy.ValueType
) -> list[str]:
    """The cells with something available, in the order the policy asks them."""
    cells = [c for c, n in available.items() if n > 0]
    if policy == _POLICY.ALLOCATION_POLICY_PACK:
        return sorted(cells, key=lambda c: (available[c], c))
    return sorted(cells, key=lambda c: (-available[c], c))


def parse_allocation_name(name: str, field: str = "name") -> tuple[str, str]:
    """(cell, allocation id) of ``cells/{cell}/allocations/{id}``."""
    if not name:
        raise InvalidArgument.field(field, "is required (cells/{cell}/allocations/{allocation})")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "cells" or parts[2] != "allocations" or not parts[3]:
        raise InvalidArgument.field(
            field, f"{name!r} is not of the form cells/{{cell}}/allocations/{{allocation}}"
        )
    problem = label_problem(parts[1])
    if problem:
        raise InvalidArgument.field(field, f"cell id {problem}")
    return parts[1], parts[3]


class Allocator:
    """CreateAllocation / GetAllocation / DeleteAllocation as the top cell serves them.

    ``attempt_timeout`` bounds one leaf call when the caller set no deadline, so that one hung
    leaf cannot hold a claim forever.
    """

    def __init__(
        self, directory: CellDirectory, inventory: Inventory, *, attempt_timeout: float = 10.0
    ) -> None:
        self._directory = directory
        self._inventory = inventory
        self._attempt_timeout = attempt_timeout

    def candidates(
        self, query: CapacityQuery, policy: allocation_service_pb2.AllocationPolicy.ValueType
    ) -> list[str]:
        """Schedulable cells whose inventory shows an available matching node, policy order."""
        available = {
            cell: self._inventory.count(cell, query)[AVAILABLE]
            for cell in self._directory.names()
            if self._directory.schedulable(cell)
        }
        return rank_cells(available, policy)

    async def create(
        self,
        request: allocation_service_pb2.CreateAllocationRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> allocation_service_pb2.Allocation:
        """Claims a node. A leaf's own error is raised as :class:`LeafFailed`."""
        cell = parse_cell(request.parent, "parent", allow_all=True)
        if not request.HasField("allocation"):
            raise InvalidArgument.field("allocation", "is required")
        alloc = request.allocation
        query = parse_query(
            alloc.resource_class,
            alloc.required_traits,
            alloc.forbidden_traits,
            prefix="allocation.",
            class_required=True,
        )
        if request.policy not in _POLICY.values():
            raise InvalidArgument.field("policy", f"{request.policy} is not an AllocationPolicy")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._attempt_timeout if timeout is None else timeout)
        if cell != ALL_CELLS:
            if not self._directory.known(cell):
                raise NotFound(f"cell {cell} is not known", metadata={"field": "parent"})
            disabled, reason = self._directory.scheduling(cell)
            if disabled:
                raise FailedPrecondition(
                    f"cell {cell} takes no new allocations: {reason or 'scheduling disabled'}"
                )
            try:
                return await self._claim(cell, alloc, deadline - loop.time(), metadata)
            except grpc.aio.AioRpcError as exc:
                raise LeafFailed(cell, exc) from None
        tried: list[str] = []
        for cell in self.candidates(query, request.policy):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"no claim granted before the deadline (tried {'; '.join(tried)})"
                )
            try:
                return await self._claim(cell, alloc, remaining, metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise LeafFailed(cell, exc) from None
                tried.append(f"{cell}: {exc.code().name}")
            except RackcellsError as exc:  # the directory says the cell is down
                tried.append(f"{cell}: {exc.code.name}")
        note = f" (tried {'; '.join(tried)})" if tried else ""
        raise NoCapacity(
            f"no cell has an available node of {query.describe()}{note}",
            metadata={"resource_class": query.resource_class, "tried": str(len(tried))},
        )

    async def _claim(
        self,
        cell: str,
        alloc: allocation_service_pb2.Allocation,
        timeout: float,
        metadata: Metadata,
    ) -> allocation_service_pb2.Allocation:
        stub = allocation_service_pb2_grpc.AllocationServiceStub(self._directory.channel(cell))
        granted = await stub.CreateAllocation(
            allocation_service_pb2.CreateAllocationRequest(
                parent=f"cells/{cell}", allocation=alloc
            ),
            timeout=max(timeout, 0.001),
            metadata=metadata,
        )
        node = granted.node.split("/")
        if len(node) == 4 and node[0] == "cells" and node[1] == cell and node[2] == "nodes":
            self._inventory.note_allocation(cell, node[3], granted.name)
        else:
            log.warning("cell %s granted %s with an unexpected node %r", cell, granted.name, node)
        return granted

    async def get(
        self, name: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> allocation_service_pb2.Allocation:
        """Forwards to the cell named in ``name`` (scheduling-disabled cells too)."""
        cell, _ = parse_allocation_name(name)
        stub = allocation_service_pb2_grpc.AllocationServiceStub(self._directory.channel(cell))
        try:
            return await stub.GetAllocation(
                allocation_service_pb2.GetAllocationRequest(name=name),
                timeout=self._attempt_timeout if timeout is None else timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise LeafFailed(cell, exc) from None

    async def delete(
        self, name: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> empty_pb2.Empty:
        """Forwards to the cell named in ``name``; its stream reports the freed node."""
        cell, _ = parse_allocation_name(name)
        stub = allocation_service_pb2_grpc.AllocationServiceStub(self._directory.channel(cell))
        try:
            return await stub.DeleteAllocation(
                allocation_service_pb2.DeleteAllocationRequest(name=name),
                timeout=self._attempt_timeout if timeout is None else timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise LeafFailed(cell, exc) from None
