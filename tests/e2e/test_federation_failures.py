"""The federation issue's "done when": a top cell and several leaf cells as processes, with one
leaf killed, ZooKeeper restarted, or the top's own database wiped.

(a) Static registry: a leaf killed with SIGKILL is shown DOWN (gRPC and ``rackcells cell
    list``); calls named for it get UNAVAILABLE; ``ListNodes(cells/-)`` answers within its
    deadline with the other cells' nodes and the dead cell in ``unreachable``; restarted on the
    same database it is UP again and the top's figures are the leaf's own again.
(b) ZooKeeper registry: the same, plus a new leaf appears without restarting the top, and a
    restart of ZooKeeper leaves every cell UP (and the registry still watched).
(c) The top's database wiped and the top restarted: capacity and the uid/MAC index are rebuilt
    from the leaves' streams exactly as they were.

Every process is stopped by PID at the end; polls have hang guards; nothing is timed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from federation_e2e_kit import (
    DOWN,
    PA,
    RPC_GUARD,
    UP,
    Client,
    PrivateZk,
    cli,
    cli_cell_states,
    enrol,
    eventually,
    fake_node,
    figures,
    new_mac,
    require_zk,
    rpc_error,
    static_registry,
    top_argv,
    top_matches_leaf,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from serverkit import Proc, leaf_argv

from rackcells.v1 import (
    allocation_service_pb2,
    allocation_service_pb2_grpc,
    cell_service_pb2,
    inventory_service_pb2_grpc,
    node_service_pb2,
)

RC = "baremetal"
NODES = 6  # per cell: 2 available, 1 in maintenance, 3 enrolled
LIST_DEADLINE = 10.0
WATCH_GUARD = 60.0  # a watch that outlives its dead cell ends with DEADLINE_EXCEEDED instead

pytestmark = pytest.mark.slow


@dataclass
class Fed:
    """Leaves and a top cell, with a client for each; stopped by ``close``."""

    tmp: Path
    registry: str
    top_extra: tuple[str, ...] = ()
    leaves: dict[str, Proc] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    nodes: dict[str, list[Any]] = field(default_factory=dict)
    top: Proc | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_leaf(self, cell: str, *extra: str, listen: str = "127.0.0.1:0") -> Proc:
        leaf = Proc(
            cell, leaf_argv(cell, self.tmp, *extra, listen=listen), self.tmp, "RACKCELLS_LEAF_"
        )
        self.stack.callback(leaf.stop)
        self.leaves[cell] = leaf
        leaf.wait_ready()
        self._client(cell, leaf.endpoint)
        return leaf

    def restart_leaf(self, cell: str, *extra: str, same_port: bool) -> None:
        leaf = self.leaves[cell]
        listen = leaf.endpoint if same_port else "127.0.0.1:0"
        leaf.restart(leaf_argv(cell, self.tmp, *extra, listen=listen))
        leaf.wait_ready()
        self._client(cell, leaf.endpoint)

    def start_top(self) -> Proc:
        top = Proc(
            "top",
            top_argv(self.registry, self.tmp / "top.db", *self.top_extra),
            self.tmp,
            "RACKCELLS_TOP_",
        )
        if self.top is None:
            self.stack.callback(lambda: self.top.stop() if self.top else None)
        self.top = top
        top.wait_ready()
        self._client("top", top.endpoint)
        return top

    def _client(self, name: str, endpoint: str) -> None:
        old = self.clients.get(name)
        if old is not None:
            old.close()
        self.clients[name] = Client(endpoint)

    @property
    def api(self) -> Client:
        return self.clients["top"]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.stack.close()

    def enrol(self, cell: str) -> None:
        self.nodes[cell] = enrol(self.clients[cell], cell, RC, NODES, available=2, maintenance=1)

    def names(self, *cells: str) -> list[str]:
        return sorted(n.name for c in cells for n in self.nodes[c])

    def wait_consistent(self, cells: list[str] | None = None) -> None:
        """Every cell UP at the top, with the leaf's own figures."""
        cells = cells or sorted(self.leaves)

        def check() -> None:
            states = self.api.cell_states()
            assert all(states.get(c) == UP for c in cells), states
            for cell in cells:
                top_matches_leaf(self.api, self.clients[cell], cell)

        eventually(check, f"the top to be up to date with {cells}")

    def wait_state(self, cell: str, state: int) -> None:
        eventually(
            lambda: _assert_equal(self.api.cell_states().get(cell), state),
            f"cells/{cell} to be {state} at the top",
        )


def _assert_equal(got: object, wanted: object) -> None:
    assert got == wanted, (got, wanted)


@pytest.fixture
def make_fed(tmp_path: Path) -> Iterator[Callable[..., Fed]]:
    feds: list[Fed] = []

    def make(registry: str = "", top_extra: tuple[str, ...] = ()) -> Fed:
        fed = Fed(tmp_path, registry, top_extra)
        feds.append(fed)
        return fed

    yield make
    for fed in reversed(feds):
        fed.close()


def static_fed(make_fed: Callable[..., Fed], tmp: Path, cells: list[str]) -> Fed:
    fed = make_fed(top_extra=("--fanout-timeout", "2"))
    for cell in cells:
        fed.start_leaf(cell)
        fed.enrol(cell)
    fed.registry = static_registry(tmp / "cells.yaml", {c: fed.leaves[c].endpoint for c in cells})
    fed.start_top()
    fed.wait_consistent()
    return fed


def list_everything(api: Client) -> tuple[list[str], set[str]]:
    """Every node of ``cells/-`` (pages of 4), and every cell named unreachable on the way."""
    names: list[str] = []
    unreachable: set[str] = set()
    for page in api.pages(timeout=LIST_DEADLINE, parent="cells/-", page_size=4):
        names += [n.name for n in page.nodes]
        unreachable.update(page.unreachable)
    return names, unreachable


def check_dead_cell(fed: Fed, dead: str, alive: list[str]) -> None:
    """What a caller sees of a cell that is down, and of the others."""
    api = fed.api
    err = rpc_error(
        api.nodes.GetNode, node_service_pb2.GetNodeRequest(name=f"cells/{dead}/nodes/{dead}-n00")
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert dead in (err.details() or "")
    err = rpc_error(
        api.nodes.SetPowerState,
        node_service_pb2.SetPowerStateRequest(
            name=f"cells/{dead}/nodes/{dead}-n01", action=node_service_pb2.POWER_ACTION_ON
        ),
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()

    # The caller's deadline is the hang guard: the listing must answer within it, not fail.
    names, unreachable = list_everything(api)
    assert unreachable == {f"cells/{dead}"}
    assert names == fed.names(*alive)
    for cell in alive:
        assert (
            api.nodes.GetNode(
                node_service_pb2.GetNodeRequest(name=f"cells/{cell}/nodes/{cell}-n00"),
                timeout=RPC_GUARD,
            ).name
            == f"cells/{cell}/nodes/{cell}-n00"
        )

    # Capacity keeps the dead cell's last figures, marked unschedulable; claims go elsewhere.
    cap = {c.cell: c for c in api.get_capacity("cells/-", resource_class=RC).cells}
    assert not cap[f"cells/{dead}"].schedulable
    assert all(cap[f"cells/{c}"].schedulable for c in alive)
    granted = allocation_service_pb2_grpc.AllocationServiceStub(api.channel).CreateAllocation(
        allocation_service_pb2.CreateAllocationRequest(
            parent="cells/-", allocation=allocation_service_pb2.Allocation(resource_class=RC)
        ),
        timeout=RPC_GUARD,
    )
    assert granted.node.split("/")[1] in alive


def check_back(fed: Fed, cell: str) -> None:
    """The restarted cell is UP with the leaf's own figures, and follows new changes."""
    fed.wait_state(cell, UP)
    fed.wait_consistent()
    leaf = fed.clients[cell]
    extra = leaf.nodes.CreateNode(
        node_service_pb2.CreateNodeRequest(
            parent=f"cells/{cell}", node_id=f"{cell}-late", node=fake_node(RC)
        ),
        timeout=RPC_GUARD,
    )
    leaf.run(extra.name, PA.PROVISION_ACTION_MANAGE)
    leaf.run(extra.name, PA.PROVISION_ACTION_PROVIDE)
    fed.nodes[cell].append(extra)
    fed.wait_consistent()
    names, unreachable = list_everything(fed.api)
    assert not unreachable
    assert names == fed.names(*fed.leaves)
    assert (
        fed.api.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=extra.name), timeout=RPC_GUARD
        ).name
        == extra.name
    )


# -- (a) static registry ---------------------------------------------------------------------------


def test_static_registry_a_killed_leaf_is_down_and_comes_back_consistent(
    make_fed: Callable[..., Fed], tmp_path: Path
) -> None:
    cells = ["st-1", "st-2", "st-3"]
    fed = static_fed(make_fed, tmp_path, cells)
    # Watches through the top of the cell about to die: one of it alone, one merged with
    # another cell. Each has delivered its first event, so both streams are open.
    names = [f"cells/{c}/nodes/{c}-n00" for c in ("st-2", "st-1")]
    watches = [
        fed.api.nodes.WatchNodes(
            node_service_pb2.WatchNodesRequest(parent=parent, names=watched),
            timeout=WATCH_GUARD,
        )
        for parent, watched in (("cells/st-2", names[:1]), ("cells/-", names))
    ]
    for watch in watches:
        assert next(watch).kind == "created"
    fed.leaves["st-2"].kill()

    for watch in watches:  # both end with the dead cell's status instead of hanging
        with pytest.raises(grpc.RpcError) as ended:
            for _ in watch:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
        assert "st-2" in (ended.value.details() or "")
    fed.wait_state("st-2", DOWN)
    states = fed.api.cell_states()
    assert states == {"st-1": UP, "st-2": DOWN, "st-3": UP}
    check_dead_cell(fed, "st-2", ["st-1", "st-3"])
    # The operator sees it too.
    shown = cli_cell_states(fed.api.endpoint)
    assert shown == {"st-1": "CELL_STATE_UP", "st-2": "CELL_STATE_DOWN", "st-3": "CELL_STATE_UP"}
    table = cli(fed.api.endpoint, "cell", "list").stdout
    assert [line.split()[1] for line in table.splitlines() if line.startswith("st-2")] == ["down"]

    fed.restart_leaf("st-2", same_port=True)
    check_back(fed, "st-2")
    assert cli_cell_states(fed.api.endpoint)["st-2"] == "CELL_STATE_UP"


# -- (b) ZooKeeper registry ------------------------------------------------------------------------


@pytest.fixture
def zk(tmp_path: Path) -> Iterator[PrivateZk]:
    require_zk()
    server = PrivateZk(tmp_path / "zk-state")
    server.start()
    yield server
    server.stop()


def test_zookeeper_registry_kill_restart_new_leaf_and_zookeeper_restart(
    zk: PrivateZk, make_fed: Callable[..., Fed]
) -> None:
    # (zk first: its fixture is torn down last, after the cells have left the registry)
    url = f"zk://{zk.hosts}/rackcells-e2e/cells"
    fed = make_fed(url, ("--fanout-timeout", "2"))
    for cell in ("zk-1", "zk-2"):
        fed.start_leaf(cell, "--registry", url)
        fed.enrol(cell)
    fed.start_top()
    fed.wait_consistent()

    fed.leaves["zk-2"].kill()
    fed.wait_state("zk-2", DOWN)
    check_dead_cell(fed, "zk-2", ["zk-1"])
    fed.restart_leaf("zk-2", "--registry", url, same_port=False)  # a new endpoint, announced
    check_back(fed, "zk-2")
    listed = fed.api.cells.ListCells(cell_service_pb2.ListCellsRequest(), timeout=RPC_GUARD)
    endpoints = {c.name: c.endpoint for c in listed.cells}
    assert endpoints["cells/zk-2"] == fed.leaves["zk-2"].endpoint

    # A leaf that registers while the top runs is routed to at once.
    fed.start_leaf("zk-3", "--registry", url)
    fed.enrol("zk-3")
    fed.wait_consistent()
    names, unreachable = list_everything(fed.api)
    assert (names, unreachable) == (fed.names("zk-1", "zk-2", "zk-3"), set())

    # ZooKeeper goes away: the top keeps routing to the cells it knows.
    zk.stop()
    assert (
        fed.api.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name="cells/zk-3/nodes/zk-3-n00"), timeout=RPC_GUARD
        ).name
        == "cells/zk-3/nodes/zk-3-n00"
    )
    assert fed.api.cell_states() == {"zk-1": UP, "zk-2": UP, "zk-3": UP}
    zk.start()
    fed.wait_consistent()
    # The registry is still watched after the restart: another new leaf is found.
    fed.start_leaf("zk-4", "--registry", url)
    fed.enrol("zk-4")
    fed.wait_consistent()
    assert fed.api.cell_states() == dict.fromkeys(["zk-1", "zk-2", "zk-3", "zk-4"], UP)


# -- (c) the top's database wiped ------------------------------------------------------------------


def test_a_wiped_top_database_is_rebuilt_identically_from_the_leaves(
    make_fed: Callable[..., Fed], tmp_path: Path
) -> None:
    cells = ["wp-1", "wp-2", "wp-3"]
    fed = static_fed(make_fed, tmp_path, cells)
    api = fed.api
    queries: list[dict[str, Any]] = [
        {},
        {"resource_class": RC},
        {"resource_class": RC, "required_traits": ["CUSTOM_ODD"]},
        {"forbidden_traits": ["CUSTOM_ODD"]},
    ]
    probe = fed.nodes["wp-1"][3]
    lookups = [f'uid = "{probe.uid}"', f'mac = "{probe.ports[0].mac}"']

    def snapshot() -> dict[str, Any]:
        listed = api.cells.ListCells(cell_service_pb2.ListCellsRequest(), timeout=RPC_GUARD)
        return {
            "capacity": [figures(api.get_capacity("cells/-", **q)) for q in queries],
            "cells": [(c.name, c.state, c.inventory_generation, c.capacity) for c in listed.cells],
            "lookups": [
                [n.name for p in api.pages(parent="cells/-", filter=f) for n in p.nodes]
                for f in lookups
            ],
        }

    before = snapshot()
    assert before["lookups"] == [[probe.name], [probe.name]]

    assert fed.top is not None
    assert fed.top.stop() == 0, fed.top.tail()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"top.db{suffix}").unlink(missing_ok=True)
    fed.start_top()
    api = fed.api

    def caught_up() -> None:
        generations = {c: g for c, (_, g) in figures(api.get_capacity("cells/-")).items()}
        assert generations == {c: g for c, (_, g) in before["capacity"][0].items()}, generations

    eventually(caught_up, "the new top to apply every leaf's stream")
    assert snapshot() == before
    for cell in cells:
        top_matches_leaf(api, fed.clients[cell], cell)

    # The MAC index is back: a MAC of wp-1 is refused in wp-2.
    taken = fake_node(RC)
    taken.ports[0].mac = probe.ports[0].mac
    err = rpc_error(
        api.nodes.CreateNode,
        node_service_pb2.CreateNodeRequest(parent="cells/wp-2", node_id="dup", node=taken),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    # The uid and MAC index route look-ups to the owning cell alone: with wp-3 not answering,
    # they still answer completely, while a listing that must ask wp-3 reports it.
    wp3 = fed.leaves["wp-3"]
    wp3.signal(signal.SIGSTOP)
    try:
        for flt in lookups:
            page = api.nodes.ListNodes(
                node_service_pb2.ListNodesRequest(parent="cells/-", filter=flt), timeout=RPC_GUARD
            )
            assert ([n.name for n in page.nodes], list(page.unreachable)) == ([probe.name], [])
        page = api.nodes.ListNodes(
            node_service_pb2.ListNodesRequest(parent="cells/-", filter=f'mac = "{new_mac()}"'),
            timeout=RPC_GUARD,
        )
        assert list(page.unreachable) == ["cells/wp-3"]
    finally:
        wp3.signal(signal.SIGCONT)


# -- a leaf that answers health checks but never streams its inventory ----------------------------


class HungInventoryLeaf:
    """A gRPC server on 127.0.0.1 that says SERVING to health checks and accepts WatchInventory
    but never sends an update: a leaf whose database or stream is stuck."""

    def __init__(self) -> None:
        self._release = threading.Event()
        release = self._release

        class Inventory(inventory_service_pb2_grpc.InventoryServiceServicer):
            def WatchInventory(self, request: Any, context: grpc.ServicerContext) -> Any:
                while context.is_active() and not release.wait(0.1):
                    pass
                return iter(())

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        checker = health.HealthServicer()
        checker.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, self.server)
        inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(Inventory(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self._release.set()
        self.server.stop(grace=None)


def test_a_cell_whose_inventory_stream_never_delivers_is_not_reported_up(
    make_fed: Callable[..., Fed], tmp_path: Path
) -> None:
    """CellState UP means "registered and answering; its inventory stream is connected"
    (cell_service.proto). A leaf that passes health checks but has never delivered its inventory
    must not be UP while the top has no figures of it (GetCapacity lists it as unreachable)."""
    hung = HungInventoryLeaf()
    try:
        fed = make_fed(top_extra=("--fanout-timeout", "2"))
        fed.start_leaf("ok-1")
        fed.enrol("ok-1")
        fed.registry = static_registry(
            tmp_path / "cells.yaml",
            {"ok-1": fed.leaves["ok-1"].endpoint, "hung-1": f"127.0.0.1:{hung.port}"},
        )
        fed.start_top()
        fed.wait_consistent(["ok-1"])
        unknown = cell_service_pb2.CELL_STATE_UNSPECIFIED

        def first_known_state() -> tuple[int, bool]:
            state = fed.api.cell_states()["hung-1"]
            capacity = fed.api.get_capacity("cells/-")
            assert state != unknown, "the top has not judged the cell yet"
            return state, "cells/hung-1" in {c.cell for c in capacity.cells}

        # The first state the top reports for the silent cell (the poll's limit is a hang
        # guard; the top may take its snapshot timeout to give up on the stream).
        state, has_figures = eventually(first_known_state, "the top to judge the silent cell")
        assert (state, has_figures) != (UP, False), "UP although its inventory never arrived"
    finally:
        hung.stop()
