"""``rackcells capacity``: how many nodes of a kind exist and are free, per cell and in total.

Through the top cell the figures come from the inventory the leaves stream to it, so each
cell's row says how old its figures are (AGE) and which inventory revision they reflect
(GENERATION); a cell the top has never heard from has no row and is named on stderr instead
of showing as empty, because "no nodes" and "no idea" call for different actions. At a leaf
the answer covers that leaf's own cell.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rackcells.cli.client import Session
from rackcells.cli.output import format_span, message_to_dict, print_json, render_table, warn
from rackcells.v1 import capacity_service_pb2

__all__ = [
    "CAPACITY_HEADERS",
    "add_match_arguments",
    "cmd_capacity",
    "counts_line",
    "describe_match",
    "register",
    "render_capacity",
    "short_cell",
]

CAPACITY_HEADERS = (
    "CELL",
    "TOTAL",
    "AVAILABLE",
    "ALLOCATED",
    "DEPLOYING",
    "ACTIVE",
    "FAILED",
    "MAINT",
    "GENERATION",
    "AGE",
    "SCHEDULABLE",
)


def short_cell(name: str) -> str:
    """``cells/rack-1`` → ``rack-1``: every row is a cell, the prefix only takes space."""
    return name.removeprefix("cells/")


def counts_line(counts: capacity_service_pb2.CapacityCounts) -> str:
    """``10 nodes: 6 available, 2 allocated, …`` for totals and ``cell show``."""
    return (
        f"{counts.total} node{'' if counts.total == 1 else 's'}: "
        f"{counts.available} available, {counts.allocated} allocated, "
        f"{counts.deploying} deploying, {counts.active} active, {counts.failed} failed, "
        f"{counts.maintenance} in maintenance"
    )


def describe_match(resource_class: str, required: Sequence[str], forbidden: Sequence[str]) -> str:
    """The node selection in words, e.g. ``class gpu, with CUSTOM_A, without CUSTOM_B``."""
    parts = [f"class {resource_class}" if resource_class else "every class"]
    if required:
        parts.append("with " + ", ".join(required))
    if forbidden:
        parts.append("without " + ", ".join(forbidden))
    return ", ".join(parts)


def _row(cell: capacity_service_pb2.CellCapacity) -> list[str]:
    c = cell.counts
    return [
        short_cell(cell.cell),
        str(c.total),
        str(c.available),
        str(c.allocated),
        str(c.deploying),
        str(c.active),
        str(c.failed),
        str(c.maintenance),
        str(cell.generation),
        format_span(cell.age.ToTimedelta().total_seconds()),
        "yes" if cell.schedulable else "no",
    ]


def render_capacity(
    response: capacity_service_pb2.GetCapacityResponse, scope: str, selection: str
) -> str:
    """The totals line, a blank line, then one row per cell."""
    cells = len(response.cells)
    head = (
        f"{scope} ({selection}; {cells} cell{'' if cells == 1 else 's'}): "
        f"{counts_line(response.totals)}"
    )
    return head + "\n\n" + render_table(CAPACITY_HEADERS, (_row(c) for c in response.cells))


def cmd_capacity(session: Session, args: argparse.Namespace) -> int:
    """Counts the matching nodes of ``--cell``, or of every cell the endpoint knows."""
    parent = session.list_parent()
    response = session.capacity.GetCapacity(
        capacity_service_pb2.GetCapacityRequest(
            parent=parent,
            resource_class=args.resource_class or "",
            required_traits=args.trait,
            forbidden_traits=args.forbid_trait,
        ),
        timeout=session.timeout,
    )
    if response.unreachable:
        warn(
            f"{len(response.unreachable)} cell(s) have never reported and are not counted: "
            + ", ".join(response.unreachable)
        )
    if session.json:
        # Every count spelled out, even where the server left a whole message empty.
        shown = capacity_service_pb2.GetCapacityResponse()
        shown.CopyFrom(response)
        shown.totals.SetInParent()
        for cell in shown.cells:
            cell.counts.SetInParent()
        print_json(message_to_dict(shown, zeros=True))
        return 0
    scope = "all cells" if parent.endswith("/-") else parent
    selection = describe_match(args.resource_class or "", args.trait, args.forbid_trait)
    print(render_capacity(response, scope, selection))
    return 0


def add_match_arguments(parser: argparse.ArgumentParser, *, class_required: bool) -> None:
    """``--resource-class``, ``--trait`` and ``--forbid-trait``, shared with ``allocate``."""
    parser.add_argument(
        "--resource-class",
        metavar="RC",
        required=class_required,
        help="nodes of this resource class" + ("" if class_required else " (default: any)"),
    )
    parser.add_argument(
        "--trait",
        metavar="T",
        action="append",
        default=[],
        help="nodes that have this trait (repeat: all of them)",
    )
    parser.add_argument(
        "--forbid-trait",
        metavar="T",
        action="append",
        default=[],
        help="nodes that do not have this trait (repeat: none of them)",
    )


def register(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds ``rackcells capacity``."""
    capacity = groups.add_parser(
        "capacity",
        parents=parents,
        help="count matching nodes, in total and per cell",
        description="Count the nodes matching a resource class and traits, in total and per "
        "cell: how many are available to allocate, allocated, deploying, active, failed or in "
        "maintenance. Through the top cell every cell is counted (or --cell); at a leaf, its "
        "own cell.",
    )
    add_match_arguments(capacity, class_required=False)
    capacity.set_defaults(handler=cmd_capacity)
