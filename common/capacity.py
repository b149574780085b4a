"""How a node counts in capacity figures: one definition for the leaf and the top cell.

The leaf counts from its database and the top from its derived inventory; both use
:func:`buckets` so that "available" means the same thing everywhere: available, not in
maintenance, not claimed by an allocation — exactly what CreateAllocation can claim.
"""

from __future__ import annotations

from collections.abc import Iterable

from rackcells.v1 import capacity_service_pb2

__all__ = ["FAILED_STATES", "add", "buckets", "claimable"]

FAILED_STATES = frozenset({"CLEAN_FAILED", "DEPLOY_FAILED", "ERROR"})
DEPLOYING_STATES = frozenset({"DEPLOYING", "WAIT_CALL_BACK"})


def claimable(provision_state: str, maintenance: bool, allocated: bool) -> bool:
    """Whether an allocation may claim a node in this condition."""
    return provision_state == "AVAILABLE" and not maintenance and not allocated


def buckets(provision_state: str, maintenance: bool, allocated: bool) -> tuple[str, ...]:
    """The CapacityCounts fields a node adds one to (``total`` always)."""
    names = ["total"]
    if claimable(provision_state, maintenance, allocated):
        names.append("available")
    if allocated:
        names.append("allocated")
    if provision_state in DEPLOYING_STATES:
        names.append("deploying")
    elif provision_state == "ACTIVE":
        names.append("active")
    elif provision_state in FAILED_STATES:
        names.append("failed")
    if maintenance:
        names.append("maintenance")
    return tuple(names)


def add(counts: capacity_service_pb2.CapacityCounts, names: Iterable[str], n: int = 1) -> None:
    """Adds ``n`` to each named field of ``counts``."""
    for name in names:
        setattr(counts, name, getattr(counts, name) + n)
