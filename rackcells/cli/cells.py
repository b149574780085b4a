"""``rackcells cell list|show|disable|enable``: the leaf cells as the top cell sees them.

Only the top cell knows the other cells, so these commands need its endpoint; a leaf answers
UNIMPLEMENTED, which is turned into a line that says so. ``disable`` is the operator's
drain switch: the cell keeps serving named calls (its nodes can still be shown, powered,
undeployed) but gets no new allocations, which is what a rack about to be serviced needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from rackcells.cli.capacity import counts_line, short_cell
from rackcells.cli.client import Session
from rackcells.cli.errors import CliError, rpc_failure
from rackcells.cli.names import cell_name
from rackcells.cli.output import (
    NONE,
    enum_label,
    format_age,
    format_time,
    message_to_dict,
    print_json,
    render_fields,
    render_table,
)
from rackcells.v1 import cell_service_pb2

__all__ = [
    "CELL_HEADERS",
    "cell_row",
    "cmd_disable",
    "cmd_enable",
    "cmd_list",
    "cmd_show",
    "register",
    "render_cell",
    "render_cell_list",
    "state_label",
]

CELL_HEADERS = (
    "CELL",
    "STATE",
    "ENDPOINT",
    "NODES",
    "AVAILABLE",
    "DEPLOYING",
    "ACTIVE",
    "FAILED",
    "GENERATION",
    "HEARTBEAT",
    "VERSION",
)

_Response = TypeVar("_Response")


def state_label(state: int) -> str:
    """``CELL_STATE_DISABLED`` → ``disabled``; a cell not heard from yet → ``unknown``."""
    try:
        name = cell_service_pb2.CellState.Name(cell_service_pb2.CellState.ValueType(state))
    except ValueError:
        return str(state)
    label = enum_label(name, "CELL_STATE_")
    return "unknown" if label == NONE else label


def cell_row(cell: cell_service_pb2.Cell, now: datetime | None = None) -> list[str]:
    """One row of ``cell list``, in the order of :data:`CELL_HEADERS`."""
    c = cell.capacity
    return [
        short_cell(cell.name),
        state_label(cell.state),
        cell.endpoint or NONE,
        str(c.total),
        str(c.available),
        str(c.deploying),
        str(c.active),
        str(c.failed),
        str(cell.inventory_generation),
        format_age(cell.last_heartbeat, now),
        cell.version or NONE,
    ]


def render_cell_list(cells: Sequence[cell_service_pb2.Cell], now: datetime | None = None) -> str:
    """The ``cell list`` table."""
    return render_table(CELL_HEADERS, (cell_row(c, now) for c in cells))


def _scheduling(cell: cell_service_pb2.Cell) -> str:
    if not cell.scheduling_disabled:
        return "enabled"
    return f"disabled ({cell.disabled_reason})" if cell.disabled_reason else "disabled"


def render_cell(cell: cell_service_pb2.Cell, now: datetime | None = None) -> str:
    """The ``cell show`` layout."""
    return render_fields(
        [
            ("name", cell.name),
            ("endpoint", cell.endpoint),
            ("state", state_label(cell.state)),
            ("scheduling", _scheduling(cell)),
            ("last heartbeat", format_time(cell.last_heartbeat, now)),
            ("inventory generation", str(cell.inventory_generation)),
            ("version", cell.version),
            ("capacity", counts_line(cell.capacity)),
        ]
    )


def _summary(cell: cell_service_pb2.Cell) -> str:
    return f"{cell.name}: {state_label(cell.state)}, scheduling {_scheduling(cell)}"


def _call(session: Session, method: Callable[..., _Response], request: object) -> _Response:
    """Calls CellService, explaining the answer of an endpoint that does not serve it."""
    try:
        return method(request, timeout=session.timeout)
    except grpc.RpcError as err:
        if rpc_failure(err).code == grpc.StatusCode.UNIMPLEMENTED:
            raise CliError(
                f"{session.endpoint} does not serve CellService: "
                "cell commands need the top cell's endpoint"
            ) from None
        raise


def _cell_dict(cell: cell_service_pb2.Cell) -> dict[str, Any]:
    # Every count spelled out, even where the server left the capacity empty.
    shown = cell_service_pb2.Cell()
    shown.CopyFrom(cell)
    shown.capacity.SetInParent()
    return message_to_dict(shown, zeros=True)


def _print_cell(session: Session, cell: cell_service_pb2.Cell, text: str) -> None:
    if session.json:
        print_json(_cell_dict(cell))
    else:
        print(text)


def cmd_list(session: Session, args: argparse.Namespace) -> int:
    """Every cell the top cell knows, with its state and node counts."""
    response: cell_service_pb2.ListCellsResponse = _call(
        session, session.cells.ListCells, cell_service_pb2.ListCellsRequest()
    )
    if session.json:
        print_json({"cells": [_cell_dict(c) for c in response.cells]})
    else:
        print(render_cell_list(response.cells))
    return 0


def cmd_show(session: Session, args: argparse.Namespace) -> int:
    """Every field of one cell."""
    cell: cell_service_pb2.Cell = _call(
        session, session.cells.GetCell, cell_service_pb2.GetCellRequest(name=cell_name(args.target))
    )
    _print_cell(session, cell, render_cell(cell))
    return 0


def _update(
    session: Session, target: str, disabled: bool, reason: str | None
) -> cell_service_pb2.Cell:
    paths = ["scheduling_disabled"]
    if reason is not None:
        paths.append("disabled_reason")
    request = cell_service_pb2.UpdateCellRequest(
        cell=cell_service_pb2.Cell(
            name=cell_name(target), scheduling_disabled=disabled, disabled_reason=reason or ""
        ),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    cell: cell_service_pb2.Cell = _call(session, session.cells.UpdateCell, request)
    return cell


def cmd_disable(session: Session, args: argparse.Namespace) -> int:
    """Takes a cell out of scheduling; without ``--reason`` a reason given earlier stays."""
    cell = _update(session, args.target, True, args.reason)
    _print_cell(session, cell, _summary(cell))
    return 0


def cmd_enable(session: Session, args: argparse.Namespace) -> int:
    """Puts a cell back into scheduling; the top cell clears the reason."""
    cell = _update(session, args.target, False, None)
    _print_cell(session, cell, _summary(cell))
    return 0


def register(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds ``rackcells cell`` and its subcommands."""
    group = groups.add_parser(
        "cell",
        parents=parents,
        help="cells: list, show, disable, enable (top cell only)",
        description="The leaf cells the top cell knows. These commands need the top cell's "
        "endpoint.",
    )
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    target_help = "rack-1 or cells/rack-1"

    lst = commands.add_parser("list", parents=parents, help="list cells with state and counts")
    lst.set_defaults(handler=cmd_list)

    show = commands.add_parser("show", parents=parents, help="show one cell in full")
    # Not "cell": that attribute is the global --cell option.
    show.add_argument("target", metavar="CELL", help=target_help)
    show.set_defaults(handler=cmd_show)

    disable = commands.add_parser(
        "disable",
        parents=parents,
        help="take a cell out of scheduling",
        description="Take a cell out of scheduling: it gets no new allocations, while calls "
        "naming its nodes or allocations still reach it. Survives a restart of the top cell.",
    )
    disable.add_argument("target", metavar="CELL", help=target_help)
    disable.add_argument("--reason", metavar="TEXT", help="why, shown by cell show")
    disable.set_defaults(handler=cmd_disable)

    enable = commands.add_parser(
        "enable", parents=parents, help="put a cell back into scheduling (clears the reason)"
    )
    enable.add_argument("target", metavar="CELL", help=target_help)
    enable.set_defaults(handler=cmd_enable)
