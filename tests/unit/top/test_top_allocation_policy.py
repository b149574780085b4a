"""How the top cell orders candidate cells and parses allocation names."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument
from rackcells.v1 import allocation_service_pb2
from top_cell.allocation import parse_allocation_name, rank_cells

P = allocation_service_pb2.AllocationPolicy
AVAILABLE = {"rack-c": 5, "rack-a": 5, "rack-b": 9, "rack-d": 1, "rack-e": 0}


def test_spread_prefers_most_available_then_name() -> None:
    assert rank_cells(AVAILABLE, P.ALLOCATION_POLICY_SPREAD) == [
        "rack-b",
        "rack-a",
        "rack-c",
        "rack-d",
    ]


def test_unspecified_is_spread() -> None:
    assert rank_cells(AVAILABLE, P.ALLOCATION_POLICY_UNSPECIFIED) == rank_cells(
        AVAILABLE, P.ALLOCATION_POLICY_SPREAD
    )


def test_pack_prefers_fewest_available_then_name() -> None:
    assert rank_cells(AVAILABLE, P.ALLOCATION_POLICY_PACK) == [
        "rack-d",
        "rack-a",
        "rack-c",
        "rack-b",
    ]


def test_cells_without_available_nodes_are_never_candidates() -> None:
    assert rank_cells({"rack-a": 0, "rack-b": -1}, P.ALLOCATION_POLICY_PACK) == []


def test_parse_allocation_name() -> None:
    assert parse_allocation_name("cells/rack-1/allocations/a-1") == ("rack-1", "a-1")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "cells/rack-1",
        "cells/rack-1/nodes/x",
        "cells/Rack/allocations/1",
        "cells/r/allocations/",
    ],
)
def test_bad_allocation_names_name_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_allocation_name(name)
    assert [v.field for v in info.value.violations] == ["name"]
