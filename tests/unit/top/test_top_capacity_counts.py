"""Capacity counters and query validation (top_cell.capacity)."""

from __future__ import annotations

import grpc
import pytest

from common.errors import InvalidArgument
from rackcells.v1 import node_pb2
from top_cell.capacity import (
    FIELDS,
    CapacityQuery,
    CountTable,
    contribution,
    pack,
    parse_query,
    unpack,
)

PS = node_pb2.ProvisionState


def as_dict(delta) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {k: v for k, v in zip(FIELDS, delta, strict=True) if v}


@pytest.mark.parametrize(
    ("state", "maintenance", "allocated", "expected"),
    [
        (PS.PROVISION_STATE_AVAILABLE, False, False, {"total": 1, "available": 1}),
        (PS.PROVISION_STATE_AVAILABLE, True, False, {"total": 1, "maintenance": 1}),
        (PS.PROVISION_STATE_AVAILABLE, False, True, {"total": 1, "allocated": 1}),
        (PS.PROVISION_STATE_DEPLOYING, False, True, {"total": 1, "allocated": 1, "deploying": 1}),
        (PS.PROVISION_STATE_WAIT_CALL_BACK, False, False, {"total": 1, "deploying": 1}),
        (PS.PROVISION_STATE_ACTIVE, False, True, {"total": 1, "allocated": 1, "active": 1}),
        (PS.PROVISION_STATE_CLEAN_FAILED, False, False, {"total": 1, "failed": 1}),
        (PS.PROVISION_STATE_DEPLOY_FAILED, False, False, {"total": 1, "failed": 1}),
        (PS.PROVISION_STATE_ERROR, True, False, {"total": 1, "failed": 1, "maintenance": 1}),
        (PS.PROVISION_STATE_ENROLL, False, False, {"total": 1}),
        (PS.PROVISION_STATE_CLEANING, False, False, {"total": 1}),
    ],
)
def test_contribution_follows_the_proto_definitions(
    state, maintenance, allocated, expected
) -> None:  # type: ignore[no-untyped-def]
    assert as_dict(contribution(state, maintenance, allocated)) == expected


def test_count_table_drops_empty_groups() -> None:
    table = CountTable()
    one = pack(contribution(PS.PROVISION_STATE_AVAILABLE, False, False))
    table.add("baremetal", frozenset({"A"}), one)
    table.add("baremetal", frozenset({"A"}), one)
    assert table.count(CapacityQuery(required=frozenset({"A"})))[:2] == [2, 2]
    table.remove("baremetal", frozenset({"A"}), one)
    table.remove("baremetal", frozenset({"A"}), one)
    assert table.classes() == [] and table.groups() == 0
    assert table.count(CapacityQuery()) == [0] * len(FIELDS)


def test_packed_counters_add_and_subtract_field_by_field() -> None:
    a, b = [3, 0, 7, 1, 0, 2, 9], [1, 0, 2, 1, 0, 2, 4]
    assert unpack(pack(a) + pack(b)) == [4, 0, 9, 2, 0, 4, 13]
    assert unpack(pack(a) - pack(b)) == [2, 0, 5, 0, 0, 0, 5]
    big = [2**31 - 1] * len(FIELDS)
    assert unpack(pack(big)) == big


def test_filters_over_many_trait_sets() -> None:
    table = CountTable()
    one = pack(contribution(PS.PROVISION_STATE_AVAILABLE, False, False))
    sets = [frozenset(f"T{j}" for j in range(8) if i >> j & 1) for i in range(256)]
    for traits in sets:
        table.add("baremetal", traits, one)
    for req, forb in (
        ({"T0"}, set()),
        ({"T0", "T3"}, {"T5"}),
        (set(), {"T1", "T2"}),
        ({"T9"}, set()),
    ):
        expected = sum(1 for t in sets if req <= t and not forb & t)
        query = CapacityQuery("baremetal", frozenset(req), frozenset(forb))
        assert table.count(query)[:2] == [expected, expected]


def test_parse_query_accepts_a_good_filter() -> None:
    q = parse_query("gpu.large:v1", ["CUSTOM_A", "HW_X"], ["CUSTOM_B"])
    assert q == CapacityQuery(
        "gpu.large:v1", frozenset({"CUSTOM_A", "HW_X"}), frozenset({"CUSTOM_B"})
    )
    assert "with traits CUSTOM_A, HW_X" in q.describe()


def test_parse_query_names_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_query("-bad", ["ok"], ["X", "A B"], prefix="allocation.")
    fields = [v.field for v in info.value.violations]
    assert fields == [
        "allocation.resource_class",
        "allocation.required_traits[0]",
        "allocation.forbidden_traits[1]",
    ]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_parse_query_requires_a_class_only_when_asked() -> None:
    assert parse_query("", [], []).resource_class == ""
    with pytest.raises(InvalidArgument, match="resource_class: is required"):
        parse_query("", [], [], class_required=True)
