"""ListNodes over every cell (parent ``cells/-``, AIP-159): fan out, merge sorted pages, one token.

Each leaf returns its nodes sorted by the request's ``order_by`` (ending with the node id, so
its order is total). The top asks every cell of the listing for one page at once, merges the
pages with :func:`heapq.merge` on the same keys, ties between cells broken by (node id, cell),
and keeps the first ``page_size`` nodes.

The next page token carries **one cursor per cell**, which names a *position* in that cell's
order, never a count, so that nodes deleted or added between pages cannot shift it:

- the leaf's own next page token, once a leaf page was used up;
- a leaf page token positioned just after the last node returned from the cell, when the page
  was used in part. Leaves paginate by keyset (:mod:`common.page_tokens`: the token holds the
  sort-key values of the node to continue after), so the top writes that token itself and the
  cell is asked for exactly ``page_size`` nodes again, with no re-reading. It does so only when
  the leaf's own next token on the same page decodes, for this query, to that page's last node,
  so a leaf whose tokens look different (another version) is never sent a guess;
- otherwise the leaf page token the page was read from plus the sort key (order_by values and
  node id) of the last node returned: the page is read again and taken from just after that
  key, wherever it now falls. Only then does the top read ahead, by the number of nodes already
  returned from that page;
- or "done".

A cell's page that runs out before the merge has its ``page_size`` nodes while the cell still
has more ends the page early: its next node might sort before anything else left, so the page
is cut there rather than risk a wrong order.

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
across cells than within one. Each cell's nodes are still taken in that cell's own order: a
position written into a leaf token is compared by the leaf's database, and a re-read page is
resumed at the last returned node itself when it is still there unchanged; only when that node
was deleted or changed are the remaining nodes placed by comparing keys in Python.
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
from common.page_tokens import (
    TIME_FIELDS,
    decode_token,
    encode_token,
    node_token_values,
    node_value,
    typed_values,
)
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
    "SortValue",
    "list_across_cells",
    "merge_pages",
    "query_fingerprint",
    "sort_key",
]

_TOKEN_VERSION = 2
"""2: cursors hold the last returned node's sort key; 1 held a count, which deletions shift."""

SortValue: TypeAlias = str | tuple[int, int]
"""One order_by value of a node as the merge compares it: text, or a time as (seconds, nanos)."""


@dataclass(frozen=True)
class Cursor:
    """Where a cell's part of the listing continues.

    ``token`` is the leaf page token to read ("" = from the start). When nodes of the leaf page
    that starts there were returned already, ``last`` is the id of the last of them and
    ``after`` its other order_by values, in order_by order: together its sort key, after which
    the page is resumed wherever that key now falls, so that deleting or adding nodes in between
    cannot make the listing skip or repeat one. ``consumed`` is how many nodes that page held up
    to and including ``last``; it only says how far to read ahead, never where to resume.
    """

    token: str = ""
    consumed: int = 0
    last: str = ""
    after: tuple[SortValue, ...] = ()


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
        encoded: list[Any] = [cursor.token, cursor.consumed, cursor.last]
        if cursor.after:
            encoded.append([list(v) if isinstance(v, tuple) else v for v in cursor.after])
        return encoded
    return cursor


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_value(raw: Any) -> SortValue:
    if isinstance(raw, str):
        return raw
    if (
        isinstance(raw, list)
        and len(raw) == 2
        and _is_int(raw[0])
        and _is_int(raw[1])
        and 0 <= raw[1] < 1_000_000_000
    ):
        return (raw[0], raw[1])
    raise ValueError("bad sort value")


def _decode_cursor(raw: Any) -> CellCursor:
    if raw == DONE:
        return DONE
    if raw == DROPPED:
        return DROPPED
    if (
        isinstance(raw, list)
        and len(raw) in (3, 4)
        and isinstance(raw[0], str)
        and _is_int(raw[1])
        and 0 <= raw[1] <= MAX_PAGE_SIZE
        and isinstance(raw[2], str)
    ):
        after: tuple[SortValue, ...] = ()
        if len(raw) == 4:
            if not isinstance(raw[3], list) or not raw[3] or not raw[2]:
                raise ValueError("bad sort key")
            after = tuple(_decode_value(v) for v in raw[3])
        return Cursor(raw[0], raw[1], raw[2], after)
    raise ValueError("bad cursor")


def _not_a_token() -> InvalidArgument:
    return InvalidArgument.field(
        "page_token",
        "is not a page token of this listing (edited, or issued before a restart of "
        "the top cell); start again without it",
    )


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
            raise _not_a_token() from None
        if fingerprint != query:
            raise InvalidArgument.field(
                "page_token", "belongs to a different filter or order_by; start again without it"
            )
        return cursors


# -- sort keys -----------------------------------------------------------------------------------


def _field_value(node: node_pb2.Node, field_name: str) -> SortValue:
    # The value the leaf sorts by; times keep the message's nanoseconds.
    value = node_value(node, field_name)
    return value if isinstance(value, str) else (value.seconds, value.nanos)


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


def _node_id(node: node_pb2.Node) -> str:
    return node.name.rsplit("/", 1)[-1]


def _cursor_after(token: str, consumed: int, node: node_pb2.Node, order: OrderBy) -> Cursor:
    """A cursor that resumes the leaf page at ``token`` just after ``node``."""
    after = tuple(_field_value(node, k.field) for k in order.keys if k.field != "name")
    return Cursor(token, consumed, _node_id(node), after)


def _position(cursor: Cursor, order: OrderBy) -> SortKey | None:
    """The sort key ``cursor`` resumes after (None: from the start of its leaf page).

    The cursor was sealed under this query's fingerprint, so a key that does not fit the
    order_by means a token this top did not write: refused like any other bad token.
    """
    if not cursor.last:
        if cursor.after or cursor.consumed:
            raise _not_a_token()
        return None
    others = [k for k in order.keys if k.field != "name"]
    if len(cursor.after) != len(others):
        raise _not_a_token()
    for key, value in zip(others, cursor.after, strict=True):
        if isinstance(value, tuple) != (key.field in TIME_FIELDS):
            raise _not_a_token()
    values = iter(cursor.after)
    return SortKey(
        tuple(cursor.last if k.field == "name" else next(values) for k in order.keys),
        tuple(k.desc for k in order.keys),
    )


def _skip_count(cursor: Cursor, nodes: Sequence[node_pb2.Node], order: OrderBy) -> int:
    """How many nodes at the start of a re-read leaf page were returned before (or were added
    since before the cursor's position, which would be out of order now).

    The last returned node, found by id with the sort key it had, marks the spot exactly, in the
    leaf's own order whatever the collations. If it was deleted or changed since, the spot is
    where its sort key would be: every node up to it is skipped, none after it. A count would
    shift by one for each node deleted or added in between.
    """
    position = _position(cursor, order)
    if position is None:
        return 0
    for i, node in enumerate(nodes):
        if _node_id(node) == cursor.last:
            if sort_key(node, order) == position:
                return i + 1
            break
    skip = 0
    for node in nodes:
        if position < sort_key(node, order):
            break
        skip += 1
    return skip


# -- the leaves' keyset page tokens --------------------------------------------------------------

Seeker: TypeAlias = Callable[[node_pb2.Node], str | None]
"""Writes a leaf page token that continues just after a node of that leaf (None if it cannot)."""


def _seeker(
    filter_text: str,
    order: OrderBy,
    nodes: Sequence[node_pb2.Node],
    next_token: str,
) -> Seeker | None:
    """A writer of this leaf's page tokens, if its ``next_token`` after the page's last node is
    a token of :mod:`common.page_tokens` for this query holding that node's values; else None.
    A leaf's own token is the only evidence of its format: another version, or another kind of
    leaf, must not be sent a token the top wrote."""
    if not next_token or not nodes:
        return None
    ours = node_token_values(nodes[-1], order)
    if ours is None:
        return None
    try:
        theirs = decode_token(next_token, filter_text, order)
    except InvalidArgument:
        return None
    if typed_values(order, theirs) != typed_values(order, ours):
        return None

    def seek(node: node_pb2.Node) -> str | None:
        values = node_token_values(node, order)
        return None if values is None else encode_token(filter_text, order, values)

    return seek


# -- merging -------------------------------------------------------------------------------------


@dataclass
class CellPage:
    """What one cell returned for this page.

    ``cursor`` is the cursor the page was read with, ``nodes`` the leaf page, ``skip`` how many
    of them were returned on earlier pages, ``next_token`` the leaf's next page token, ``seek``
    a writer of this leaf's page tokens when the top can write them.
    """

    cursor: Cursor
    nodes: Sequence[node_pb2.Node]
    next_token: str
    skip: int = 0
    seek: Seeker | None = None
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


def _next_cursor(page: CellPage, used: int, order: OrderBy) -> CellCursor:
    """Where the cell continues after ``used`` of its fresh nodes went into this page."""
    if used == len(page.fresh):
        return Cursor(page.next_token) if page.next_token else DONE
    if used == 0:
        # Nothing of this cell on this page: same position, read-ahead brought up to date.
        old = page.cursor
        return Cursor(old.token, page.skip, old.last, old.after)
    last = page.fresh[used - 1]
    token = page.seek(last) if page.seek is not None else None
    if token:
        return Cursor(token)
    return _cursor_after(page.cursor.token, page.skip + used, last, order)


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
    cursors = {cell: _next_cursor(page, taken[cell], order) for cell, page in pages.items()}
    return merged, cursors


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
    Input, the token's cursors included, is validated before any cell is asked.
    """
    size = page_size(request.page_size)
    parse_filter(request.filter)
    order = parse_order_by(request.order_by)
    query = query_fingerprint(request.filter, order)
    if request.page_token:
        cursors = tokens.open(request.page_token, query)
    else:
        cursors = {cell: Cursor() for cell in cells()}
    for cursor in cursors.values():
        if isinstance(cursor, Cursor):
            _position(cursor, order)
    unreachable: set[str] = set()
    active: dict[str, Cursor] = {}
    for cell, cursor in cursors.items():
        if cursor == DROPPED or (isinstance(cursor, Cursor) and not reachable(cell)):
            cursors[cell] = DROPPED
            unreachable.add(cell)
        elif isinstance(cursor, Cursor):
            active[cell] = cursor

    def leaf_request(cell: str) -> node_service_pb2.ListNodesRequest:
        # A cursor that resumes inside a leaf page reads the nodes returned from it again
        # (``consumed``); one at a leaf token, the usual case, reads exactly ``size``.
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
            next_token = result.value.next_page_token
            pages[cell] = CellPage(
                cursor,
                nodes,
                next_token,
                _skip_count(cursor, nodes, order),
                _seeker(request.filter, order, nodes, next_token),
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
