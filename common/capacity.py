"""How a node counts in capacity figures: one definition for the leaf and the top cell.

The leaf counts from its database and the top from its derived inventory; both use
:func:`buckets` so that "available" means the same thing everywhere: available, not in
maintenance, not claimed by an allocation — exactly what CreateAllocation can claim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.errors import FieldViolation, InvalidArgument
from rackcells.v1 import capacity_service_pb2

__all__ = ["FAILED_STATES", "CapacityQuery", "add", "buckets", "claimable", "parse_query"]

_RESOURCE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
_TRAIT = re.compile(r"^[A-Z0-9_]{1,255}$")

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
