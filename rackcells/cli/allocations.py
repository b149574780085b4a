"""``rackcells allocate`` and ``rackcells allocation show|delete``: claims on available nodes.

A claim is what a parent scheduler makes before it deploys: one available node of a resource
class (and traits) is set aside so that no one else can take it. Through the top cell without
``--cell`` the top picks the cell by policy and moves on to the next when one has run dry;
with ``--cell`` (or at a leaf) only that cell is asked. When nothing matches, the server's
RESOURCE_EXHAUSTED line is the answer and the exit status is 1, so a script can tell "full"
from "done" without parsing.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from rackcells.cli.capacity import add_match_arguments
from rackcells.cli.client import Session
from rackcells.cli.names import allocation_name
from rackcells.cli.output import format_time, message_to_dict, print_json, render_fields
from rackcells.v1 import allocation_service_pb2

__all__ = [
    "POLICIES",
    "cmd_allocate",
    "cmd_delete",
    "cmd_show",
    "register",
    "render_allocation",
]

POLICIES: dict[str, allocation_service_pb2.AllocationPolicy.ValueType] = {
    "spread": allocation_service_pb2.ALLOCATION_POLICY_SPREAD,
    "pack": allocation_service_pb2.ALLOCATION_POLICY_PACK,
}


def render_allocation(alloc: allocation_service_pb2.Allocation, now: datetime | None = None) -> str:
    """The ``allocation show`` layout."""
    return render_fields(
        [
            ("name", alloc.name),
            ("node", alloc.node),
            ("resource class", alloc.resource_class),
            ("required traits", "\n".join(alloc.required_traits)),
            ("forbidden traits", "\n".join(alloc.forbidden_traits)),
            ("created", format_time(alloc.create_time, now)),
        ]
    )


def cmd_allocate(session: Session, args: argparse.Namespace) -> int:
    """Claims one available matching node, in ``--cell`` or wherever the policy finds one."""
    request = allocation_service_pb2.CreateAllocationRequest(
        parent=session.list_parent(),
        allocation=allocation_service_pb2.Allocation(
            resource_class=args.resource_class,
            required_traits=args.trait,
            forbidden_traits=args.forbid_trait,
        ),
        policy=POLICIES.get(
            args.policy or "", allocation_service_pb2.ALLOCATION_POLICY_UNSPECIFIED
        ),
    )
    alloc = session.allocations.CreateAllocation(request, timeout=session.timeout)
    if session.json:
        print_json(message_to_dict(alloc))
    else:
        print(render_fields([("allocation", alloc.name), ("node", alloc.node)]))
    return 0


def cmd_show(session: Session, args: argparse.Namespace) -> int:
    """One allocation: the node it holds and what it asked for."""
    alloc = session.allocations.GetAllocation(
        allocation_service_pb2.GetAllocationRequest(name=allocation_name(args.name, session.cell)),
        timeout=session.timeout,
    )
    if session.json:
        print_json(message_to_dict(alloc))
    else:
        print(render_allocation(alloc))
    return 0


def cmd_delete(session: Session, args: argparse.Namespace) -> int:
    """Releases the claim; the node itself is left as it is."""
    name = allocation_name(args.name, session.cell)
    session.allocations.DeleteAllocation(
        allocation_service_pb2.DeleteAllocationRequest(name=name), timeout=session.timeout
    )
    if session.json:
        print_json({"name": name, "deleted": True})
    else:
        print(f"deleted {name}")
    return 0


def register(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds ``rackcells allocate`` and ``rackcells allocation``."""
    allocate = groups.add_parser(
        "allocate",
        parents=parents,
        help="claim an available node",
        description="Claim one available node of a resource class (and traits). Without "
        "--cell, the top cell chooses the cell by --policy and tries the next one when a cell "
        "has nothing left. Exits 1 with RESOURCE_EXHAUSTED when no node matches.",
    )
    add_match_arguments(allocate, class_required=True)
    allocate.add_argument(
        "--policy",
        choices=list(POLICIES),
        help="spread: the cell with the most matching nodes first (default); "
        "pack: the one with the fewest, keeping whole racks free",
    )
    allocate.set_defaults(handler=cmd_allocate)

    group = groups.add_parser("allocation", parents=parents, help="allocations: show, delete")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    name_help = "cells/CELL/allocations/ID, or an allocation id with --cell"
    show = commands.add_parser("show", parents=parents, help="show one allocation")
    show.add_argument("name", metavar="NAME", help=name_help)
    show.set_defaults(handler=cmd_show)
    delete = commands.add_parser(
        "delete", parents=parents, help="release an allocation (the node stays as it is)"
    )
    delete.add_argument("name", metavar="NAME", help=name_help)
    delete.set_defaults(handler=cmd_delete)
