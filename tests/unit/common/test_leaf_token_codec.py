"""common.page_tokens: the leaves' keyset page tokens, as the leaf issues them and the top writes
them. The format is pinned: clients hold tokens across upgrades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from common import page_tokens
from common.errors import InvalidArgument
from common.listing import parse_order_by
from rackcells.v1 import node_pb2


@pytest.mark.parametrize(
    ("filter_text", "order_by", "values", "token"),
    [
        ("", "", ["n-1"], "eyJxIjoiaEpDeV9XUmhrQUJZIiwiYWZ0ZXIiOlsibi0xIl19"),
        (
            'resource_class = "gpu"',
            "create_time desc, resource_class",
            ["2026-03-01T00:00:01.500000+00:00", "gpu", "n-07"],
            "eyJxIjoiT3NacTJtUUp2TW5fIiwiYWZ0ZXIiOlsiMjAyNi0wMy0wMVQwMDowMDowMS41MDAwMDArMDA6MDAi"
            "LCJncHUiLCJuLTA3Il19",
        ),
    ],
)
def test_tokens_keep_the_bytes_leaves_have_always_issued(
    filter_text: str, order_by: str, values: list[str], token: str
) -> None:
    order = parse_order_by(order_by)
    assert page_tokens.encode_token(filter_text, order, values) == token
    assert page_tokens.decode_token(token, filter_text, order) == values


def test_a_naive_time_is_utc_and_an_aware_one_keeps_its_offset() -> None:
    naive = datetime(2026, 3, 1, 12, 0, 0, 250)
    plus_two = datetime(2026, 3, 1, 14, 0, 0, 250, tzinfo=timezone(timedelta(hours=2)))
    assert page_tokens.token_value(naive) == "2026-03-01T12:00:00.000250+00:00"
    assert page_tokens.token_value(plus_two) == "2026-03-01T14:00:00.000250+02:00"
    assert page_tokens.token_value("gpu") == "gpu"
    order = parse_order_by("update_time")
    assert page_tokens.typed_values(
        order, [page_tokens.token_value(naive), "a"]
    ) == page_tokens.typed_values(order, [page_tokens.token_value(plus_two), "a"])


def _node() -> node_pb2.Node:
    return node_pb2.Node(
        name="cells/rack-1/nodes/n-07",
        resource_class="gpu",
        provision_state=node_pb2.PROVISION_STATE_AVAILABLE,
        power_state=node_pb2.POWER_STATE_ON,
        create_time=timestamp_pb2.Timestamp(seconds=1_772_323_200, nanos=1_500_000),
        update_time=timestamp_pb2.Timestamp(seconds=1_772_323_201),
    )


def test_a_node_messages_token_values_are_what_the_leaf_stores() -> None:
    order = parse_order_by("provision_state, power_state desc, create_time, update_time desc")
    assert page_tokens.node_token_values(_node(), order) == [
        "AVAILABLE",
        "ON",
        "2026-03-01T00:00:00.001500+00:00",
        "2026-03-01T00:00:01+00:00",
        "n-07",
    ]
    assert page_tokens.node_token_values(_node(), parse_order_by("resource_class")) == [
        "gpu",
        "n-07",
    ]


def test_a_node_token_round_trips_to_the_same_instants() -> None:
    order = parse_order_by("create_time desc")
    values = page_tokens.node_token_values(_node(), order)
    assert values is not None
    token = page_tokens.encode_token("maintenance = false", order, values)
    decoded = page_tokens.decode_token(token, " maintenance = false ", order)
    assert page_tokens.typed_values(order, decoded) == [
        datetime(2026, 3, 1, 0, 0, 0, 1500, tzinfo=UTC),
        "n-07",
    ]


def test_a_time_finer_than_microseconds_has_no_token_values() -> None:
    node = _node()
    node.update_time.nanos = 1
    assert page_tokens.node_token_values(node, parse_order_by("update_time")) is None
    assert page_tokens.node_token_values(node, parse_order_by("create_time")) is not None


def test_a_token_of_another_query_or_with_values_that_do_not_fit_is_refused() -> None:
    order = parse_order_by("create_time")
    good = page_tokens.encode_token("", order, ["2026-03-01T00:00:00+00:00", "n-1"])
    for token, flt, order_by in [
        (good, "maintenance = true", "create_time"),
        (good, "", "create_time desc"),
        (page_tokens.encode_token("", order, ["yesterday", "n-1"]), "", "create_time"),
        (page_tokens.encode_token("", order, ["n-1"]), "", "create_time"),
        ("not a token", "", "create_time"),
    ]:
        with pytest.raises(InvalidArgument) as exc:
            page_tokens.decode_token(token, flt, parse_order_by(order_by))
        assert [v.field for v in exc.value.violations] == ["page_token"]
