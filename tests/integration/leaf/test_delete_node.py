"""NodeService.DeleteNode at a leaf: which states allow it, etags, locks, what it frees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import empty_pb2
from leafkit import (
    LeafClient,
    error_info,
    expect_error,
    node_name,
    ports,
    valid_node,
    violation_fields,
)

from rackcells.v1 import node_pb2, node_service_pb2


def delete_request(node_id: str, etag: str = "") -> node_service_pb2.DeleteNodeRequest:
    return node_service_pb2.DeleteNodeRequest(name=node_name(node_id), etag=etag)


@pytest.fixture
def node(leaf: LeafClient) -> node_pb2.Node:
    leaf.create("bystander", valid_node(ports=ports("52:54:00:00:00:99")))
    return leaf.create(
        "node-1",
        valid_node(
            ports=ports("52:54:00:00:00:01", "52:54:00:00:00:02"),
            traits=["CUSTOM_A"],
            bmc=node_pb2.BmcInfo(driver="ipmi", address="10.1.0.10", password="delete-pw"),
        ),
    )


def test_delete_of_an_enrolled_node_removes_it_with_its_ports_and_traits(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    bystander = leaf.get("bystander")
    assert leaf.stub.DeleteNode(delete_request("node-1")) == empty_pb2.Empty()
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        leaf.stub.GetNode,
        node_service_pb2.GetNodeRequest(name=node.name),
    )
    assert leaf.list_ids() == ["bystander"]
    assert leaf.list_ids(filter='traits:"CUSTOM_A"') == []
    snapshot = leaf.snapshot()
    assert len(snapshot["ports"]) == 1
    assert snapshot["node_traits"] == []
    assert leaf.get("bystander") == bystander
    # Its MACs are free for a new node.
    leaf.create("successor", valid_node(ports=ports("52:54:00:00:00:01", "52:54:00:00:00:02")))


def test_a_node_id_can_be_reused_after_delete_and_gets_a_new_uid_and_etag(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    leaf.stub.DeleteNode(delete_request("node-1"))
    again = leaf.create("node-1", valid_node(ports=ports("52:54:00:00:00:01")))
    assert again.uid != node.uid
    assert again.etag != node.etag
    expect_error(
        grpc.StatusCode.ABORTED, leaf.stub.DeleteNode, delete_request("node-1", etag=node.etag)
    )


@pytest.mark.parametrize("state", ["ENROLL", "MANAGEABLE", "AVAILABLE"])
def test_delete_works_in_enroll_manageable_and_available(
    leaf: LeafClient, node: node_pb2.Node, state: str
) -> None:
    leaf.set_columns("node-1", provision_state=state)
    leaf.stub.DeleteNode(delete_request("node-1"))
    assert leaf.list_ids() == ["bystander"]


@pytest.mark.parametrize(
    "state",
    [
        "VERIFYING",
        "CLEANING",
        "CLEAN_FAILED",
        "DEPLOYING",
        "WAIT_CALL_BACK",
        "DEPLOY_FAILED",
        "ACTIVE",
        "DELETING",
        "ERROR",
    ],
)
def test_delete_in_any_other_state_is_failed_precondition_and_keeps_the_node(
    leaf: LeafClient, node: node_pb2.Node, state: str
) -> None:
    leaf.set_columns("node-1", provision_state=state)
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, leaf.stub.DeleteNode, delete_request("node-1")
    )
    assert state in err.details()
    assert error_info(err).metadata["provision_state"] == state
    assert leaf.snapshot() == before


def test_delete_with_the_current_etag_works(leaf: LeafClient, node: node_pb2.Node) -> None:
    leaf.stub.DeleteNode(delete_request("node-1", etag=node.etag))
    assert leaf.list_ids() == ["bystander"]


def test_delete_with_a_stale_etag_is_aborted_and_keeps_the_node(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    leaf.stub.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=node.name, resource_class="changed"),
            update_mask={"paths": ["resource_class"]},
        )
    )
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.ABORTED, leaf.stub.DeleteNode, delete_request("node-1", etag=node.etag)
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    assert leaf.snapshot() == before


def test_delete_of_an_unknown_node_is_not_found(leaf: LeafClient, node: node_pb2.Node) -> None:
    before = leaf.snapshot()
    err = expect_error(grpc.StatusCode.NOT_FOUND, leaf.stub.DeleteNode, delete_request("node-9"))
    assert "cells/rack-1/nodes/node-9" in err.details()
    assert leaf.snapshot() == before


def test_delete_of_a_node_in_another_cell_is_not_found(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    before = leaf.snapshot()
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        leaf.stub.DeleteNode,
        node_service_pb2.DeleteNodeRequest(name="cells/rack-2/nodes/node-1"),
    )
    assert leaf.snapshot() == before


@pytest.mark.parametrize(
    "name", ["", "node-1", "cells/rack-1/nodes/NODE-1", "cells/rack-1/node/node-1"]
)
def test_delete_with_a_malformed_name_is_invalid_argument_naming_name(
    leaf: LeafClient, node: node_pb2.Node, name: str
) -> None:
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.DeleteNode,
        node_service_pb2.DeleteNodeRequest(name=name),
    )
    assert violation_fields(err) == ["name"]
    assert leaf.snapshot() == before


def test_delete_of_a_locked_node_is_failed_precondition_naming_holder_and_purpose(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    now = datetime.now(UTC)
    leaf.set_columns(
        "node-1",
        lock_holder="conductor:rack-1:power",
        lock_purpose="power sync",
        lock_since=now - timedelta(seconds=5),
        lock_expires=now + timedelta(hours=1),
    )
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, leaf.stub.DeleteNode, delete_request("node-1")
    )
    assert "conductor:rack-1:power" in err.details()
    assert "power sync" in err.details()
    assert error_info(err).reason == "NODE_LOCKED"
    assert leaf.snapshot() == before
    lock = leaf.get("node-1").lock
    assert (lock.holder, lock.purpose) == ("conductor:rack-1:power", "power sync")


def test_delete_of_a_node_whose_lock_has_expired_works(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    now = datetime.now(UTC)
    leaf.set_columns(
        "node-1",
        lock_holder="conductor:rack-1:gone",
        lock_purpose="deploy",
        lock_since=now - timedelta(hours=2),
        lock_expires=now - timedelta(hours=1),
    )
    leaf.stub.DeleteNode(delete_request("node-1"))
    assert leaf.list_ids() == ["bystander"]


def test_delete_of_a_node_claimed_by_an_allocation_is_failed_precondition(
    leaf: LeafClient, node: node_pb2.Node
) -> None:
    leaf.set_columns("node-1", allocation="cells/rack-1/allocations/a-1")
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, leaf.stub.DeleteNode, delete_request("node-1")
    )
    assert "cells/rack-1/allocations/a-1" in err.details()
    assert leaf.snapshot() == before
