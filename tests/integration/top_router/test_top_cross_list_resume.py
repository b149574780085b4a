"""A cross-cell listing over real leaf cells (one on each database backend, one on SQLite) keeps
its place by sort key: with the node each cell returned last deleted and new nodes enrolled
after every page, every node present throughout comes exactly once and in order, whatever the
order_by (times included). The top writes the leaves' own keyset tokens, so a leaf whose page
came with a next token is asked for exactly one page next time."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from top_router_kit import fake_node

from common.listing import parse_order_by
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc
from top_cell.cross_list import PageTokens, list_across_cells, sort_key

SIZE = 3
CLASSES = ["baremetal", "gpu", "storage"]
ORDERS = ["", "name desc", "create_time desc", "resource_class, update_time desc"]


class Cells:
    """Two in-process leaves, listed across with :func:`list_across_cells` as the top does."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self.channels = {cell: grpc.insecure_channel(ep) for cell, ep in endpoints.items()}
        self.stubs = {
            cell: node_service_pb2_grpc.NodeServiceStub(ch) for cell, ch in self.channels.items()
        }
        self.tokens = PageTokens(Fernet.generate_key())
        self.calls: dict[str, list[tuple[int, str]]] = {cell: [] for cell in endpoints}
        self.serial = 0

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def create(self, cell: str, node_id: str) -> node_pb2.Node:
        self.serial += 1
        return self.stubs[cell].CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent=f"cells/{cell}",
                node_id=node_id,
                node=fake_node(self.serial, CLASSES[self.serial % 3], ""),
            ),
            timeout=10,
        )

    def delete(self, name: str) -> None:
        cell = name.split("/")[1]
        self.stubs[cell].DeleteNode(node_service_pb2.DeleteNodeRequest(name=name), timeout=10)

    async def lister(
        self, cell: str, req: node_service_pb2.ListNodesRequest, timeout: float
    ) -> node_service_pb2.ListNodesResponse:
        reply: node_service_pb2.ListNodesResponse = self.stubs[cell].ListNodes(req, timeout=timeout)
        self.calls[cell].append((req.page_size, reply.next_page_token))
        return reply

    def page(self, **request: Any) -> node_service_pb2.ListNodesResponse:
        req = node_service_pb2.ListNodesRequest(parent="cells/-", **request)
        return asyncio.run(
            list_across_cells(
                req,
                cells=lambda: sorted(self.stubs),
                reachable=lambda cell: True,
                lister=self.lister,
                tokens=self.tokens,
                timeout=10.0,
            )
        )

    def everything(self) -> list[node_pb2.Node]:
        nodes: list[node_pb2.Node] = []
        for cell, stub in self.stubs.items():
            req = node_service_pb2.ListNodesRequest(parent=f"cells/{cell}", page_size=1000)
            nodes += stub.ListNodes(req, timeout=10).nodes
        return nodes


@pytest.fixture
def cells(db_url: str, leaf_runner: Any, tmp_path: Path) -> Iterator[Cells]:
    first = leaf_runner.start(db_url, cell="rack-a")
    second = leaf_runner.start(f"sqlite:///{tmp_path / 'rack-b.db'}", cell="rack-b")
    fed = Cells({"rack-a": f"127.0.0.1:{first.port}", "rack-b": f"127.0.0.1:{second.port}"})
    try:
        for i in range(14):
            fed.create("rack-a" if i % 3 else "rack-b", f"n-{i:02d}")
        yield fed
    finally:
        fed.close()


@pytest.mark.parametrize("order_by", ORDERS)
def test_deleting_each_cells_last_returned_node_and_enrolling_more_loses_nothing(
    cells: Cells, order_by: str
) -> None:
    order = parse_order_by(order_by)
    present = {n.name: n for n in cells.everything()}
    seen: list[str] = []
    token = ""
    for round_ in range(100):
        page = cells.page(page_size=SIZE, order_by=order_by, page_token=token)
        assert len(page.nodes) <= SIZE and not page.unreachable
        seen += [n.name for n in page.nodes]
        token = page.next_page_token
        if not token:
            break
        for cell in sorted(cells.stubs):
            mine = [n.name for n in page.nodes if n.name.split("/")[1] == cell]
            if mine:
                cells.delete(mine[-1])
                present.pop(mine[-1], None)
            cells.create(cell, f"new-{round_:02d}")
    else:
        raise AssertionError("listing never ended")

    assert len(seen) == len(set(seen)), "a node was returned twice"
    by_key = sorted(
        present.values(),
        key=functools.cmp_to_key(functools.partial(_compare, order=order)),
    )
    assert [n for n in seen if n in present] == [n.name for n in by_key]

    checked = 0
    for calls in cells.calls.values():
        for (_, previous_token), (size, _) in itertools.pairwise(calls):
            if previous_token:  # the top could check the leaf's token format: no re-reading
                assert size == SIZE
                checked += 1
    assert checked >= 3


def _compare(a: node_pb2.Node, b: node_pb2.Node, order: Any) -> int:
    ka, kb = sort_key(a, order), sort_key(b, order)
    if ka != kb:
        return -1 if ka < kb else 1
    ca, cb = a.name.split("/")[1], b.name.split("/")[1]
    return (ca > cb) - (ca < cb)
