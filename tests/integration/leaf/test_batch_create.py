"""NodeService.BatchCreateNodes at a leaf, on SQLite and PostgreSQL: all nodes or none.

A refusal names the request it is about (``requests[i]``) and leaves the database as it was.
"""

from __future__ import annotations

import grpc
import pytest
from leafkit import (
    PARENT,
    LeafClient,
    error_info,
    expect_error,
    node_name,
    ports,
    valid_node,
    violation_fields,
)

from rackcells.v1 import node_pb2, node_service_pb2


def _batch(*items: tuple[str, node_pb2.Node]) -> node_service_pb2.BatchCreateNodesRequest:
    return node_service_pb2.BatchCreateNodesRequest(
        parent=PARENT,
        requests=[
            node_service_pb2.CreateNodeRequest(node_id=node_id, node=node)
            for node_id, node in items
        ],
    )


def test_a_batch_enrols_every_node_in_order_as_create_would(leaf: LeafClient) -> None:
    items = [
        (
            f"n{i}",
            valid_node(ports=ports(f"52:54:00:00:01:{i:02x}"), traits=["CUSTOM_B", "CUSTOM_A"]),
        )
        for i in range(25)
    ]
    response = leaf.stub.BatchCreateNodes(_batch(*items))
    assert [n.name for n in response.nodes] == [node_name(f"n{i}") for i in range(25)]
    for created, (node_id, _) in zip(response.nodes, items, strict=True):
        assert created == leaf.get(node_id)  # what a read returns, ports and traits included
        assert created.provision_state == node_pb2.PROVISION_STATE_ENROLL
        assert list(created.traits) == ["CUSTOM_A", "CUSTOM_B"]
    assert leaf.count_nodes() == 25
    assert leaf.list_ids() == sorted(f"n{i}" for i in range(25))


@pytest.mark.parametrize(
    ("items", "fields"),
    [
        (
            [("ok", valid_node()), ("Bad_Id", valid_node())],
            ["requests[1].node_id"],
        ),
        (
            [("a", valid_node(ports=ports("zz"))), ("b", valid_node(bmc=node_pb2.BmcInfo()))],
            ["requests[0].node.ports[0].mac", "requests[1].node.bmc.address"],
        ),
        (
            [("a", valid_node()), ("a", valid_node())],
            ["requests[1].node_id"],
        ),
        (
            [
                ("a", valid_node(ports=ports("52:54:00:00:02:01"))),
                ("b", valid_node(ports=ports("52-54-00-00-02-01"))),
            ],
            ["requests[1].node.ports[0].mac"],
        ),
    ],
    ids=["bad id", "every violation at once", "id twice", "mac twice"],
)
def test_bad_input_anywhere_refuses_the_whole_batch(
    leaf: LeafClient, items: list[tuple[str, node_pb2.Node]], fields: list[str]
) -> None:
    leaf.create("existing")
    before = leaf.snapshot()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.BatchCreateNodes, _batch(*items))
    assert violation_fields(err) == fields
    assert leaf.snapshot() == before


def test_an_existing_node_or_mac_refuses_the_whole_batch(leaf: LeafClient) -> None:
    leaf.create("taken", valid_node(ports=ports("52:54:00:00:03:01")))
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        leaf.stub.BatchCreateNodes,
        _batch(("new-1", valid_node()), ("taken", valid_node())),
    )
    assert "requests[1]" in (err.details() or "")
    assert error_info(err).metadata["node"] == node_name("taken")
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        leaf.stub.BatchCreateNodes,
        _batch(("new-1", valid_node()), ("new-2", valid_node(ports=ports("52:54:00:00:03:01")))),
    )
    assert error_info(err).metadata["node"] == node_name("taken")
    assert leaf.snapshot() == before


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda r: r.ClearField("requests"), grpc.StatusCode.INVALID_ARGUMENT, "requests"),
        (
            lambda r: r.requests.extend(
                node_service_pb2.CreateNodeRequest(node_id=f"x{i}", node=valid_node())
                for i in range(1001)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests",
        ),
        (
            lambda r: setattr(r.requests[0], "parent", "cells/other"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[0].parent",
        ),
        (lambda r: setattr(r, "parent", "cells/other"), grpc.StatusCode.NOT_FOUND, None),
    ],
    ids=["empty", "over 1000", "foreign request parent", "foreign cell"],
)
def test_batch_shape_errors(
    leaf: LeafClient, mutate, code: grpc.StatusCode, field: str | None
) -> None:  # type: ignore[no-untyped-def]
    request = _batch(("a", valid_node()))
    mutate(request)
    before = leaf.snapshot()
    err = expect_error(code, leaf.stub.BatchCreateNodes, request)
    if field is not None:
        assert violation_fields(err) == [field]
    assert leaf.snapshot() == before
