"""leaf_cell.queries: opaque page tokens and keyset paging, against an in-memory SQLite DB; the
values the leaf writes for a row are those the top computes from the row's API message."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from common.errors import InvalidArgument
from common.listing import parse_filter, parse_order_by
from common.page_tokens import node_token_values
from leaf_cell import queries
from leaf_cell.convert import orm_to_node
from leaf_cell.db.models import Base, NodeRow, TraitRow


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def test_a_token_round_trips_its_values() -> None:
    order = parse_order_by("create_time desc")
    values = ["2026-01-01T00:00:00+00:00", "node-7"]
    token = queries.encode_token("maintenance = true", order, values)
    assert queries.decode_token(token, "maintenance = true", order) == values


def test_a_token_is_url_safe_without_padding() -> None:
    token = queries.encode_token('resource_class = "gpu"', parse_order_by(""), ["n-1"])
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)


def test_surrounding_whitespace_of_the_filter_does_not_change_the_query() -> None:
    order = parse_order_by("")
    token = queries.encode_token("maintenance = true", order, ["n-1"])
    assert queries.decode_token(token, "  maintenance = true \n", order) == ["n-1"]


@pytest.mark.parametrize(
    ("filter_text", "order_by"),
    [
        ("maintenance = false", ""),
        ("maintenance = true", "name desc"),
        ("maintenance = true", "create_time"),
    ],
)
def test_a_token_of_another_filter_or_order_is_rejected_naming_page_token(
    filter_text: str, order_by: str
) -> None:
    token = queries.encode_token("maintenance = true", parse_order_by(""), ["n-1"])
    with pytest.raises(InvalidArgument) as exc:
        queries.decode_token(token, filter_text, parse_order_by(order_by))
    assert fields_of(exc) == ["page_token"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        _b64("null"),
        _b64("[]"),
        _b64("42"),
        _b64('{"after": ["n"]}'),
        _b64('{"q": "x"}'),
        _b64("\xff\xfe"),
    ],
)
def test_a_corrupt_token_is_rejected_naming_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        queries.decode_token(token, "", parse_order_by(""))
    assert fields_of(exc) == ["page_token"]


def test_a_token_with_the_wrong_number_of_values_is_rejected() -> None:
    order = parse_order_by("")
    token = queries.encode_token("", order, ["n-1", "extra"])
    with pytest.raises(InvalidArgument):
        queries.decode_token(token, "", order)


@pytest.mark.parametrize(
    ("order_by", "values"),
    [("create_time", ["not-a-time", "n-1"]), ("update_time desc", [17, "n-1"])],
)
def test_a_token_whose_values_do_not_fit_the_sort_keys_is_rejected_naming_page_token(
    order_by: str, values: list[Any]
) -> None:
    """Tokens are not signed; a well-formed one with unusable values must become
    INVALID_ARGUMENT (page_token), not a ValueError/TypeError that surfaces as INTERNAL."""
    order = parse_order_by(order_by)
    token = queries.encode_token("", order, values)
    assert json.loads(base64.urlsafe_b64decode(token + "==="))["after"] == values
    with pytest.raises(InvalidArgument) as exc:
        queries.seek_after(order, queries.decode_token(token, "", order))
    assert fields_of(exc) == ["page_token"]


# -- keyset paging over real rows -----------------------------------------------------------

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ROWS = [
    # node_id, resource_class, create_time offset (s), traits
    ("n-00", "gpu", 3, ["CUSTOM_A"]),
    ("n-01", "baremetal", 1, []),
    ("n-02", "gpu", 1, ["CUSTOM_A", "CUSTOM_B"]),
    ("n-03", "storage", 0, ["CUSTOM_B"]),
    ("n-04", "baremetal", 3, []),
    ("n-05", "gpu", 2, ["CUSTOM_A"]),
    ("n-06", "storage", 1, []),
]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = create_engine("sqlite://")
    Base.metadata.create_all(eng)
    with Session(eng) as session, session.begin():
        for node_id, rc, offset, traits in ROWS:
            session.add(
                NodeRow(
                    uid=node_id,
                    node_id=node_id,
                    resource_class=rc,
                    bmc_driver="fake",
                    provision_state="ENROLL",
                    create_time=T0 + timedelta(seconds=offset),
                    update_time=T0,
                    provision_update_time=T0,
                    trait_rows=[TraitRow(trait=t) for t in traits],
                )
            )
    yield eng
    eng.dispose()


def page_through(engine: Engine, filter_text: str, order_by: str, size: int) -> list[str]:
    flt, order = parse_filter(filter_text), parse_order_by(order_by)
    listed: list[str] = []
    token = ""
    with Session(engine) as session:
        for _ in range(100):
            stmt = queries.apply_filter(select(NodeRow), flt)
            if token:
                stmt = stmt.where(
                    queries.seek_after(order, queries.decode_token(token, filter_text, order))
                )
            rows = list(session.scalars(queries.apply_order(stmt, order).limit(size + 1)))
            listed.extend(r.node_id for r in rows[:size])
            if len(rows) <= size:
                return listed
            token = queries.encode_token(
                filter_text, order, queries.sort_values(rows[size - 1], order)
            )
    raise AssertionError("paging never ended")


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("", ["n-00", "n-01", "n-02", "n-03", "n-04", "n-05", "n-06"]),
        ("name desc", ["n-06", "n-05", "n-04", "n-03", "n-02", "n-01", "n-00"]),
        ("resource_class desc", ["n-03", "n-06", "n-00", "n-02", "n-05", "n-01", "n-04"]),
        ("create_time", ["n-03", "n-01", "n-02", "n-06", "n-05", "n-00", "n-04"]),
        ("create_time desc, name desc", ["n-04", "n-00", "n-05", "n-06", "n-02", "n-01", "n-03"]),
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_keyset_pages_concatenate_to_the_full_order(
    engine: Engine, order_by: str, expected: list[str], size: int
) -> None:
    assert page_through(engine, "", order_by, size) == expected


@pytest.mark.parametrize(
    ("filter_text", "expected"),
    [
        ('traits:"CUSTOM_A"', ["n-00", "n-02", "n-05"]),
        ('-traits:"CUSTOM_A"', ["n-01", "n-03", "n-04", "n-06"]),
        ('traits:"CUSTOM_A" AND traits:"CUSTOM_B"', ["n-02"]),
        ('resource_class = "gpu" AND -traits:"CUSTOM_B"', ["n-00", "n-05"]),
    ],
)
def test_trait_filters_select_by_presence_and_absence(
    engine: Engine, filter_text: str, expected: list[str]
) -> None:
    assert page_through(engine, filter_text, "", 2) == expected


@pytest.mark.parametrize(
    "order_by",
    [
        "",
        "resource_class desc",
        "provision_state, power_state desc, create_time",
        "update_time desc, name desc",
    ],
)
def test_a_rows_token_values_are_those_of_its_api_node(engine: Engine, order_by: str) -> None:
    """The top writes a leaf's tokens from the nodes it listed (``node_token_values``); they
    must be the values the leaf writes from its rows, byte for byte."""
    order = parse_order_by(order_by)
    with Session(engine) as session:
        rows = list(session.scalars(select(NodeRow)))
        assert rows
        for row in rows:
            node = orm_to_node(row, "rack-1")
            assert node_token_values(node, order) == queries.sort_values(row, order)
