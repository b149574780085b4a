"""``rackcells node create|list|show|update|delete``: the node inventory.

Each command is one or two calls to ``NodeService``; the work here is turning flags into a
request and the answer into something an operator can read at a glance (or, with ``-o json``,
something a program can parse without scraping).
"""

from __future__ import annotations

import argparse
import sys

from google.protobuf import field_mask_pb2

from rackcells.cli.client import Session
from rackcells.cli.errors import UsageError
from rackcells.cli.names import ALL_CELLS_PARENT
from rackcells.cli.node_fields import (
    ENV_BMC_PASSWORD,
    add_bmc_and_property_arguments,
    add_update_arguments,
    build_create_node,
    build_update,
    needs_current_node,
    positive_int,
)
from rackcells.cli.node_views import render_node, render_node_list
from rackcells.cli.output import message_to_dict, print_json, warn
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "cmd_create",
    "cmd_delete",
    "cmd_list",
    "cmd_show",
    "cmd_update",
    "list_nodes",
    "register",
]

# Enough for one rack at a glance; a whole federation needs --all, on purpose.
DEFAULT_LIST_LIMIT = 1000
# Server pages are capped at 1000; 500 keeps each answer small and the first row quick.
_PAGE_SIZE = 500


def cmd_create(session: Session, args: argparse.Namespace) -> int:
    """Enrols one node; it starts in ``enroll``."""
    ref = session.node(args.name)
    node = build_create_node(args)
    created = session.nodes.CreateNode(
        node_service_pb2.CreateNodeRequest(parent=ref.parent, node_id=ref.node, node=node),
        timeout=session.timeout,
    )
    if session.json:
        print_json(message_to_dict(created))
    else:
        print(f"created {created.name}")
    return 0


def list_nodes(
    session: Session, args: argparse.Namespace
) -> tuple[list[node_pb2.Node], list[str], str]:
    """Follows page tokens until ``--limit`` nodes (or all with ``--all``) are read.

    Returns the nodes, the unreachable cells seen on any page, and the token of the next
    page when the limit stopped the listing early (empty when the listing is complete).
    """
    limit = None if args.all else args.limit
    nodes: list[node_pb2.Node] = []
    unreachable: list[str] = []
    token = args.page_token or ""
    while True:
        size = args.page_size or _PAGE_SIZE
        if limit is not None:
            size = min(size, limit - len(nodes))
        response = session.nodes.ListNodes(
            node_service_pb2.ListNodesRequest(
                parent=session.list_parent(),
                page_size=size,
                page_token=token,
                filter=args.filter or "",
                order_by=args.order_by or "",
                return_partial_success=True,
            ),
            timeout=session.timeout,
        )
        nodes.extend(response.nodes)
        unreachable.extend(c for c in response.unreachable if c not in unreachable)
        token = response.next_page_token
        if not token or (limit is not None and len(nodes) >= limit):
            break
    if limit is not None and len(nodes) > limit:
        nodes = nodes[:limit]
    return nodes, unreachable, token


def cmd_list(session: Session, args: argparse.Namespace) -> int:
    """Lists nodes of ``--cell``, or of every cell the endpoint serves."""
    nodes, unreachable, token = list_nodes(session, args)
    if unreachable:
        warn(
            f"{len(unreachable)} cell(s) did not answer; their nodes are missing: "
            + ", ".join(unreachable)
        )
    if token:
        warn(f"showing the first {len(nodes)} nodes; use --all or a larger --limit for more")
    if session.json:
        result: dict[str, object] = {
            "nodes": [message_to_dict(n) for n in nodes],
            "unreachable": unreachable,
        }
        if token:
            result["next_page_token"] = token
        print_json(result)
    else:
        print(render_node_list(nodes, with_cell=session.list_parent() == ALL_CELLS_PARENT))
    return 0


def cmd_show(session: Session, args: argparse.Namespace) -> int:
    """Shows every field of one node."""
    ref = session.node(args.name)
    node = session.nodes.GetNode(
        node_service_pb2.GetNodeRequest(name=str(ref)), timeout=session.timeout
    )
    if session.json:
        print_json(message_to_dict(node))
    else:
        print(render_node(node))
    return 0


def cmd_update(session: Session, args: argparse.Namespace) -> int:
    """Changes the named fields; lists and maps are read, changed and written back."""
    ref = session.node(args.name)
    current = None
    if needs_current_node(args):
        current = session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=str(ref)), timeout=session.timeout
        )
    update = build_update(args, str(ref), current)
    if not update.paths:
        if current is None:
            raise UsageError("nothing to update: give at least one field to change")
        print(f"{ref}: nothing to change", file=sys.stderr)
        node = current
    else:
        node = session.nodes.UpdateNode(
            node_service_pb2.UpdateNodeRequest(
                node=update.node, update_mask=field_mask_pb2.FieldMask(paths=update.paths)
            ),
            timeout=session.timeout,
        )
    if session.json:
        print_json(message_to_dict(node))
    elif update.paths:
        print(f"updated {node.name}: {', '.join(update.paths)}")
    return 0


def cmd_delete(session: Session, args: argparse.Namespace) -> int:
    """Removes a node (only in enroll, manageable or available)."""
    ref = session.node(args.name)
    session.nodes.DeleteNode(
        node_service_pb2.DeleteNodeRequest(name=str(ref), etag=args.etag or ""),
        timeout=session.timeout,
    )
    if session.json:
        print_json({"name": str(ref), "deleted": True})
    else:
        print(f"deleted {ref}")
    return 0


_NAME_HELP = "cells/CELL/nodes/NODE, or a node id with --cell"


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds the inventory commands to ``rackcells node``."""
    create = commands.add_parser(
        "create",
        parents=parents,
        help="enrol a node",
        description="Enrol a node. The BMC password comes from "
        f"{ENV_BMC_PASSWORD} or --bmc-password-file; it is never shown.",
    )
    create.add_argument("name", metavar="NAME", help=_NAME_HELP)
    add_bmc_and_property_arguments(create)
    create.add_argument(
        "--mac",
        metavar="MAC[,nopxe]",
        action="append",
        default=[],
        help="a network port (repeat for more); nopxe: the node may not PXE-boot from it",
    )
    create.add_argument(
        "--trait",
        metavar="T",
        action="append",
        default=[],
        help="scheduling trait, e.g. CUSTOM_RACK_R1 (repeat for more)",
    )
    create.add_argument(
        "--extra",
        metavar="K=V",
        action="append",
        default=[],
        help="free-form key/value (repeat for more)",
    )
    create.set_defaults(handler=cmd_create)

    lst = commands.add_parser(
        "list",
        parents=parents,
        help="list nodes",
        description="List the nodes of --cell, or of every cell the "
        "endpoint serves when no cell is given.",
    )
    lst.add_argument(
        "--filter",
        metavar="EXPR",
        help="e.g. 'provision_state = AVAILABLE AND traits:\"CUSTOM_RACK_R1\"'",
    )
    lst.add_argument("--order-by", metavar="EXPR", help="e.g. 'create_time desc'")
    lst.add_argument(
        "--page-size", metavar="N", type=positive_int, help=f"nodes per call (default {_PAGE_SIZE})"
    )
    lst.add_argument("--page-token", metavar="TOKEN", help="continue a previous listing")
    how_many = lst.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit",
        metavar="N",
        type=positive_int,
        default=DEFAULT_LIST_LIMIT,
        help=f"at most N nodes (default {DEFAULT_LIST_LIMIT})",
    )
    how_many.add_argument("--all", action="store_true", help="every node, however many")
    lst.set_defaults(handler=cmd_list)

    show = commands.add_parser("show", parents=parents, help="show one node in full")
    show.add_argument("name", metavar="NAME", help=_NAME_HELP)
    show.set_defaults(handler=cmd_show)

    update = commands.add_parser(
        "update",
        parents=parents,
        help="change fields of a node",
        description="Change fields of a node. Only the fields given are sent. Traits, extra "
        "and ports are read first and written back whole with the etag read, so a concurrent "
        "change fails with ABORTED instead of being lost.",
    )
    update.add_argument("name", metavar="NAME", help=_NAME_HELP)
    add_bmc_and_property_arguments(update)
    add_update_arguments(update)
    update.set_defaults(handler=cmd_update)

    delete = commands.add_parser("delete", parents=parents, help="remove a node")
    delete.add_argument("name", metavar="NAME", help=_NAME_HELP)
    delete.add_argument("--etag", metavar="E", help="delete only if the node still has this etag")
    delete.set_defaults(handler=cmd_delete)
