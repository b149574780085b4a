"""NodeService.ListNodes at a leaf: paging, page sizes, filters, order_by, page tokens.

Large inventories are inserted straight into the database (the API's create path is covered in
test_create_node.py); every listing goes through gRPC.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from leafkit import LeafClient, expect_error, node_name, valid_node, violation_fields

from common.listing import parse_order_by
from leaf_cell import queries
from rackcells.v1 import node_service_pb2


def list_request(**fields: Any) -> node_service_pb2.ListNodesRequest:
    fields.setdefault("parent", "cells/rack-1")
    return node_service_pb2.ListNodesRequest(**fields)


def ids(response: node_service_pb2.ListNodesResponse) -> list[str]:
    return [n.name.rsplit("/", 1)[1] for n in response.nodes]


# -- paging and page sizes ------------------------------------------------------------------


def test_paging_through_250_nodes_by_100_returns_each_once_in_name_order(leaf: LeafClient) -> None:
    leaf.seed(250)
    pages = list(leaf.list_pages(page_size=100))
    assert [len(p.nodes) for p in pages] == [100, 100, 50]
    assert all(p.next_page_token for p in pages[:-1])
    assert pages[-1].next_page_token == ""
    listed = [i for p in pages for i in ids(p)]
    assert listed == [f"n-{i:04d}" for i in range(250)]


def test_a_full_last_page_carries_no_next_page_token(leaf: LeafClient) -> None:
    leaf.seed(3)
    page = leaf.stub.ListNodes(list_request(page_size=3))
    assert ids(page) == ["n-0000", "n-0001", "n-0002"]
    assert page.next_page_token == ""


def test_listing_an_empty_cell_returns_no_nodes_and_no_token(leaf: LeafClient) -> None:
    page = leaf.stub.ListNodes(list_request())
    assert list(page.nodes) == []
    assert page.next_page_token == ""
    assert list(page.unreachable) == []


def test_page_size_zero_means_100(leaf: LeafClient) -> None:
    leaf.seed(150)
    page = leaf.stub.ListNodes(list_request(page_size=0))
    assert len(page.nodes) == 100
    assert page.next_page_token


def test_page_size_above_1000_is_lowered_to_1000(leaf: LeafClient) -> None:
    leaf.seed(1001)
    first = leaf.stub.ListNodes(list_request(page_size=5000))
    assert len(first.nodes) == 1000
    assert first.next_page_token
    rest = leaf.stub.ListNodes(list_request(page_size=5000, page_token=first.next_page_token))
    assert ids(rest) == ["n-1000"]
    assert rest.next_page_token == ""


@pytest.mark.parametrize("size", [-1, -1000])
def test_a_negative_page_size_is_invalid_argument_naming_page_size(
    leaf: LeafClient, size: int
) -> None:
    leaf.seed(2)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.ListNodes, list_request(page_size=size)
    )
    assert violation_fields(err) == ["page_size"]


def test_list_returns_the_same_nodes_as_get(leaf: LeafClient) -> None:
    created = [leaf.create(f"node-{i}", valid_node(traits=["CUSTOM_A"])) for i in range(3)]
    page = leaf.stub.ListNodes(list_request())
    assert list(page.nodes) == [leaf.get(f"node-{i}") for i in range(3)]
    assert [n.name for n in page.nodes] == [c.name for c in created]


# -- parent ---------------------------------------------------------------------------------


def test_cells_dash_at_a_leaf_lists_its_own_nodes(leaf: LeafClient) -> None:
    leaf.seed(3)
    page = leaf.stub.ListNodes(list_request(parent="cells/-"))
    assert [n.name for n in page.nodes] == [node_name(f"n-{i:04d}") for i in range(3)]
    assert list(page.unreachable) == []


def test_listing_another_cell_is_not_found(leaf: LeafClient) -> None:
    leaf.seed(1)
    err = expect_error(
        grpc.StatusCode.NOT_FOUND, leaf.stub.ListNodes, list_request(parent="cells/rack-2")
    )
    assert "rack-2" in err.details()


@pytest.mark.parametrize("parent", ["", "cells", "cells/Rack_1", "rack-1", "cells/rack-1/nodes"])
def test_a_malformed_parent_is_invalid_argument_naming_parent(
    leaf: LeafClient, parent: str
) -> None:
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.ListNodes, list_request(parent=parent)
    )
    assert violation_fields(err) == ["parent"]


# -- filters --------------------------------------------------------------------------------

INVENTORY = {
    # node id: (resource_class, traits, maintenance, provision_state, power_state)
    "a1": ("gpu", ["CUSTOM_A", "CUSTOM_B"], False, "AVAILABLE", "ON"),
    "a2": ("gpu", ["CUSTOM_A"], True, "AVAILABLE", "OFF"),
    "a3": ("gpu", [], False, "ENROLL", "UNSPECIFIED"),
    "b1": ("baremetal", ["CUSTOM_B"], False, "ACTIVE", "ON"),
    "b2": ("baremetal", ["CUSTOM_A"], False, "ENROLL", "OFF"),
    "b3": ("baremetal", [], True, "MANAGEABLE", "UNSPECIFIED"),
}


def enrol_inventory(leaf: LeafClient) -> None:
    """Enrols INVENTORY through the API, then sets the conductor-owned states in the DB."""
    for node_id, (rc, traits, maint, pstate, power) in INVENTORY.items():
        leaf.create(node_id, valid_node(resource_class=rc, traits=traits, maintenance=maint))
        leaf.set_columns(node_id, provision_state=pstate, power_state=power)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ("", ["a1", "a2", "a3", "b1", "b2", "b3"]),
        ("provision_state = AVAILABLE", ["a1", "a2"]),
        ("provision_state = PROVISION_STATE_AVAILABLE", ["a1", "a2"]),
        ("provision_state != ENROLL", ["a1", "a2", "b1", "b3"]),
        ('resource_class = "gpu"', ["a1", "a2", "a3"]),
        ("resource_class != 'gpu'", ["b1", "b2", "b3"]),
        ("maintenance = true", ["a2", "b3"]),
        ("maintenance = false", ["a1", "a3", "b1", "b2"]),
        ("maintenance != true", ["a1", "a3", "b1", "b2"]),
        ('traits:"CUSTOM_A"', ["a1", "a2", "b2"]),
        ('-traits:"CUSTOM_A"', ["a3", "b1", "b3"]),
        ('traits:"CUSTOM_NOWHERE"', []),
        ("power_state = ON", ["a1", "b1"]),
        ('resource_class = "gpu" AND traits:"CUSTOM_A" AND maintenance = false', ["a1"]),
        ('traits:"CUSTOM_A" AND traits:"CUSTOM_B"', ["a1"]),
        ('traits:"CUSTOM_A" AND -traits:"CUSTOM_B"', ["a2", "b2"]),
        ('provision_state = AVAILABLE AND -traits:"CUSTOM_B"', ["a2"]),
        ("provision_state = ENROLL AND maintenance = true", []),
    ],
)
def test_filter_returns_exactly_the_matching_nodes_across_pages(
    leaf: LeafClient, flt: str, expected: list[str]
) -> None:
    enrol_inventory(leaf)
    assert leaf.list_ids(filter=flt, page_size=1000) == expected
    assert leaf.list_ids(filter=flt, page_size=1) == expected


@pytest.mark.parametrize(
    "flt",
    [
        "colour = red",
        "provision_state = FLYING",
        "power_state = DIMMED",
        "maintenance = maybe",
        'traits = "CUSTOM_A"',
        "-provision_state = ENROLL",
        'resource_class = "a" OR resource_class = "b"',
        "provision_state",
        'resource_class = "unterminated',
        "resource_class = two words",
        "AND provision_state = ENROLL",
        "provision_state = ENROLL AND",
    ],
)
def test_a_bad_filter_is_invalid_argument_naming_filter(leaf: LeafClient, flt: str) -> None:
    enrol_inventory(leaf)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.ListNodes, list_request(filter=flt)
    )
    assert violation_fields(err) == ["filter"]


# -- order_by -------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def ordered_rows() -> list[dict[str, Any]]:
    """Twelve nodes whose resource classes and create/update times are not in name order,
    with ties, so that the name tie-breaker matters."""
    rows = []
    for i in range(12):
        rows.append(
            {
                "node_id": f"n-{i:02d}",
                "resource_class": ["gpu", "baremetal", "storage"][(i * 7) % 3],
                "create_time": T0 + timedelta(seconds=(i * 5) % 4),
                "update_time": T0 + timedelta(microseconds=(i * 7) % 5),
                "provision_state": ["ENROLL", "ACTIVE", "AVAILABLE"][i % 3],
            }
        )
    return rows


def python_order(rows: list[dict[str, Any]], order_by: str) -> list[str]:
    """The expected order, computed here: each key ascending or descending, name last."""
    result = sorted(rows, key=lambda r: r["node_id"])
    keys = [p.split() for p in order_by.split(",")] if order_by else []
    if not any(k[0] == "name" for k in keys):
        keys.append(["name"])
    for key in reversed(keys):
        column = "node_id" if key[0] == "name" else key[0]
        desc = len(key) == 2 and key[1] == "desc"
        result = sorted(result, key=lambda r, c=column: r[c], reverse=desc)
    return [r["node_id"] for r in result]


@pytest.mark.parametrize(
    "order_by",
    [
        "",
        "name",
        "name desc",
        "resource_class desc",
        "resource_class",
        "create_time",
        "create_time desc",
        "update_time, resource_class desc",
        "provision_state, create_time desc, name desc",
    ],
)
def test_order_by_sorts_and_paging_follows_the_same_order(leaf: LeafClient, order_by: str) -> None:
    rows = ordered_rows()
    leaf.seed(rows=rows)
    expected = python_order(rows, order_by)
    assert leaf.list_ids(order_by=order_by, page_size=1000) == expected
    assert leaf.list_ids(order_by=order_by, page_size=5) == expected
    assert leaf.list_ids(order_by=order_by, page_size=1) == expected


def test_order_by_create_time_follows_enrolment_order(leaf: LeafClient) -> None:
    for node_id in ["node-c", "node-a", "node-b"]:
        leaf.create(node_id)
    assert leaf.list_ids(order_by="create_time", page_size=1) == ["node-c", "node-a", "node-b"]
    assert leaf.list_ids(order_by="create_time desc", page_size=2) == ["node-b", "node-a", "node-c"]


@pytest.mark.parametrize(
    "order_by",
    ["colour", "name sideways", "name, name", "name desc extra", "name,", "traits", "maintenance"],
)
def test_a_bad_order_by_is_invalid_argument_naming_order_by(
    leaf: LeafClient, order_by: str
) -> None:
    leaf.seed(2)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.ListNodes, list_request(order_by=order_by)
    )
    assert violation_fields(err) == ["order_by"]


# -- page tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"filter": "provision_state = AVAILABLE"},
        {"order_by": "resource_class"},
        {"order_by": "name desc"},
    ],
    ids=["filter", "order_by", "direction"],
)
def test_a_page_token_reused_with_another_query_is_invalid_argument_naming_page_token(
    leaf: LeafClient, change: dict[str, str]
) -> None:
    enrol_inventory(leaf)
    first = leaf.stub.ListNodes(list_request(page_size=2, filter="provision_state != ERROR"))
    assert first.next_page_token
    request = {"filter": "provision_state != ERROR", "page_size": 2, **change}
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.ListNodes,
        list_request(page_token=first.next_page_token, **request),
    )
    assert violation_fields(err) == ["page_token"]


def test_a_page_token_stays_valid_with_another_page_size(leaf: LeafClient) -> None:
    leaf.seed(10)
    first = leaf.stub.ListNodes(list_request(page_size=2))
    rest = leaf.stub.ListNodes(list_request(page_size=100, page_token=first.next_page_token))
    assert ids(first) + ids(rest) == [f"n-{i:04d}" for i in range(10)]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "%%%",
        _b64("null"),
        _b64("[1, 2]"),
        _b64('"after"'),
        _b64('{"q": "x", "after": ["n-0001"]}'),
        _b64('{"after": ["n-0001"]}'),
        queries.encode_token("", parse_order_by(""), ["n-0001", "extra"]),
        queries.encode_token("", parse_order_by(""), []),
    ],
    ids=[
        "word",
        "punctuation",
        "percent",
        "json-null",
        "json-list",
        "json-string",
        "foreign-fingerprint",
        "no-fingerprint",
        "too-many-values",
        "no-values",
    ],
)
def test_a_garbage_page_token_is_invalid_argument_naming_page_token(
    leaf: LeafClient, token: str
) -> None:
    leaf.seed(3)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.ListNodes, list_request(page_token=token)
    )
    assert violation_fields(err) == ["page_token"]


@pytest.mark.parametrize(
    ("order_by", "values"),
    [
        ("create_time", ["yesterday", "n-0001"]),
        ("create_time", [12345, "n-0001"]),
        ("", [{"node": "n-0001"}]),
        ("", [["n-0001"]]),
    ],
    ids=["time-not-iso", "time-a-number", "name-an-object", "name-a-list"],
)
def test_a_token_with_values_that_do_not_fit_its_sort_keys_is_invalid_argument_not_internal(
    leaf: LeafClient, order_by: str, values: list[Any]
) -> None:
    """A token is opaque but not signed: one with the right shape and wrong values is the
    caller's mistake (INVALID_ARGUMENT naming page_token), never INTERNAL."""
    leaf.seed(3)
    token = queries.encode_token("", parse_order_by(order_by), values)
    assert json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["after"] == values
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.ListNodes,
        list_request(order_by=order_by, page_token=token),
    )
    assert violation_fields(err) == ["page_token"]


def test_nodes_enrolled_or_deleted_between_pages_cause_no_repeats_or_skips(
    leaf: LeafClient,
) -> None:
    for i in range(1, 7):
        leaf.create(f"n-{i}")
    first = leaf.stub.ListNodes(list_request(page_size=3))
    assert ids(first) == ["n-1", "n-2", "n-3"]
    leaf.create("n-0")  # sorts before the cursor: not seen in this listing
    leaf.create("n-2a")  # sorts before the cursor
    leaf.create("n-5a")  # sorts after the cursor: seen
    leaf.stub.DeleteNode(node_service_pb2.DeleteNodeRequest(name=node_name("n-4")))
    rest = list(leaf.list_pages(page_size=3, page_token=first.next_page_token))
    later = [i for page in rest for i in ids(page)]
    assert later == ["n-5", "n-5a", "n-6"]


def test_nodes_enrolled_between_pages_ordered_by_create_time_come_last_once(
    leaf: LeafClient,
) -> None:
    rows = ordered_rows()
    leaf.seed(rows=rows)
    expected = python_order(rows, "create_time")
    first = leaf.stub.ListNodes(list_request(page_size=4, order_by="create_time"))
    leaf.create("late-node")
    rest = list(
        leaf.list_pages(page_size=4, order_by="create_time", page_token=first.next_page_token)
    )
    listed = ids(first) + [i for page in rest for i in ids(page)]
    assert listed == [*expected, "late-node"]
