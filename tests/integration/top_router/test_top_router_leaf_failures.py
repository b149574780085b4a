"""A leaf that hangs or dies: calls named for it end within the caller's deadline (the deadline
travels to the leaf), with UNAVAILABLE or DEADLINE_EXCEEDED, and cross-cell listings still
succeed with the other cells, naming it in unreachable."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from top_router_kit import Proc, eventually, fake_node, start_leaf, start_top

from rackcells.v1 import node_service_pb2, node_service_pb2_grpc

CELLS = {"rack-1": 5, "rack-2": 3, "rack-3": 4}
NO_ANSWER = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


@dataclass
class Fed:
    leaves: dict[str, Proc]
    stub: node_service_pb2_grpc.NodeServiceStub


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp: Path = tmp_path_factory.mktemp("failing")
    leaves = {cell: start_leaf(cell, tmp) for cell in CELLS}
    top: Proc | None = None
    channels: list[grpc.Channel] = []
    try:
        for cell, leaf in leaves.items():
            leaf.wait_ready()
            ch = grpc.insecure_channel(leaf.endpoint)
            channels.append(ch)
            stub = node_service_pb2_grpc.NodeServiceStub(ch)
            for i in range(CELLS[cell]):
                stub.CreateNode(
                    node_service_pb2.CreateNodeRequest(
                        parent=f"cells/{cell}",
                        node_id=f"n-{i}",
                        node=fake_node(i, "baremetal", f"52:54:00:7{cell[-1]}:00:{i:02x}"),
                    )
                )
        top = start_top(list(leaves.values()), tmp, "--fanout-timeout", "1.5")
        top.wait_ready()
        channel = grpc.insecure_channel(top.endpoint)
        channels.append(channel)
        fed = Fed(leaves, node_service_pb2_grpc.NodeServiceStub(channel))

        def all_up() -> None:
            page = fed.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-"))
            assert not page.unreachable and len(page.nodes) == sum(CELLS.values())

        eventually(all_up)
        yield fed
    finally:
        for ch in channels:
            ch.close()
        if top is not None:
            assert top.stop() == 0, top.log()
        for leaf in leaves.values():
            leaf.stop()


def timed(call: object, request: object, timeout: float) -> tuple[grpc.RpcError, float]:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=timeout)  # type: ignore[operator]
    return info.value, time.monotonic() - started


def test_a_hung_leaf_ends_named_calls_at_the_deadline_and_drops_out_of_listings(fed: Fed) -> None:
    leaf = fed.leaves["rack-2"]
    leaf.signal(signal.SIGSTOP)
    try:
        err, took = timed(
            fed.stub.GetNode, node_service_pb2.GetNodeRequest(name="cells/rack-2/nodes/n-0"), 1.0
        )
        assert err.code() in NO_ANSWER, err.details()
        assert took < 2.5
        started = time.monotonic()
        page = fed.stub.ListNodes(
            node_service_pb2.ListNodesRequest(parent="cells/-", page_size=50), timeout=4
        )
        assert time.monotonic() - started < 4
        assert list(page.unreachable) == ["cells/rack-2"]
        assert {n.name.split("/")[1] for n in page.nodes} == {"rack-1", "rack-3"}
        assert len(page.nodes) == CELLS["rack-1"] + CELLS["rack-3"]
        # A caller deadline shorter than the fan-out timeout bounds the listing too.
        started = time.monotonic()
        page = fed.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-"), timeout=1)
        assert time.monotonic() - started < 1.5
        assert "cells/rack-2" in page.unreachable
    finally:
        leaf.signal(signal.SIGCONT)
    eventually(
        lambda: fed.stub.GetNode(
            node_service_pb2.GetNodeRequest(name="cells/rack-2/nodes/n-0"), timeout=2
        )
    )


def test_a_killed_leaf_is_unavailable_and_listed_as_unreachable(fed: Fed) -> None:
    leaf = fed.leaves["rack-3"]
    leaf.signal(signal.SIGKILL)
    leaf.proc.wait(timeout=10)
    err, took = timed(
        fed.stub.GetNode, node_service_pb2.GetNodeRequest(name="cells/rack-3/nodes/n-1"), 3.0
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "rack-3" in (err.details() or "")
    assert took < 3.0
    started = time.monotonic()
    page = fed.stub.ListNodes(node_service_pb2.ListNodesRequest(parent="cells/-"), timeout=3)
    assert time.monotonic() - started < 3.0
    assert list(page.unreachable) == ["cells/rack-3"]
    assert len(page.nodes) == CELLS["rack-1"] + CELLS["rack-2"]
