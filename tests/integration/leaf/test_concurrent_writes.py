"""Racing writers at one leaf: uniqueness and etags hold, and a lost race is reported with the
code a client can act on (ALREADY_EXISTS / ABORTED), never INTERNAL."""

from __future__ import annotations

from collections import Counter

import grpc
from google.protobuf import field_mask_pb2
from leafkit import PARENT, LeafClient, node_name, ports, valid_node

from rackcells.v1 import node_pb2, node_service_pb2

RACERS = 8


def outcomes(futures: list[grpc.Future]) -> Counter[str]:
    """OK or the status code name of each finished call."""
    result: Counter[str] = Counter()
    for future in futures:
        err = future.exception()
        result["OK" if err is None else err.code().name] += 1
    return result


def test_racing_creates_of_one_mac_enrol_exactly_one_node(leaf: LeafClient) -> None:
    futures = [
        leaf.stub.CreateNode.future(
            node_service_pb2.CreateNodeRequest(
                parent=PARENT,
                node_id=f"racer-{i}",
                node=valid_node(ports=ports("52:54:00:aa:00:01")),
            )
        )
        for i in range(RACERS)
    ]
    assert outcomes(futures) == Counter({"OK": 1, "ALREADY_EXISTS": RACERS - 1})
    assert len(leaf.list_ids()) == 1
    assert len(leaf.snapshot()["ports"]) == 1


def test_racing_creates_of_one_node_id_enrol_it_once(leaf: LeafClient) -> None:
    futures = [
        leaf.stub.CreateNode.future(
            node_service_pb2.CreateNodeRequest(
                parent=PARENT,
                node_id="contested",
                node=valid_node(ports=ports(f"52:54:00:bb:00:{i:02x}")),
            )
        )
        for i in range(RACERS)
    ]
    assert outcomes(futures) == Counter({"OK": 1, "ALREADY_EXISTS": RACERS - 1})
    assert leaf.list_ids() == ["contested"]
    assert len(leaf.snapshot()["ports"]) == 1


def test_racing_updates_with_the_same_etag_let_exactly_one_win(leaf: LeafClient) -> None:
    node = leaf.create("node-1")
    futures = [
        leaf.stub.UpdateNode.future(
            node_service_pb2.UpdateNodeRequest(
                node=node_pb2.Node(name=node.name, resource_class=f"class-{i}", etag=node.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["resource_class"]),
            )
        )
        for i in range(RACERS)
    ]
    counts = outcomes(futures)
    assert counts == Counter({"OK": 1, "ABORTED": RACERS - 1})
    (winner,) = [f.result() for f in futures if f.exception() is None]
    assert leaf.get("node-1") == winner


def test_racing_updates_without_etag_succeed_or_ask_for_a_retry(leaf: LeafClient) -> None:
    node = leaf.create("node-1")
    futures = [
        leaf.stub.UpdateNode.future(
            node_service_pb2.UpdateNodeRequest(
                node=node_pb2.Node(name=node.name, extra={"writer": str(i)}),
                update_mask=field_mask_pb2.FieldMask(paths=["extra"]),
            )
        )
        for i in range(RACERS)
    ]
    counts = outcomes(futures)
    assert set(counts) <= {"OK", "ABORTED"}, counts
    assert counts["OK"] >= 1
    assert dict(leaf.get("node-1").extra)["writer"] in {str(i) for i in range(RACERS)}


def test_racing_deletes_remove_the_node_once(leaf: LeafClient) -> None:
    leaf.create("node-1", valid_node(ports=ports("52:54:00:cc:00:01")))
    futures = [
        leaf.stub.DeleteNode.future(node_service_pb2.DeleteNodeRequest(name=node_name("node-1")))
        for _ in range(RACERS)
    ]
    counts = outcomes(futures)
    assert counts["OK"] == 1, counts
    assert set(counts) <= {"OK", "NOT_FOUND", "ABORTED"}, counts
    assert leaf.list_ids() == []
    assert leaf.snapshot()["ports"] == []
