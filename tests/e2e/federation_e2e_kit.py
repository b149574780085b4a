"""Helpers of the federation end-to-end tests: leaf and top cells as processes, a private
ZooKeeper, the operator CLI, and the comparisons the tests make.

Every server is a child process on 127.0.0.1, stopped by its own PID; ZooKeeper is started and
stopped through ``scripts/services`` with a state directory and port of the test's own, so that
restarting it never disturbs the shared server other suites use. Waiting is polling with a hang
guard; nothing here asserts on time.

Imported by the test modules of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from serverkit import BIN

from rackcells.v1 import (
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    cell_service_pb2,
    cell_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"
T = TypeVar("T")

RPC_GUARD = 30.0
"""Deadline of ordinary calls: a hang guard only."""
WAIT_GUARD = 90.0
"""How long a poll for an eventual state may last before the test gives up (a hang guard)."""

ZK_ENV = "RACKCELLS_TEST_ZK"
REQUIRE_ZK_ENV = "RACKCELLS_REQUIRE_ZK"

UP = cell_service_pb2.CELL_STATE_UP
DOWN = cell_service_pb2.CELL_STATE_DOWN
PA = node_service_pb2.ProvisionAction


# -- processes -------------------------------------------------------------------------------------


def top_argv(registry: str, db: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "rackcells-top"),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite:///{db}",
        "--registry",
        registry,
        "--log-level",
        "INFO",
        *extra,
    ]


def static_registry(path: Path, leaves: dict[str, str]) -> str:
    path.write_text(
        yaml.safe_dump({"cells": [{"name": n, "endpoint": e} for n, e in leaves.items()]})
    )
    return f"static:{path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_zk() -> None:
    """Skips without the ZooKeeper test setup (fails instead under RACKCELLS_REQUIRE_ZK=1)."""
    if os.environ.get(ZK_ENV, "").strip():
        return
    if os.environ.get(REQUIRE_ZK_ENV, "").strip() == "1":
        pytest.fail(
            f"{ZK_ENV} is not set but {REQUIRE_ZK_ENV}=1 requires the ZooKeeper run",
            pytrace=False,
        )
    pytest.skip(f"ZooKeeper run skipped: {ZK_ENV} is not set (scripts/services start zookeeper)")


class PrivateZk:
    """A ZooKeeper server of one test, run by scripts/services with its own state and port."""

    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.hosts = f"127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "RACKCELLS_TEST_STATE": str(state),
            "RACKCELLS_TEST_ZK_PORT": str(self.port),
        }

    def _services(self, action: str) -> None:
        subprocess.run([str(SERVICES), action, "zookeeper"], env=self._env, check=True, timeout=90)

    def start(self) -> None:
        self._services("start")

    def stop(self) -> None:
        self._services("stop")


# -- polling, errors, nodes ------------------------------------------------------------------------


def eventually(check: Callable[[], T], what: str, limit: float = WAIT_GUARD) -> T:
    """Retries ``check`` until it returns without AssertionError or RpcError (a hang guard)."""
    give_up = time.monotonic() + limit
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError) as exc:
            if time.monotonic() > give_up:
                raise AssertionError(f"gave up waiting for {what}: {exc}") from exc
            time.sleep(0.1)


def rpc_error(call: Callable[..., Any], request: Any, **kw: Any) -> grpc.RpcError:
    kw.setdefault("timeout", RPC_GUARD)
    try:
        result = call(request, **kw)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"expected an error, got {type(result).__name__}: {result}")


_MAC_BASE = uuid.uuid4().int & 0xFFFFFF
_MAC_SEQ = itertools.count(1)


def new_mac() -> str:
    n = next(_MAC_SEQ)
    octets = [0x02, _MAC_BASE >> 16 & 255, _MAC_BASE >> 8 & 255, n >> 16 & 255, n >> 8 & 255]
    return ":".join(f"{o:02x}" for o in [*octets, n & 255])


def fake_node(
    resource_class: str, traits: list[str] | None = None, maintenance: bool = False
) -> node_pb2.Node:
    return node_pb2.Node(
        resource_class=resource_class,
        traits=traits or [],
        bmc=node_pb2.BmcInfo(driver="fake", address="fake-bmc"),
        ports=[node_pb2.Port(mac=new_mac(), pxe_enabled=True)],
        maintenance=maintenance,
    )


# -- talking to a server ---------------------------------------------------------------------------


@dataclass
class Client:
    """Stubs on one channel (to a leaf or to the top)."""

    endpoint: str
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.endpoint)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)
        self.capacity = capacity_service_pb2_grpc.CapacityServiceStub(self.channel)
        self.cells = cell_service_pb2_grpc.CellServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def get_capacity(self, parent: str, **query: Any) -> capacity_service_pb2.GetCapacityResponse:
        return self.capacity.GetCapacity(
            capacity_service_pb2.GetCapacityRequest(parent=parent, **query), timeout=RPC_GUARD
        )

    def cell_states(self) -> dict[str, int]:
        reply = self.cells.ListCells(cell_service_pb2.ListCellsRequest(), timeout=RPC_GUARD)
        return {c.name.split("/")[1]: c.state for c in reply.cells}

    def pages(
        self, timeout: float = RPC_GUARD, **request: Any
    ) -> Iterator[node_service_pb2.ListNodesResponse]:
        token = ""
        for _ in range(10_000):
            page = self.nodes.ListNodes(
                node_service_pb2.ListNodesRequest(page_token=token, **request), timeout=timeout
            )
            yield page
            token = page.next_page_token
            if not token:
                return
        raise AssertionError("the listing never ended")

    def run(self, name: str, action: int) -> operations_pb2.Operation:
        op = self.nodes.ChangeProvisionState(
            node_service_pb2.ChangeProvisionStateRequest(name=name, action=action),
            timeout=RPC_GUARD,
        )
        give_up = time.monotonic() + WAIT_GUARD
        while not op.done and time.monotonic() < give_up:
            op = self.ops.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=op.name, timeout=duration_pb2.Duration(seconds=10)
                ),
                timeout=RPC_GUARD,
            )
        assert op.done and not op.HasField("error"), op
        return op


def enrol(
    leaf: Client, cell: str, rc: str, count: int, *, available: int, maintenance: int = 0
) -> list[node_pb2.Node]:
    """Creates ``count`` fake-driver nodes directly at a leaf; the first ``available`` are made
    AVAILABLE, the next ``maintenance`` are in maintenance; every other node has CUSTOM_ODD."""
    made = []
    for i in range(count):
        node = fake_node(
            rc, ["CUSTOM_ODD"] if i % 2 else [], available <= i < available + maintenance
        )
        made.append(
            leaf.nodes.CreateNode(
                node_service_pb2.CreateNodeRequest(
                    parent=f"cells/{cell}", node_id=f"{cell}-n{i:02d}", node=node
                ),
                timeout=RPC_GUARD,
            )
        )
    for node in made[:available]:
        leaf.run(node.name, PA.PROVISION_ACTION_MANAGE)
        leaf.run(node.name, PA.PROVISION_ACTION_PROVIDE)
    return made


def figures(reply: capacity_service_pb2.GetCapacityResponse) -> dict[str, tuple[Any, int]]:
    """Per cell: its counts and the generation they come from."""
    return {c.cell: (c.counts, c.generation) for c in reply.cells}


def top_matches_leaf(top: Client, leaf: Client, cell: str, **query: Any) -> None:
    """The top's figures of ``cell`` are the leaf's own (counts and generation)."""
    mine = leaf.get_capacity(f"cells/{cell}", **query).cells[0]
    seen = top.get_capacity(f"cells/{cell}", **query)
    assert seen.cells, f"the top has no figures of cells/{cell}: {seen}"
    theirs = seen.cells[0]
    assert (theirs.counts, theirs.generation) == (mine.counts, mine.generation), (theirs, mine)


def cli(endpoint: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Runs the operator CLI against ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_")}
    return subprocess.run(
        [str(BIN / "rackcells"), "--endpoint", endpoint, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=RPC_GUARD + 30,
        check=False,
    )


def cli_cell_states(endpoint: str) -> dict[str, str]:
    """``rackcells cell list -o json``: cell id → state as the CLI prints it."""
    done = cli(endpoint, "-o", "json", "cell", "list")
    assert done.returncode == 0, f"rackcells cell list -> {done.returncode}: {done.stderr}"
    return {
        c["name"].split("/")[1]: str(c.get("state", "")) for c in json.loads(done.stdout)["cells"]
    }
