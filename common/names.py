"""Resource names (AIP-122) shared by both cells: ``cells/{cell}``, ``cells/{cell}/nodes/{node}``.

The cell is part of every name so that the top cell routes a named request by parsing it, with
no database look-up. IDs are RFC 1123 labels: lower-case letters, digits and hyphens, at most
63 characters, starting and ending with a letter or digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import InvalidArgument

__all__ = ["ALL_CELLS", "NodeName", "is_label", "label_problem", "parse_cell", "parse_node_name"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ALL_CELLS = "-"


def is_label(text: str) -> bool:
    return bool(_LABEL.match(text))


def label_problem(text: str) -> str | None:
    """Why ``text`` is not an RFC 1123 label, or None if it is one."""
    if not text:
        return "is required"
    if len(text) > 63:
        return f"must be at most 63 characters, got {len(text)}"
    if text != text.lower():
        return f"{text!r} must be lower case (an RFC 1123 label)"
    if not _LABEL.match(text):
        return (
            f"{text!r} is not an RFC 1123 label (letters, digits and hyphens; "
            "must start and end with a letter or digit)"
        )
    return None


@dataclass(frozen=True)
class NodeName:
    cell: str
    node: str

    def __str__(self) -> str:
        return f"cells/{self.cell}/nodes/{self.node}"


def parse_cell(parent: str, field: str = "parent", *, allow_all: bool = False) -> str:
    """The cell id of ``cells/{cell}``; ``-`` (all cells) only where ``allow_all``."""
    parts = parent.split("/")
    if not parent:
        raise InvalidArgument.field(field, "is required (cells/{cell})")
    if len(parts) != 2 or parts[0] != "cells":
        raise InvalidArgument.field(field, f"{parent!r} is not of the form cells/{{cell}}")
    if parts[1] == ALL_CELLS and allow_all:
        return ALL_CELLS
    problem = label_problem(parts[1])
    if problem:
        raise InvalidArgument.field(field, f"cell id {problem}")
    return parts[1]


def parse_node_name(name: str, field: str = "name") -> NodeName:
    """Parses ``cells/{cell}/nodes/{node}``."""
    if not name:
        raise InvalidArgument.field(field, "is required (cells/{cell}/nodes/{node})")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "cells" or parts[2] != "nodes":
        raise InvalidArgument.field(
            field, f"{name!r} is not of the form cells/{{cell}}/nodes/{{node}}"
        )
    for part, what in ((parts[1], "cell id"), (parts[3], "node id")):
        problem = label_problem(part)
        if problem:
            raise InvalidArgument.field(field, f"{what} {problem}")
    return NodeName(parts[1], parts[3])
