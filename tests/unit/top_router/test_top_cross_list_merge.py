"""Cross-cell ListNodes: per-cell pages merge into one order, one cursor per cell in the token,
and paging through returns every node exactly once whatever the cells' sizes, page size,
order_by or filter; failing cells end up in unreachable; bad input is refused before any cell
is asked."""

from __future__ import annotations

import random

import grpc
import pytest
from top_router_fakes import (
    FakeLeaf,
    Federation,
    global_order,
    make_node,
    matches,
    random_node,
)

from common.errors import InvalidArgument, Unavailable
from common.listing import parse_order_by
from top_cell.cross_list import (
    DONE,
    CellPage,
    Cursor,
    merge_pages,
)


def fed_of(sizes: dict[str, int], rng: random.Random) -> Federation:
    return Federation(
        [
            FakeLeaf(cell, [random_node(rng, cell, f"n-{rng.randrange(60):03d}") for _ in range(n)])
            for cell, n in sizes.items()
        ]
    )


ORDERS = [
    "",
    "name desc",
    "resource_class",
    "resource_class desc",
    "provision_state, create_time desc",
    "power_state desc, update_time",
    "create_time",
    "update_time desc, resource_class, name desc",
]


@pytest.mark.parametrize("order_by", ORDERS)
def test_every_node_once_in_order_over_cells_of_different_sizes(order_by: str) -> None:
    rng = random.Random(order_by)
    fed = fed_of({"rack-1": 23, "rack-2": 0, "rack-3": 5, "rack-4": 41}, rng)
    everything = [n for leaf in fed.leaves.values() for n in leaf.nodes.values()]
    got = fed.names(page_size=7, order_by=order_by)
    assert got == global_order(everything, parse_order_by(order_by))


def test_random_federations_page_sizes_and_filters() -> None:
    rng = random.Random(1234)
    filters = ["", 'resource_class = "gpu"', "maintenance = false", 'traits:"CUSTOM_A"']
    for _ in range(60):
        cells = {f"rack-{i}": rng.randrange(0, 35) for i in range(rng.randrange(1, 5))}
        fed = fed_of(cells, rng)
        order_by = rng.choice(ORDERS)
        flt = rng.choice(filters)
        size = rng.randrange(1, 16)
        everything = [
            n for leaf in fed.leaves.values() for n in leaf.nodes.values() if matches(n, flt)
        ]
        got = fed.names(page_size=size, order_by=order_by, filter=flt)
        assert got == global_order(everything, parse_order_by(order_by)), (cells, order_by, size)
        pages = list(fed.pages(page_size=size, order_by=order_by, filter=flt))
        assert all(len(p.nodes) <= size for p in pages)


def test_ties_across_cells_break_by_node_id_then_cell() -> None:
    fed = Federation(
        [FakeLeaf(c, [make_node(c, "same"), make_node(c, "a")]) for c in ("rack-2", "rack-1")]
    )
    assert fed.names(page_size=3, order_by="resource_class") == [
        "cells/rack-1/nodes/a",
        "cells/rack-2/nodes/a",
        "cells/rack-1/nodes/same",
        "cells/rack-2/nodes/same",
    ]


def test_page_size_larger_than_half_the_maximum_still_pages_correctly() -> None:
    rng = random.Random(7)
    fed = fed_of({"rack-1": 1300, "rack-2": 700}, rng)
    everything = [n for leaf in fed.leaves.values() for n in leaf.nodes.values()]
    assert fed.names(page_size=900) == global_order(everything, parse_order_by(""))


def test_nodes_added_or_removed_between_pages_never_repeat() -> None:
    rng = random.Random(99)
    fed = fed_of({"rack-1": 30, "rack-2": 30}, rng)
    seen: list[str] = []
    survivors = {n for leaf in fed.leaves.values() for n in leaf.nodes}
    token = ""
    for round_ in range(1000):
        page = fed.page(page_size=6, page_token=token)
        seen.extend(n.name for n in page.nodes)
        token = page.next_page_token
        if not token:
            break
        leaf = fed.leaves[f"rack-{1 + round_ % 2}"]
        # A new node that sorts before everything, and one of the not-yet-seen ones goes away.
        leaf.add(make_node(leaf.cell, f"a-{round_:03d}"))
        remaining = sorted(n for n in leaf.nodes if n not in seen and "/nodes/a-" not in n)
        if remaining and round_ % 3 == 0:
            gone = rng.choice(remaining)
            leaf.remove(gone)
            survivors.discard(gone)
    assert len(seen) == len(set(seen)), "a node was returned twice"
    assert survivors <= set(seen), "a node present throughout was skipped"


def test_a_cell_failing_mid_listing_is_reported_and_left_out_from_then_on() -> None:
    rng = random.Random(5)
    fed = fed_of({"rack-1": 20, "rack-2": 20, "rack-3": 20}, rng)
    first = fed.page(page_size=10)
    assert not first.unreachable
    fed.leaves["rack-2"].fail = Unavailable("gone")
    second = fed.page(page_size=10, page_token=first.next_page_token)
    assert list(second.unreachable) == ["cells/rack-2"]
    fed.leaves["rack-2"].fail = None  # back, but it would now be out of order: stays out
    rest = [second, *fed.pages(page_size=10, page_token=second.next_page_token)]
    assert all(list(p.unreachable) == ["cells/rack-2"] for p in rest)
    names = [n.name for p in (first, *rest) for n in p.nodes]
    assert len(names) == len(set(names))
    for cell in ("rack-1", "rack-3"):
        assert set(fed.leaves[cell].nodes) <= set(names)


def test_a_down_cell_is_not_asked_and_listed_as_unreachable() -> None:
    fed = fed_of({"rack-1": 3, "rack-2": 3}, random.Random(0))
    fed.down.add("rack-1")
    page = fed.page()
    assert list(page.unreachable) == ["cells/rack-1"]
    assert {n.name.split("/")[1] for n in page.nodes} == {"rack-2"}
    assert not fed.leaves["rack-1"].calls


def test_an_rpc_error_of_a_cell_makes_it_unreachable() -> None:
    class Boom(grpc.aio.AioRpcError):
        def __init__(self) -> None:
            super().__init__(
                grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom"
            )

    fed = fed_of({"rack-1": 3, "rack-2": 3}, random.Random(0))
    fed.leaves["rack-2"].fail = Boom()
    page = fed.page()
    assert list(page.unreachable) == ["cells/rack-2"]
    assert len(page.nodes) == 3


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"filter": "colour = red"}, "filter"),
        ({"order_by": "uid"}, "order_by"),
        ({"page_token": "not-a-token"}, "page_token"),
    ],
)
def test_bad_input_is_refused_before_any_cell_is_asked(
    request_fields: dict[str, object], field: str
) -> None:
    fed = fed_of({"rack-1": 3}, random.Random(0))
    with pytest.raises(InvalidArgument) as info:
        fed.page(**request_fields)
    assert [v.field for v in info.value.violations] == [field]
    assert not fed.leaves["rack-1"].calls


def test_leaf_requests_carry_each_cells_cursor_and_the_query() -> None:
    fed = fed_of({"rack-1": 10, "rack-2": 10}, random.Random(3))
    first = fed.page(page_size=4, filter="maintenance = false", order_by="name desc")
    fed.page(
        page_size=4,
        filter="maintenance = false",
        order_by="name desc",
        page_token=first.next_page_token,
    )
    for leaf in fed.leaves.values():
        assert [r.filter for r in leaf.calls] == ["maintenance = false"] * 2
        assert [r.order_by for r in leaf.calls] == ["name desc"] * 2
        assert leaf.calls[0].page_token == ""
        assert leaf.calls[0].page_size == 4


def test_merge_stops_where_a_cell_with_more_nodes_runs_out() -> None:
    order = parse_order_by("")
    pages = {
        "rack-1": CellPage(
            Cursor(), [make_node("rack-1", "b"), make_node("rack-1", "d")], next_token="more"
        ),
        "rack-2": CellPage(
            Cursor(), [make_node("rack-2", "a"), make_node("rack-2", "z")], next_token=""
        ),
    }
    merged, cursors = merge_pages(pages, order, 10)
    # rack-1 may have "e" next, which sorts before rack-2's "z": the page ends after "d".
    assert [n.name for n in merged] == [
        "cells/rack-2/nodes/a",
        "cells/rack-1/nodes/b",
        "cells/rack-1/nodes/d",
    ]
    assert cursors == {"rack-1": Cursor("more"), "rack-2": Cursor("", 1, "a")}


def test_fully_used_pages_leave_done_or_the_leaf_token() -> None:
    order = parse_order_by("")
    pages = {
        "rack-1": CellPage(
            Cursor("t0", 1, "a"), [make_node("rack-1", "a")], next_token="t1", skip=1
        ),
        "rack-2": CellPage(Cursor(), [], next_token=""),
    }
    merged, cursors = merge_pages(pages, order, 5)
    assert merged == []
    assert cursors == {"rack-1": Cursor("t1"), "rack-2": DONE}
