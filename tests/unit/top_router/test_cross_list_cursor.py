"""The per-cell cursor of a cross-cell listing resumes after the sort key of the last node the cell
returned, never after a count: deleting that node (or any other), adding nodes or moving one
between pages never makes the listing skip or repeat a node that exists throughout. Leaves
whose page tokens the top can write (the real leaf's keyset tokens) are resumed exactly there
and asked for one page, no more; others are re-read from a token they issued. Cursors in a token
that do not fit the query are refused naming ``page_token``."""

from __future__ import annotations

import base64
import functools
import json
import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from google.protobuf import timestamp_pb2
from top_router_fakes import (
    TOKEN_KEY,
    TOKENS,
    FakeLeaf,
    Federation,
    compare,
    global_order,
    make_node,
    matches,
    random_node,
)

from common import page_tokens
from common.errors import InvalidArgument, Unavailable
from common.listing import OrderBy, parse_order_by
from rackcells.v1 import node_pb2, node_service_pb2
from top_cell import cross_list
from top_cell.cross_list import (
    CellPage,
    Cursor,
    merge_pages,
    query_fingerprint,
)

ORDERS = [
    "",
    "name desc",
    "resource_class",
    "provision_state, create_time desc",
    "power_state desc, update_time",
    "update_time desc, resource_class, name desc",
]
FILTERS = ["", 'resource_class = "gpu"', "maintenance = false"]


def _stamp_time(stamp: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(stamp.seconds, UTC) + timedelta(microseconds=stamp.nanos // 1000)


def _leaf_value(node: node_pb2.Node, field_name: str) -> Any:
    """A node's value as the real leaf stores and compares it (times as datetimes)."""
    value = page_tokens.node_value(node, field_name)
    return _stamp_time(value) if isinstance(value, timestamp_pb2.Timestamp) else value


def _token_values(node: node_pb2.Node, order: OrderBy) -> list[str]:
    return [page_tokens.token_value(_leaf_value(node, k.field)) for k in order.keys]


def _after(node: node_pb2.Node, values: list[str], order: OrderBy) -> bool:
    for key, raw in zip(order.keys, values, strict=True):
        mine = _leaf_value(node, key.field)
        theirs: Any = datetime.fromisoformat(raw) if isinstance(mine, datetime) else raw
        if mine != theirs:
            return bool(mine < theirs) if key.desc else bool(mine > theirs)
    return False


class KeysetLeaf(FakeLeaf):
    """A fake leaf with the real leaf's page tokens (:mod:`common.page_tokens`): the sort values
    of the node to continue after, bound to the query. Tokens the top writes must decode."""

    def list_nodes(
        self, req: node_service_pb2.ListNodesRequest
    ) -> node_service_pb2.ListNodesResponse:
        self.calls.append(req)
        if self.fail is not None:
            raise self.fail
        order = parse_order_by(req.order_by)
        ordered = sorted(
            (n for n in self.nodes.values() if matches(n, req.filter)),
            key=functools.cmp_to_key(functools.partial(compare, order=order)),
        )
        if req.page_token:
            after = page_tokens.decode_token(req.page_token, req.filter, order)
            ordered = [n for n in ordered if _after(n, after, order)]
        size = req.page_size or 100
        response = node_service_pb2.ListNodesResponse(nodes=ordered[:size])
        if len(ordered) > size:
            response.next_page_token = page_tokens.encode_token(
                req.filter, order, _token_values(ordered[size - 1], order)
            )
        return response


LEAVES: dict[str, type[FakeLeaf]] = {"opaque": FakeLeaf, "keyset": KeysetLeaf}


def micro(node: node_pb2.Node) -> node_pb2.Node:
    """The node with times in whole microseconds, as a leaf's database keeps them."""
    for stamp in (node.create_time, node.update_time):
        stamp.nanos -= stamp.nanos % 1000
    return node


def random_fed(kinds: list[type[FakeLeaf]], rng: random.Random, sizes: list[int]) -> Federation:
    return Federation(
        [
            kind(
                f"rack-{i}",
                [micro(random_node(rng, f"rack-{i}", f"n-{j:03d}")) for j in range(size)],
            )
            for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True))
        ]
    )


def walk(
    fed: Federation, between: Any, **request: Any
) -> Iterator[node_service_pb2.ListNodesResponse]:
    """Pages through a listing, calling ``between(page)`` after every page but the last."""
    token = ""
    for _ in range(10_000):
        page = fed.page(page_token=token, **request)
        yield page
        token = page.next_page_token
        if not token:
            return
        between(page)
    raise AssertionError("listing never ended")


# -- the known bug: the node returned last is deleted ---------------------------------------------


@pytest.mark.parametrize("kind", sorted(LEAVES))
@pytest.mark.parametrize("deleted", ["last on the page", "last of the other cell"])
def test_the_node_a_cell_returned_last_is_deleted_and_nothing_is_lost(
    kind: str, deleted: str
) -> None:
    leaf = LEAVES[kind]
    a = leaf("conf-a", [make_node("conf-a", f"g-{i:02d}") for i in range(1, 11, 2)])
    b = leaf("conf-b", [make_node("conf-b", f"g-{i:02d}") for i in range(2, 11, 2)])
    fed = Federation([a, b])
    everyone = sorted((n.name for n in fed.everything()), key=lambda n: n.rsplit("/", 1)[1])
    first = fed.page(page_size=3)
    returned = [n.name for n in first.nodes]
    assert returned == everyone[:3]
    gone = returned[2] if deleted == "last on the page" else returned[1]
    fed.leaves[gone.split("/")[1]].remove(gone)
    token = first.next_page_token
    while token:
        page = fed.page(page_size=3, page_token=token)
        returned += [n.name for n in page.nodes]
        token = page.next_page_token
    assert returned == everyone


@pytest.mark.parametrize("kind", sorted(LEAVES))
@pytest.mark.parametrize("order_by", ORDERS)
def test_deleting_every_cells_last_returned_node_after_every_page(kind: str, order_by: str) -> None:
    rng = random.Random(f"{kind}/{order_by}")
    fed = random_fed([LEAVES[kind]] * 3, rng, [17, 9, 25])
    order = parse_order_by(order_by)
    deleted: set[str] = set()

    def delete_last_of_each_cell(page: node_service_pb2.ListNodesResponse) -> None:
        for leaf in fed.leaves.values():
            mine = [n.name for n in page.nodes if n.name in leaf.nodes]
            if mine:
                leaf.remove(mine[-1])
                deleted.add(mine[-1])

    before = fed.everything()
    got = [
        n.name
        for p in walk(fed, delete_last_of_each_cell, page_size=4, order_by=order_by)
        for n in p.nodes
    ]
    assert got == global_order(before, order)
    assert deleted, "the test deleted nothing"


# -- churn between pages ---------------------------------------------------------------------------


def churn(fed: Federation, rng: random.Random, added: list[int]) -> None:
    """Deletes some nodes (returned ones, the last returned ones, not yet returned ones) and
    enrols new ones with random sort keys."""
    for leaf in fed.leaves.values():
        for name in rng.sample(sorted(leaf.nodes), min(len(leaf.nodes), rng.randrange(3))):
            leaf.remove(name)
        for _ in range(rng.randrange(3)):
            added[0] += 1
            leaf.add(micro(random_node(rng, leaf.cell, f"x-{added[0]:04d}")))


def churned_listing(kinds: list[str], rng: random.Random) -> None:
    """One random federation listed with random churn after every page: nodes present
    throughout come once each, in their global order; nothing comes twice."""
    fed = random_fed([LEAVES[k] for k in kinds], rng, [rng.randrange(0, 30) for _ in kinds])
    order_by, flt, size = rng.choice(ORDERS), rng.choice(FILTERS), rng.randrange(1, 9)
    present = {n.name: n for n in fed.everything(flt)}
    seen: list[str] = []
    added = [0]

    def between(page: node_service_pb2.ListNodesResponse) -> None:
        churn(fed, rng, added)
        alive = {n.name for leaf in fed.leaves.values() for n in leaf.nodes.values()}
        for name in list(present):
            if name not in alive:
                del present[name]

    for page in walk(fed, between, page_size=size, order_by=order_by, filter=flt):
        assert len(page.nodes) <= size
        seen += [n.name for n in page.nodes]
    context = (kinds, order_by, flt, size)
    assert len(seen) == len(set(seen)), ("a node was returned twice", context)
    throughout = global_order(list(present.values()), parse_order_by(order_by))
    assert [n for n in seen if n in present] == throughout, context


@pytest.mark.parametrize("kinds", [["opaque"] * 3, ["keyset"] * 3, ["keyset", "opaque", "keyset"]])
def test_churn_never_loses_or_repeats_a_node_present_throughout(kinds: list[str]) -> None:
    rng = random.Random("/".join(kinds))
    for _ in range(40):
        churned_listing(kinds, rng)


@pytest.mark.parametrize("kind", sorted(LEAVES))
def test_a_node_moved_past_the_cursor_does_not_make_the_listing_skip(kind: str) -> None:
    """Ordered by update_time, the node returned last is updated: it moves to the end. The
    nodes it used to precede are still all returned (the moved node may come again)."""
    leaf = LEAVES[kind]
    fed = Federation(
        [
            leaf(
                cell,
                [
                    make_node(cell, f"n-{i:02d}", updated=(1_700_000_000 + 2 * i + c, 0))
                    for i in range(8)
                ],
            )
            for c, cell in enumerate(("rack-1", "rack-2"))
        ]
    )
    first = fed.page(page_size=5, order_by="update_time")
    moved = first.nodes[-1].name
    cell = fed.leaves[moved.split("/")[1]]
    cell.add(make_node(cell.cell, moved.rsplit("/", 1)[1], updated=(1_800_000_000, 0)))
    rest: list[str] = []
    token = first.next_page_token
    while token:
        page = fed.page(page_size=5, order_by="update_time", page_token=token)
        rest += [n.name for n in page.nodes]
        token = page.next_page_token
    others = {n.name for n in fed.everything()} - {n.name for n in first.nodes}
    assert others <= set(rest)
    assert len(rest) == len(set(rest))


# -- how far cells are read -----------------------------------------------------------------------


def test_keyset_leaves_are_asked_for_one_page_only() -> None:
    """Every leaf page that comes with a next token lets the top write the cell's next token
    itself: the cell is then asked for exactly one page. Only a cell's last leaf page (no token
    to check against) is read again, from its start."""
    rng = random.Random(11)
    fed = random_fed([KeysetLeaf] * 3, rng, [40, 40, 40])
    replies: dict[str, list[node_service_pb2.ListNodesResponse]] = {c: [] for c in fed.leaves}
    lister = fed.lister

    async def recording(
        cell: str, req: node_service_pb2.ListNodesRequest, timeout: float
    ) -> node_service_pb2.ListNodesResponse:
        response = await lister(cell, req, timeout)
        replies[cell].append(response)
        return response

    fed.lister = recording  # type: ignore[method-assign]
    size, added = 5, [0]
    pages = list(walk(fed, lambda page: churn(fed, rng, added), page_size=size))
    assert len(pages) > 10
    checked = 0
    for cell, leaf in fed.leaves.items():
        for reply, call in zip(replies[cell], leaf.calls[1:], strict=False):
            if reply.next_page_token:
                assert call.page_size == size
                checked += 1
    assert checked > 20


def test_an_opaque_leaf_only_ever_gets_tokens_it_issued() -> None:
    rng = random.Random(12)
    fed = random_fed([FakeLeaf, KeysetLeaf], rng, [30, 30])
    issued: dict[str, set[str]] = {cell: {""} for cell in fed.leaves}
    lister = fed.lister

    async def recording(
        cell: str, req: node_service_pb2.ListNodesRequest, timeout: float
    ) -> node_service_pb2.ListNodesResponse:
        response = await lister(cell, req, timeout)
        issued[cell].add(response.next_page_token)
        return response

    fed.lister = recording  # type: ignore[method-assign]
    list(walk(fed, lambda page: None, page_size=4, order_by="create_time desc"))
    opaque = fed.leaves["rack-0"]
    assert {c.page_token for c in opaque.calls} <= issued["rack-0"]
    keyset = fed.leaves["rack-1"]
    assert {c.page_token for c in keyset.calls} - issued["rack-1"], "the top wrote no token"


def test_a_partly_used_page_of_a_keyset_leaf_leaves_a_leaf_token_after_the_last_node() -> None:
    order = parse_order_by("")
    leaf = KeysetLeaf("rack-1", [make_node("rack-1", x) for x in "bdfh"])
    first = leaf.list_nodes(node_service_pb2.ListNodesRequest(page_size=3))
    other = CellPage(Cursor(), [make_node("rack-2", "c"), make_node("rack-2", "z")], "")
    seek = cross_list._seeker("", order, first.nodes, first.next_page_token)
    assert seek is not None
    merged, cursors = merge_pages(
        {
            "rack-1": CellPage(Cursor(), first.nodes, first.next_page_token, seek=seek),
            "rack-2": other,
        },
        order,
        3,
    )
    assert [n.name.rsplit("/", 1)[1] for n in merged] == ["b", "c", "d"]
    resumed = cursors["rack-1"]
    assert isinstance(resumed, Cursor) and resumed.consumed == 0 and not resumed.last
    assert page_tokens.decode_token(resumed.token, "", order) == ["d"]
    assert cursors["rack-2"] == Cursor("", 1, "c")


def test_a_leaf_token_for_another_query_or_other_values_is_not_imitated() -> None:
    order = parse_order_by("resource_class")
    nodes = [make_node("rack-1", "a", resource_class="gpu")]
    assert cross_list._seeker("", order, nodes, page_tokens.encode_token("", order, ["gpu", "a"]))
    for token in (
        page_tokens.encode_token("maintenance = true", order, ["gpu", "a"]),
        page_tokens.encode_token("", order, ["cpu", "a"]),
        page_tokens.encode_token("", order, ["gpu", "b"]),
        page_tokens.encode_token("", order, ["gpu", "a", "extra"]),
        json.dumps({"after": "00"}),
        "",
    ):
        assert cross_list._seeker("", order, nodes, token) is None


def test_a_leaf_token_with_its_time_at_another_utc_offset_is_recognised() -> None:
    """A leaf on PostgreSQL writes times at its session's UTC offset; the instant is what
    counts. Times finer than the leaf's microseconds cannot be one of its nodes."""
    order = parse_order_by("create_time desc")
    node = make_node("rack-1", "a", created=(1_700_000_000, 5000))
    theirs = page_tokens.encode_token("", order, ["2023-11-14T23:13:20.000005+01:00", "a"])
    seek = cross_list._seeker("", order, [node], theirs)
    assert seek is not None
    assert page_tokens.decode_token(seek(node) or "", "", order) == [
        "2023-11-14T22:13:20.000005+00:00",
        "a",
    ]
    finer = make_node("rack-1", "a", created=(1_700_000_000, 5001))
    assert cross_list._seeker("", order, [finer], theirs) is None
    assert seek(finer) is None


# -- down cells ------------------------------------------------------------------------------------


def test_a_cell_down_after_a_partly_used_page_stays_unreachable_and_the_rest_completes() -> None:
    rng = random.Random(21)
    fed = random_fed([KeysetLeaf, FakeLeaf, KeysetLeaf], rng, [20, 20, 20])
    first = fed.page(page_size=7)
    fed.leaves["rack-1"].fail = Unavailable("gone")
    names = [n.name for n in first.nodes]
    token = first.next_page_token
    while token:
        page = fed.page(page_size=7, page_token=token)
        assert list(page.unreachable) == ["cells/rack-1"]
        names += [n.name for n in page.nodes]
        token = page.next_page_token
    assert len(names) == len(set(names))
    for cell in ("rack-0", "rack-2"):
        assert set(fed.leaves[cell].nodes) <= set(names)


# -- the token -------------------------------------------------------------------------------------


def _raw_token(payload: dict[str, Any]) -> str:
    raw = zlib.compress(json.dumps(payload).encode())
    return Fernet(TOKEN_KEY).encrypt(raw).decode()


def _refused(fed: Federation, **request: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fed.page(**request)
    assert [v.field for v in info.value.violations] == ["page_token"]
    assert not any(leaf.calls for leaf in fed.leaves.values()), "a cell was asked"
    return info.value


def test_cursors_with_sort_keys_round_trip() -> None:
    query = query_fingerprint("", parse_order_by("create_time desc, resource_class"))
    cursors = {"rack-1": Cursor("t", 3, "n-7", ((1_700_000_000, 5000), "gpu")), "rack-2": Cursor()}
    assert TOKENS.open(TOKENS.seal(query, cursors), query) == cursors


@pytest.mark.parametrize(
    ("order_by", "cursor"),
    [
        ("", Cursor("", 1, "a", ("gpu",))),  # a key value too many
        ("resource_class", Cursor("", 1, "a")),  # a key value missing
        ("create_time", Cursor("", 1, "a", ("2024-01-01",))),  # text where a time belongs
        ("resource_class", Cursor("", 1, "a", ((1, 0),))),  # a time where text belongs
        ("", Cursor("", 2, "")),  # read-ahead without a position
    ],
)
def test_a_cursor_that_does_not_fit_the_order_is_refused(order_by: str, cursor: Cursor) -> None:
    fed = Federation([KeysetLeaf("rack-1", [make_node("rack-1", "a")])])
    token = TOKENS.seal(query_fingerprint("", parse_order_by(order_by)), {"rack-1": cursor})
    _refused(fed, page_token=token, order_by=order_by)


@pytest.mark.parametrize(
    "cursor",
    [
        ["", 1, "a", [[1, True]]],
        ["", 1, "a", [[1, 2, 3]]],
        ["", 1, "a", [[1, -1]]],
        ["", 1, "a", []],
        ["", 1, "", ["x"]],
        ["", True, "a"],
        ["", 1, "a", ["x"], "extra"],
        {"token": ""},
    ],
)
def test_a_malformed_cursor_is_refused(cursor: Any) -> None:
    fed = Federation([KeysetLeaf("rack-1", [make_node("rack-1", "a")])])
    query = query_fingerprint("", parse_order_by("resource_class"))
    token = _raw_token({"v": 2, "q": query, "c": {"rack-1": cursor}})
    _refused(fed, page_token=token, order_by="resource_class")


def test_a_token_of_the_count_based_format_is_refused() -> None:
    fed = Federation([KeysetLeaf("rack-1", [make_node("rack-1", "a")])])
    query = query_fingerprint("", parse_order_by(""))
    token = _raw_token({"v": 1, "q": query, "c": {"rack-1": ["", 1, "a"]}})
    assert "start again" in _refused(fed, page_token=token).message


def test_an_edited_token_is_refused() -> None:
    rng = random.Random(3)
    fed = random_fed([KeysetLeaf, KeysetLeaf], rng, [10, 10])
    token = fed.page(page_size=3).next_page_token
    for leaf in fed.leaves.values():
        leaf.calls.clear()
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[len(raw) // 2] ^= 1
    _refused(fed, page_size=3, page_token=base64.urlsafe_b64encode(bytes(raw)).decode())


def test_a_token_used_with_another_filter_or_order_is_refused() -> None:
    rng = random.Random(4)
    fed = random_fed([KeysetLeaf, FakeLeaf], rng, [10, 10])
    token = fed.page(page_size=3, order_by="resource_class").next_page_token
    for leaf in fed.leaves.values():
        leaf.calls.clear()
    for request in ({"order_by": "resource_class desc"}, {"filter": "maintenance = true"}):
        error = _refused(fed, page_size=3, page_token=token, **request)
        assert "filter or order_by" in error.message
