"""ListNodes over every cell (parent ``cells/-``, AIP-159): fan out, merge sorted pages, one token.

Each leaf returns its nodes sorted by the request's ``order_by`` (ending with the node id, so
its order is total). The top asks every cell of the listing for one page at once, merges the
pages with :func:`heapq.merge` on the same keys, ties between cells broken by (node id, cell),
and keeps the first ``page_size`` nodes.

The next page token carries **one cursor per cell**: the leaf page token this page was read
from and how many of that leaf page's nodes have been returned so far (plus the last returned
node id, to stay put when nodes come and go between pages), or the leaf's own next token once
the leaf page was used up, or "done". A cell's page that runs out before the merge has its
``page_size`` nodes while the cell still has more ends the page early: its next node might
sort before anything else left, so the page is cut there rather than risk a wrong order.

The token is opaque and tamper-evident: the cursors are serialised, compressed and sealed with
Fernet (AES-CBC + HMAC) under the top cell's key, together with a fingerprint of the filter and
order_by. A token from another query, another key (a restarted top with an in-memory key) or an
edited token is refused with INVALID_ARGUMENT naming ``page_token``.

A cell that is down, too slow or failing is listed in ``unreachable`` and the call succeeds with
the other cells, always, whether or not ``return_partial_success`` is set: a federation where
one dead rack makes every global listing fail is worse than a listing that says what is missing.
Such a cell stays out of the rest of that listing (its later nodes would arrive out of order),
and later pages keep naming it in ``unreachable``; start the listing again to include it.

Ordering caveat: the leaf sorts strings in its database's collation (SQLite: binary; PostgreSQL:
the database collation); the merge compares Python strings (code points). With a non-C
PostgreSQL collation, strings that differ only in case or punctuation may interleave differently
across cells than within one; no node is repeated or skipped either way, because each cell's
nodes are always taken in that cell's own order.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from cryptography.fernet import Fernet, InvalidToken

from common.errors import InvalidArgument
from common.listing import MAX_PAGE_SIZE, OrderBy, page_size, parse_filter, parse_order_by
from rackcells.v1 import node_pb2, node_service_pb2
from top_cell.fanout import Ok, scatter_gather

__all__ = [
    "DONE",
    "DROPPED",
    "CellCursor",
    "CellPage",
    "Cursor",
    "LeafLister",
    "PageTokens",
    "SortKey",
    "list_across_cells",
    "merge_pages",
    "query_fingerprint",
    "sort_key",
]

_TOKEN_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    """Where a cell's part of the listing continues.

    ``token`` is the leaf page token to read ("" = from the start), ``consumed`` how many nodes
    of that leaf page were already returned, ``last`` the id of the last of them.
    """

    token: str = ""
    consumed: int = 0
    last: str = ""


DONE: Literal["done"] = "done"
"""The cell has no more nodes for this listing."""
DROPPED: Literal["dropped"] = "dropped"
"""The cell failed during this listing; it stays in ``unreachable`` until the listing ends."""

CellCursor: TypeAlias = Cursor | Literal["done", "dropped"]


# -- page tokens ---------------------------------------------------------------------------------


def query_fingerprint(filter_text: str, order: OrderBy) -> str:
    """What a token is bound to: the filter as sent (the leaves bind their tokens to the same
    text) and the canonical order_by."""
    text = f"cells/-\n{filter_text.strip()}\n{order.canonical()}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _encode_cursor(cursor: CellCursor) -> Any:
    if isinstance(cursor, Cursor):
        return [cursor.token, cursor.consumed, cursor.last]
    return cursor


def _decode_cursor(raw: Any) -> CellCursor:
    if raw == DONE:
        return DONE
    if raw == DROPPED:
        return DROPPED
    if (
        isinstance(raw, list)
        and len(raw) == 3
        and isinstance(raw[0], str)
        and isinstance(raw[1], int)
        and 0 <= raw[1] <= MAX_PAGE_SIZE
        and isinstance(raw[2], str)
    ):
        return Cursor(raw[0], raw[1], raw[2])
    raise ValueError("bad cursor")


class PageTokens:
    """Seals per-cell cursors into an opaque page token and opens them again.

    The key is the top cell's Fernet key (from ``--secret-key-file``, or a throw-away in-memory
    key, in which case tokens stop working when the top restarts).
    """

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, query: str, cursors: Mapping[str, CellCursor]) -> str:
        payload = {
            "v": _TOKEN_VERSION,
            "q": query,
            "c": {cell: _encode_cursor(c) for cell, c in sorted(cursors.items())},
        }
        raw = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
        return self._fernet.encrypt(raw).decode("ascii")

    def open(self, token: str, query: str) -> dict[str, CellCursor]:
        """The cursors inside ``token``; INVALID_ARGUMENT naming page_token if it is not one of
        this top cell's tokens for this query."""
        try:
            raw = zlib.decompress(self._fernet.decrypt(token.encode("ascii")))
            payload = json.loads(raw)
            if not isinstance(payload, dict) or payload.get("v") != _TOKEN_VERSION:
                raise ValueError("bad version")
            fingerprint = payload["q"]
            cells = payload["c"]
            if not isinstance(cells, dict):
                raise ValueError("bad cursors")
            cursors = {str(cell): _decode_cursor(c) for cell, c in cells.items()}
        except (InvalidToken, ValueError, KeyError, TypeError, UnicodeError, zlib.error):
            raise InvalidArgument.field(
                "page_token",
                "is not a page token of this listing (edited, or issued before a restart of "
                "the top cell); start again without it",
            ) from None
        if fingerprint != query:
            raise InvalidArgument.field(
                "page_token", "belongs to a different filter or order_by; start again without it"
            )
        return cursors


# -- sort keys -----------------------------------------------------------------------------------


def _field_value(node: node_pb2.Node, field_name: str) -> Any:
    # The leaf sorts its stored values: node id, strings, state names without the enum prefix
    # (they are stored as text), and times.
    if field_name == "name":
        return node.name.rsplit("/", 1)[-1]
    if field_name == "resource_class":
        return node.resource_class
    if field_name == "provision_state":
        return node_pb2.ProvisionState.Name(node.provision_state).removeprefix("PROVISION_STATE_")
    if field_name == "power_state":
        return node_pb2.PowerState.Name(node.power_state).removeprefix("POWER_STATE_")
    if field_name in ("create_time", "update_time"):
        stamp = getattr(node, field_name)
        return (stamp.seconds, stamp.nanos)
    raise ValueError(f"cannot sort by {field_name}")


@dataclass(frozen=True)
class SortKey:
    """A node's position in an order_by: values compared key by key, each ascending or
    descending. ``bottom`` sorts before everything (a cell that has nothing buffered)."""

    values: tuple[Any, ...]
    desc: tuple[bool, ...]
    bottom: bool = False

    def __lt__(self, other: SortKey) -> bool:
        if self.bottom or other.bottom:
            return self.bottom and not other.bottom
        for mine, theirs, desc in zip(self.values, other.values, self.desc, strict=True):
            if mine != theirs:
                return bool(mine > theirs) if desc else bool(mine < theirs)
        return False


def sort_key(node: node_pb2.Node, order: OrderBy) -> SortKey:
    return SortKey(
        tuple(_field_value(node, k.field) for k in order.keys), tuple(k.desc for k in order.keys)
    )


# -- merging -------------------------------------------------------------------------------------


@dataclass
class CellPage:
    """What one cell returned for this page.

    ``cursor`` is the cursor the page was read with, ``nodes`` the leaf page, ``skip`` how many
    of them were returned on earlier pages, ``next_token`` the leaf's next page token.
    """

    cursor: Cursor
    nodes: Sequence[node_pb2.Node]
    next_token: str
    skip: int = 0
    fresh: list[node_pb2.Node] = field(init=False)

    def __post_init__(self) -> None:
        self.fresh = list(self.nodes[self.skip :])


@dataclass(frozen=True)
class _Entry:
    key: SortKey
    cell: str
    barrier: bool
    node: node_pb2.Node | None

    def sort(self) -> tuple[SortKey, str, bool]:
        return (self.key, self.cell, self.barrier)


def _entries(cell: str, page: CellPage, order: OrderBy) -> Iterator[_Entry]:
    last: SortKey | None = None
    for node in page.fresh:
        last = sort_key(node, order)
        yield _Entry(last, cell, False, node)
    if page.next_token:
        # The cell has more nodes than this page holds; the next one sorts at or after the last
        # one seen, so the merge must stop when it gets here.
        key = last if last is not None else SortKey((), (), bottom=True)
        yield _Entry(key, cell, True, None)


def _node_id(node: node_pb2.Node) -> str:
    return node.name.rsplit("/", 1)[-1]


def merge_pages(
    pages: Mapping[str, CellPage], order: OrderBy, size: int
) -> tuple[list[node_pb2.Node], dict[str, CellCursor]]:
    """Merges the cells' pages into at most ``size`` nodes; returns them and each cell's next
    cursor."""
    taken: dict[str, int] = dict.fromkeys(pages, 0)
    merged: list[node_pb2.Node] = []
    streams = [_entries(cell, page, order) for cell, page in sorted(pages.items())]
    for entry in heapq.merge(*streams, key=_Entry.sort):
        if entry.barrier or len(merged) >= size:
            break
        assert entry.node is not None
        merged.append(entry.node)
        taken[entry.cell] += 1
    cursors: dict[str, CellCursor] = {}
    for cell, page in pages.items():
        used = taken[cell]
        if used < len(page.fresh):
            returned = page.skip + used
            last = _node_id(page.nodes[returned - 1]) if returned else ""
            cursors[cell] = Cursor(page.cursor.token, returned, last)
        elif page.next_token:
            cursors[cell] = Cursor(page.next_token)
        else:
            cursors[cell] = DONE
    return merged, cursors


def _skip_count(cursor: Cursor, nodes: Sequence[node_pb2.Node]) -> int:
    """How many nodes at the start of a re-read leaf page were returned before.

    Normally ``cursor.consumed``; if nodes were added or removed in that part of the leaf page
    since, the last returned node is looked up by id instead, so that nothing repeats.
    """
    k = cursor.consumed
    if k == 0:
        return 0
    if k <= len(nodes) and _node_id(nodes[k - 1]) == cursor.last:
        return k
    for i, node in enumerate(nodes):
        if _node_id(node) == cursor.last:
            return i + 1
    return min(k, len(nodes))


# -- the call ------------------------------------------------------------------------------------

LeafLister: TypeAlias = Callable[
    [str, node_service_pb2.ListNodesRequest, float], Awaitable[node_service_pb2.ListNodesResponse]
]
"""Calls one cell's ListNodes: ``(cell, request, timeout) -> response``."""


async def list_across_cells(
    request: node_service_pb2.ListNodesRequest,
    *,
    cells: Callable[[], Sequence[str]],
    reachable: Callable[[str], bool],
    lister: LeafLister,
    tokens: PageTokens,
    timeout: float,
) -> node_service_pb2.ListNodesResponse:
    """One page of a cross-cell listing.

    ``cells`` gives the cells of a new listing (later pages use the cells in the token),
    ``reachable`` says which are worth asking, ``lister`` asks one, ``timeout`` bounds each.
    Input is validated before any cell is asked.
    """
    size = page_size(request.page_size)
    parse_filter(request.filter)
    order = parse_order_by(request.order_by)
    query = query_fingerprint(request.filter, order)
    if request.page_token:
        cursors = tokens.open(request.page_token, query)
    else:
        cursors = {cell: Cursor() for cell in cells()}
    unreachable: set[str] = set()
    active: dict[str, Cursor] = {}
    for cell, cursor in cursors.items():
        if cursor == DROPPED or (isinstance(cursor, Cursor) and not reachable(cell)):
            cursors[cell] = DROPPED
            unreachable.add(cell)
        elif isinstance(cursor, Cursor):
            active[cell] = cursor

    def leaf_request(cell: str) -> node_service_pb2.ListNodesRequest:
        cursor = active[cell]
        return node_service_pb2.ListNodesRequest(
            parent=f"cells/{cell}",
            page_size=min(size + cursor.consumed, MAX_PAGE_SIZE),
            page_token=cursor.token,
            filter=request.filter,
            order_by=request.order_by,
        )

    results = await scatter_gather(
        active, lambda cell, budget: lister(cell, leaf_request(cell), budget), timeout=timeout
    )
    pages: dict[str, CellPage] = {}
    for cell, result in results.items():
        if isinstance(result, Ok):
            cursor = active[cell]
            nodes = list(result.value.nodes)
            pages[cell] = CellPage(
                cursor, nodes, result.value.next_page_token, _skip_count(cursor, nodes)
            )
        else:
            cursors[cell] = DROPPED
            unreachable.add(cell)
    merged, advanced = merge_pages(pages, order, size)
    cursors.update(advanced)
    response = node_service_pb2.ListNodesResponse(
        nodes=merged, unreachable=[f"cells/{cell}" for cell in sorted(unreachable)]
    )
    if any(isinstance(c, Cursor) for c in cursors.values()):
        response.next_page_token = tokens.seal(query, cursors)
    return response
