"""Fakes for the router's unit tests: an in-memory leaf that lists like a real one.

The fake leaf sorts with its own comparison function (written independently of
``top_cell.cross_list.SortKey``) and cuts pages with keyset tokens that name the last node
returned, as the real leaf does, so that nodes added or removed between pages behave the same.
Imported by the test modules of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography.fernet import Fernet
from google.protobuf import timestamp_pb2

from common.listing import OrderBy, parse_filter, parse_order_by
from rackcells.v1 import node_pb2, node_service_pb2
from top_cell.cross_list import PageTokens, list_across_cells

PROVISION = ["ENROLL", "MANAGEABLE", "AVAILABLE", "ACTIVE", "DEPLOY_FAILED"]
POWER = ["ON", "OFF", "UNKNOWN", "UNSPECIFIED"]
CLASSES = ["baremetal", "gpu", "gpu-large", "storage"]


def make_node(
    cell: str,
    node_id: str,
    *,
    resource_class: str = "baremetal",
    provision: str = "ENROLL",
    power: str = "UNSPECIFIED",
    created: tuple[int, int] = (1_700_000_000, 0),
    updated: tuple[int, int] = (1_700_000_000, 0),
    traits: Sequence[str] = (),
    maintenance: bool = False,
) -> node_pb2.Node:
    return node_pb2.Node(
        name=f"cells/{cell}/nodes/{node_id}",
        uid=f"uid-{cell}-{node_id}",
        resource_class=resource_class,
        provision_state=node_pb2.ProvisionState.Value("PROVISION_STATE_" + provision),
        power_state=node_pb2.PowerState.Value("POWER_STATE_" + power),
        create_time=timestamp_pb2.Timestamp(seconds=created[0], nanos=created[1]),
        update_time=timestamp_pb2.Timestamp(seconds=updated[0], nanos=updated[1]),
        traits=list(traits),
        maintenance=maintenance,
    )


def random_node(rng: random.Random, cell: str, node_id: str) -> node_pb2.Node:
    """A node whose sort fields collide often, so ties are exercised."""
    return make_node(
        cell,
        node_id,
        resource_class=rng.choice(CLASSES),
        provision=rng.choice(PROVISION),
        power=rng.choice(POWER),
        created=(1_700_000_000 + rng.randrange(4), rng.choice([0, 500, 999_999_000])),
        updated=(1_700_000_000 + rng.randrange(3), 0),
        traits=rng.sample(["CUSTOM_A", "CUSTOM_B"], rng.randrange(3)),
        maintenance=rng.random() < 0.2,
    )


def field_value(node: node_pb2.Node, name: str) -> Any:
    if name == "name":
        return node.name.rsplit("/", 1)[1]
    if name == "resource_class":
        return node.resource_class
    if name == "provision_state":
        return node_pb2.ProvisionState.Name(node.provision_state)[len("PROVISION_STATE_") :]
    if name == "power_state":
        return node_pb2.PowerState.Name(node.power_state)[len("POWER_STATE_") :]
    stamp = getattr(node, name)
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def compare(a: node_pb2.Node, b: node_pb2.Node, order: OrderBy) -> int:
    for key in order.keys:
        x, y = field_value(a, key.field), field_value(b, key.field)
        if x != y:
            result = -1 if x < y else 1
            return -result if key.desc else result
    return 0


def global_order(nodes: Sequence[node_pb2.Node], order: OrderBy) -> list[str]:
    """The expected order across cells: the order_by keys, then the cell (stable sorts, last
    key first)."""
    result = sorted(nodes, key=lambda n: n.name.split("/")[1])
    for key in reversed(order.keys):
        result.sort(key=lambda n, f=key.field: field_value(n, f), reverse=key.desc)
    return [n.name for n in result]


def matches(node: node_pb2.Node, filter_text: str) -> bool:
    for cond in parse_filter(filter_text).conditions:
        if cond.field == "traits":
            has = cond.value in node.traits
            ok = has if cond.op == "has" else not has
        elif cond.field == "maintenance":
            ok = (node.maintenance == cond.value) == (cond.op == "=")
        else:
            ok = (field_value(node, cond.field) == cond.value) == (cond.op == "=")
        if not ok:
            return False
    return True


class FakeLeaf:
    """One cell's nodes and a ListNodes with keyset page tokens."""

    def __init__(self, cell: str, nodes: Sequence[node_pb2.Node] = ()) -> None:
        self.cell = cell
        self.nodes: dict[str, node_pb2.Node] = {n.name: n for n in nodes}
        self.calls: list[node_service_pb2.ListNodesRequest] = []
        self.fail: Exception | None = None

    def add(self, node: node_pb2.Node) -> None:
        self.nodes[node.name] = node

    def remove(self, name: str) -> None:
        del self.nodes[name]

    def list_nodes(
        self, req: node_service_pb2.ListNodesRequest
    ) -> node_service_pb2.ListNodesResponse:
        self.calls.append(req)
        if self.fail is not None:
            raise self.fail
        assert req.parent == f"cells/{self.cell}"
        order = parse_order_by(req.order_by)
        cmp = functools.partial(compare, order=order)
        ordered = sorted(
            (n for n in self.nodes.values() if matches(n, req.filter)),
            key=functools.cmp_to_key(cmp),
        )
        if req.page_token:
            after = node_pb2.Node()
            after.ParseFromString(bytes.fromhex(json.loads(req.page_token)["after"]))
            ordered = [n for n in ordered if cmp(n, after) > 0]
        size = req.page_size or 100
        response = node_service_pb2.ListNodesResponse(nodes=ordered[:size])
        if len(ordered) > size:
            response.next_page_token = json.dumps(
                {"after": ordered[size - 1].SerializeToString().hex()}
            )
        return response


#: The key the fake federations seal their page tokens with (tests forge tokens with it).
TOKEN_KEY = Fernet.generate_key()
TOKENS = PageTokens(TOKEN_KEY)


class Federation:
    """Fake leaves behind a lister, as the router wires them; ``down`` cells are unreachable."""

    def __init__(self, leaves: list[FakeLeaf]) -> None:
        self.leaves = {leaf.cell: leaf for leaf in leaves}
        self.down: set[str] = set()

    async def lister(
        self, cell: str, req: node_service_pb2.ListNodesRequest, timeout: float
    ) -> node_service_pb2.ListNodesResponse:
        await asyncio.sleep(0)
        return self.leaves[cell].list_nodes(req)

    def page(self, **request: Any) -> node_service_pb2.ListNodesResponse:
        req = node_service_pb2.ListNodesRequest(parent="cells/-", **request)
        return asyncio.run(
            list_across_cells(
                req,
                cells=lambda: sorted(self.leaves),
                reachable=lambda c: c not in self.down,
                lister=self.lister,
                tokens=TOKENS,
                timeout=1.0,
            )
        )

    def pages(
        self, page_token: str = "", **request: Any
    ) -> Iterator[node_service_pb2.ListNodesResponse]:
        token = page_token
        for _ in range(10_000):
            page = self.page(page_token=token, **request)
            yield page
            token = page.next_page_token
            if not token:
                return
        raise AssertionError("listing never ended")

    def names(self, **request: Any) -> list[str]:
        return [n.name for page in self.pages(**request) for n in page.nodes]

    def everything(self, flt: str = "") -> list[node_pb2.Node]:
        return [n for leaf in self.leaves.values() for n in leaf.nodes.values() if matches(n, flt)]
