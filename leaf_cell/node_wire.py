"""Nodes kept in wire form, so that reads serve bytes instead of rebuilding messages.

Building a ``Node`` message from its row is most of the cost of a read: a page of 1,000 nodes
spends far longer in Python setting fields than SQLite spends finding the rows. Between changes
the message is the same, so the serialized bytes are kept and reused while the row's *version*
is unchanged. The version is every column a write may change without bumping ``revision``
(the lock and the power-sync time, see :mod:`leaf_cell.db.models`) plus ``uid`` and
``revision`` themselves; every other write bumps ``revision``. A stale entry is therefore never
served: it simply stops matching and is rebuilt.

A page is then assembled as protobuf wire format directly: a ``ListNodesResponse`` is field 1
(each node, length-delimited) repeated, then field 2 (the page token). Clients parse it like any
other response.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.sql.elements import KeyedColumnElement

from leaf_cell.db.models import NodeRow

__all__ = ["VERSION_COLUMNS", "NodeWireCache", "list_response"]

#: What a cached node's bytes depend on besides ``revision``-bumping writes.
VERSION_COLUMNS: tuple[KeyedColumnElement[Any], ...] = tuple(
    cast(Table, NodeRow.__table__).c[name]
    for name in (
        "id",
        "uid",
        "revision",
        "power_sync_time",
        "lock_holder",
        "lock_purpose",
        "lock_since",
        "lock_expires",
    )
)
_VERSION_NAMES = tuple(c.key for c in VERSION_COLUMNS)

_NODES_FIELD = b"\x0a"  # ListNodesResponse.nodes: field 1, length-delimited
_TOKEN_FIELD = b"\x12"  # ListNodesResponse.next_page_token: field 2, length-delimited


def _version(row: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in _VERSION_NAMES)


class NodeWireCache:
    """Serialized nodes by primary key, each with the version it was built from.

    Bounded: past ``capacity`` entries the oldest-stored go first. A rack cell holds a few
    thousand nodes, so the default keeps all of them (about 300 bytes each).
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._entries: dict[int, tuple[tuple[Any, ...], bytes]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, row: Any) -> bytes | None:
        """The bytes for ``row`` (with the version columns), or None when absent or stale."""
        entry = self._entries.get(row.id)
        if entry is None or entry[0] != _version(row):
            return None
        return entry[1]

    def put(self, row: Any, data: bytes) -> None:
        """Keeps ``data`` as the bytes of ``row`` at its current version."""
        with self._lock:
            self._entries.pop(row.id, None)
            self._entries[row.id] = (_version(row), data)
            while len(self._entries) > self._capacity:
                del self._entries[next(iter(self._entries))]

    def forget(self, pks: Iterable[int]) -> None:
        with self._lock:
            for pk in pks:
                self._entries.pop(pk, None)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def list_response(nodes: Sequence[bytes], next_page_token: str) -> bytes:
    """A serialized ``ListNodesResponse`` with these serialized nodes and page token."""
    parts: list[bytes] = []
    for data in nodes:
        parts += (_NODES_FIELD, _varint(len(data)), data)
    if next_page_token:
        token = next_page_token.encode()
        parts += (_TOKEN_FIELD, _varint(len(token)), token)
    return b"".join(parts)
