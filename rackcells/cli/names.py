"""Resource names as the operator types them, turned into the full names the API wants.

Operators mostly work inside one rack, so a bare node id plus ``--cell`` (or ``RACKCELLS_CELL``)
is accepted wherever a full ``cells/{cell}/nodes/{node}`` is. The check happens here, before any
call, so that a typo is a usage error with a hint instead of a round trip ending in NOT_FOUND.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rackcells.cli.errors import UsageError

__all__ = [
    "ALL_CELLS_PARENT",
    "NodeRef",
    "allocation_name",
    "cell_name",
    "cell_parent",
    "check_cell",
    "is_label",
    "node_ref",
    "short_node_name",
]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# AIP-159: the wildcard parent; a leaf answers it for its own cell, the top for every cell.
ALL_CELLS_PARENT = "cells/-"


def is_label(text: str) -> bool:
    """Whether ``text`` is an RFC 1123 label, the form of every cell and node id."""
    return bool(_LABEL.match(text))


@dataclass(frozen=True)
class NodeRef:
    """A node named by cell and node id; ``str()`` gives the API resource name."""

    cell: str
    node: str

    @property
    def parent(self) -> str:
        """The cell's resource name, the parent in CreateNode."""
        return f"cells/{self.cell}"

    def __str__(self) -> str:
        return f"cells/{self.cell}/nodes/{self.node}"


def node_ref(text: str, cell: str | None) -> NodeRef:
    """Resolves ``cells/{cell}/nodes/{node}`` or a bare node id combined with ``cell``.

    A full name wins over ``--cell``: it says exactly which node is meant, and a script that
    exports ``RACKCELLS_CELL`` should still be able to address a node elsewhere.
    """
    if text.startswith("cells/"):
        parts = text.split("/")
        if len(parts) != 4 or parts[2] != "nodes" or not is_label(parts[1]):
            raise UsageError(f"{text!r} is not a node name of the form cells/CELL/nodes/NODE")
        if not is_label(parts[3]):
            raise UsageError(f"node id {parts[3]!r} is not an RFC 1123 label")
        return NodeRef(parts[1], parts[3])
    if "/" in text:
        raise UsageError(
            f"{text!r} is neither a node id nor a name of the form cells/CELL/nodes/NODE"
        )
    if not is_label(text):
        raise UsageError(
            f"node id {text!r} is not an RFC 1123 label "
            "(lower-case letters, digits and hyphens, starting and ending with a letter or digit)"
        )
    if not cell:
        raise UsageError(
            f"node {text!r} needs a cell: give cells/CELL/nodes/{text}, "
            "or --cell CELL, or set RACKCELLS_CELL"
        )
    return NodeRef(check_cell(cell), text)


def check_cell(cell: str) -> str:
    """Returns ``cell`` if it is a valid cell id; a usage error otherwise."""
    if not is_label(cell):
        raise UsageError(f"cell {cell!r} is not an RFC 1123 label (for example rack-1)")
    return cell


def cell_parent(cell: str | None) -> str:
    """The parent for a list: one cell, or every cell the endpoint serves."""
    return f"cells/{check_cell(cell)}" if cell else ALL_CELLS_PARENT


def cell_name(text: str) -> str:
    """``rack-1`` or ``cells/rack-1`` → ``cells/rack-1``; anything else is a usage error."""
    cell = text.removeprefix("cells/")
    if "/" in cell:
        raise UsageError(f"{text!r} is not a cell: give rack-1 or cells/rack-1")
    return f"cells/{check_cell(cell)}"


def allocation_name(text: str, cell: str | None) -> str:
    """Resolves ``cells/{cell}/allocations/{id}`` or a bare allocation id combined with ``cell``.

    As for nodes, a full name wins over ``--cell``; the id itself is the server's to judge
    (it is whatever CreateAllocation returned), so only its shape is checked here.
    """
    if text.startswith("cells/"):
        parts = text.split("/")
        if len(parts) != 4 or parts[2] != "allocations" or not is_label(parts[1]) or not parts[3]:
            raise UsageError(
                f"{text!r} is not an allocation name of the form cells/CELL/allocations/ID"
            )
        return text
    if not text or "/" in text:
        raise UsageError(
            f"{text!r} is neither an allocation id nor a name of the form cells/CELL/allocations/ID"
        )
    if not cell:
        raise UsageError(
            f"allocation {text!r} needs a cell: give cells/CELL/allocations/{text}, "
            "or --cell CELL, or set RACKCELLS_CELL"
        )
    return f"cells/{check_cell(cell)}/allocations/{text}"


def short_node_name(name: str, *, with_cell: bool) -> str:
    """``cells/r1/nodes/n1`` → ``n1``, or ``r1/n1`` when a listing spans cells."""
    parts = name.split("/")
    if len(parts) != 4:
        return name
    return f"{parts[1]}/{parts[3]}" if with_cell else parts[3]
