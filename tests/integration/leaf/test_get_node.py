"""NodeService.GetNode at a leaf, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from leafkit import LeafClient, expect_error, node_name, ports, valid_node, violation_fields

from rackcells.v1 import node_pb2, node_service_pb2


def get_request(name: str) -> node_service_pb2.GetNodeRequest:
    return node_service_pb2.GetNodeRequest(name=name)


def test_get_returns_the_node_as_created(leaf: LeafClient) -> None:
    created = leaf.create(
        "node-1",
        valid_node(
            traits=["CUSTOM_A"],
            ports=ports("52:54:00:00:00:01", "52:54:00:00:00:02"),
            extra={"k": "v"},
            bmc=node_pb2.BmcInfo(driver="ipmi", address="bmc-1.rack-1", password="get-pw"),
        ),
    )
    leaf.create("node-2")
    got = leaf.stub.GetNode(get_request("cells/rack-1/nodes/node-1"))
    assert got == created
    assert got.bmc.password == ""
    assert got.bmc.password_set is True


def test_get_of_an_unknown_node_is_not_found_naming_it(leaf: LeafClient) -> None:
    leaf.create("node-1")
    err = expect_error(
        grpc.StatusCode.NOT_FOUND, leaf.stub.GetNode, get_request(node_name("node-9"))
    )
    assert "cells/rack-1/nodes/node-9" in err.details()


def test_get_of_a_deleted_node_is_not_found(leaf: LeafClient) -> None:
    leaf.create("node-1")
    leaf.stub.DeleteNode(node_service_pb2.DeleteNodeRequest(name=node_name("node-1")))
    expect_error(grpc.StatusCode.NOT_FOUND, leaf.stub.GetNode, get_request(node_name("node-1")))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "node-1",
        "nodes/node-1",
        "cells/rack-1/nodes/",
        "cells/rack-1/nodes/Node_1",
        "cells/rack-1/machines/node-1",
        "cells/rack-1/nodes/node-1/ports",
        "cells//nodes/node-1",
        "//cells/rack-1/nodes/node-1",
    ],
)
def test_get_with_a_malformed_name_is_invalid_argument_naming_name(
    leaf: LeafClient, name: str
) -> None:
    leaf.create("node-1")
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.GetNode, get_request(name))
    assert violation_fields(err) == ["name"]


def test_get_of_a_node_in_another_cell_is_not_found_even_if_the_id_exists_here(
    leaf: LeafClient,
) -> None:
    leaf.create("node-1")
    err = expect_error(
        grpc.StatusCode.NOT_FOUND, leaf.stub.GetNode, get_request("cells/rack-2/nodes/node-1")
    )
    assert "rack-2" in err.details()
