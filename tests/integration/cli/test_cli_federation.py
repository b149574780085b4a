"""The ``rackcells`` cell, capacity and allocation commands as subprocesses against a real top
cell in front of two real leaf cells, each its own process.

Nodes use the fake BMC driver, so ``node manage`` and ``node provide`` bring them to
``available`` at once. The top's figures come from the leaves' inventory streams and trail
them by a moment, so checks of counts retry for a while; exit statuses and error lines are
checked exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# rack-1 gets three nodes, rack-2 two; one node of rack-1 carries CUSTOM_GPU.
NODES = {"rack-1": 3, "rack-2": 2}
T = TypeVar("T")


class Server:
    """A server child process that writes its port to a file once it serves."""

    def __init__(self, name: str, argv: list[str], tmp: Path) -> None:
        self.name = name
        self.port_file = tmp / f"{name}.port"
        self.log_path = tmp / f"{name}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_")}
        self.proc = subprocess.Popen(
            [*argv, "--port-file", str(self.port_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.endpoint = ""

    def wait_ready(self, limit: float = 60.0) -> None:
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.strip():
                self.endpoint = f"127.0.0.1:{int(text)}"
                return
            time.sleep(0.05)
        pytest.fail(f"{self.name} did not write its port file within {limit:g}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stops this child by its own PID: TERM, then KILL if it does not go."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def _leaf(cell: str, tmp: Path) -> Server:
    return Server(
        cell,
        [
            str(BIN / "rackcells-leaf"),
            "serve",
            "--cell",
            cell,
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / cell}.db",
            "--power-sync-interval",
            "0",
        ],
        tmp,
    )


def _top(leaves: list[Server], tmp: Path) -> Server:
    registry = tmp / "cells.yaml"
    registry.write_text(
        yaml.safe_dump({"cells": [{"name": s.name, "endpoint": s.endpoint} for s in leaves]})
    )
    return Server(
        "top",
        [
            str(BIN / "rackcells-top"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / 'top.db'}",
            "--registry",
            f"static:{registry}",
        ],
        tmp,
    )


@dataclass
class Fed:
    top: Server
    leaves: dict[str, Server]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(endpoint: str, *argv: str) -> Result:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_")}
    environment["RACKCELLS_ENDPOINT"] = endpoint
    proc = subprocess.run(
        [sys.executable, "-m", "rackcells.cli.main", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(endpoint: str, *argv: str) -> Result:
    result = cli(endpoint, *argv)
    assert result.code == 0, f"{argv}: {result.err}"
    return result


def eventually(check: Callable[[], T], limit: float = 30.0) -> T:
    """Retries ``check`` until it stops raising AssertionError: the top's figures trail."""
    give_up = time.monotonic() + limit
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


def _enrol(top: str, cell: str, i: int) -> None:
    name = f"cells/{cell}/nodes/n{i}"
    create = [
        "node",
        "create",
        name,
        "--bmc-driver",
        "fake",
        "--bmc-address",
        f"10.7.{cell[-1]}.{i + 1}",
        "--resource-class",
        "baremetal",
        "--mac",
        f"52:54:00:7{cell[-1]}:00:{i:02x}",
    ]
    if cell == "rack-1" and i == 0:
        create += ["--trait", "CUSTOM_GPU"]
    ok(top, *create)
    ok(top, "node", "manage", name, "--wait-timeout", "60")
    ok(top, "node", "provide", name, "--wait-timeout", "60")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("fed")
    servers: list[Server] = []
    try:
        leaves = {cell: _leaf(cell, tmp) for cell in NODES}
        servers += leaves.values()
        for leaf in leaves.values():
            leaf.wait_ready()
        top = _top(list(leaves.values()), tmp)
        servers.append(top)
        top.wait_ready()
        for cell, count in NODES.items():
            for i in range(count):
                _enrol(top.endpoint, cell, i)
        yield Fed(top, leaves)
    finally:
        for server in reversed(servers):
            server.stop()


def _cells(fed: Fed) -> dict[str, dict[str, Any]]:
    listed = ok(fed.top.endpoint, "cell", "list", "-o", "json").json()
    return {c["name"]: c for c in listed["cells"]}


def _capacity(fed: Fed, *argv: str) -> dict[str, Any]:
    result = ok(fed.top.endpoint, "capacity", "-o", "json", *argv)
    data: dict[str, Any] = result.json()
    data["by_cell"] = {c["cell"]: c for c in data["cells"]}
    return data


def _available(fed: Fed, expected: dict[str, int]) -> dict[str, Any]:
    """Waits until the top reports ``expected`` available nodes per cell."""

    def check() -> dict[str, Any]:
        data = _capacity(fed)
        got = {name: c["counts"]["available"] for name, c in data["by_cell"].items()}
        assert got == {f"cells/{k}": v for k, v in expected.items()}, got
        return data

    return eventually(check)


def test_cell_list_shows_both_cells_up(fed: Fed) -> None:
    def both_up() -> dict[str, dict[str, Any]]:
        cells = _cells(fed)
        assert sorted(cells) == ["cells/rack-1", "cells/rack-2"]
        assert {c["state"] for c in cells.values()} == {"CELL_STATE_UP"}
        assert cells["cells/rack-1"]["capacity"]["total"] == 3
        return cells

    cells = eventually(both_up)
    assert cells["cells/rack-2"]["endpoint"] == fed.leaves["rack-2"].endpoint
    assert cells["cells/rack-1"]["scheduling_disabled"] is False

    header, *rows = ok(fed.top.endpoint, "cell", "list").out.strip().split("\n")
    assert header.split() == [
        "CELL",
        "STATE",
        "ENDPOINT",
        "NODES",
        "AVAILABLE",
        "DEPLOYING",
        "ACTIVE",
        "FAILED",
        "GENERATION",
        "HEARTBEAT",
        "VERSION",
    ]
    assert [row.split()[:2] for row in rows] == [["rack-1", "up"], ["rack-2", "up"]]
    assert all(" ago" in row for row in rows)

    shown = ok(fed.top.endpoint, "cell", "show", "rack-2").out
    assert "name:" in shown and "cells/rack-2" in shown and "scheduling:" in shown

    r = cli(fed.top.endpoint, "cell", "show", "rack-9")
    assert r.code == 1 and r.err.startswith("rackcells: NOT_FOUND: ") and r.err.count("\n") == 1


def test_cell_commands_need_the_top(fed: Fed) -> None:
    r = cli(fed.leaves["rack-1"].endpoint, "cell", "list")
    assert r.code == 1 and r.out == ""
    assert r.err == (
        f"rackcells: {fed.leaves['rack-1'].endpoint} does not serve CellService: "
        "cell commands need the top cell's endpoint\n"
    )


def test_capacity_counts(fed: Fed) -> None:
    data = _available(fed, {"rack-1": 3, "rack-2": 2})
    assert data["totals"]["total"] == 5 and data["totals"]["allocated"] == 0
    assert data["unreachable"] == []
    assert all(c["schedulable"] for c in data["cells"])

    gpu = _capacity(fed, "--trait", "CUSTOM_GPU")
    assert (
        gpu["totals"]["available"] == 1 and gpu["by_cell"]["cells/rack-2"]["counts"]["total"] == 0
    )
    assert _capacity(fed, "--forbid-trait", "CUSTOM_GPU")["totals"]["total"] == 4
    assert _capacity(fed, "--resource-class", "gpu")["totals"]["total"] == 0

    one = _capacity(fed, "--cell", "rack-2")
    assert list(one["by_cell"]) == ["cells/rack-2"] and one["totals"]["total"] == 2

    table = ok(fed.top.endpoint, "capacity").out
    first, blank, header, *rows = table.strip().split("\n")
    assert first.startswith("all cells (every class; 2 cells): 5 nodes: 5 available")
    assert blank == ""
    assert header.split()[:3] == ["CELL", "TOTAL", "AVAILABLE"] and header.endswith("SCHEDULABLE")
    assert [row.split()[:3] for row in rows] == [["rack-1", "3", "3"], ["rack-2", "2", "2"]]

    # A leaf answers for its own cell with the same command.
    leaf = cli(fed.leaves["rack-1"].endpoint, "capacity", "-o", "json").json()
    assert leaf["totals"]["available"] == 3


def test_allocate_show_delete(fed: Fed) -> None:
    _available(fed, {"rack-1": 3, "rack-2": 2})
    names: list[str] = []
    nodes: list[str] = []
    for _ in range(2):
        r = ok(fed.top.endpoint, "allocate", "--resource-class", "baremetal", "--policy", "spread")
        fields = dict(line.split(":", 1) for line in r.out.strip().split("\n"))
        names.append(fields["allocation"].strip())
        nodes.append(fields["node"].strip())
    # Spread: the first claim goes to rack-1 (3 free), leaving 2 and 2; the tie goes by name.
    assert [n.split("/")[1] for n in nodes] == ["rack-1", "rack-1"]
    assert len(set(nodes)) == 2 and all(n.startswith("cells/rack-1/allocations/") for n in names)

    data = _available(fed, {"rack-1": 1, "rack-2": 2})
    assert data["totals"]["allocated"] == 2

    shown = ok(fed.top.endpoint, "allocation", "show", names[0], "-o", "json").json()
    assert shown["name"] == names[0] and shown["node"] == nodes[0]
    assert shown["resource_class"] == "baremetal"
    node = ok(fed.top.endpoint, "node", "show", nodes[0], "-o", "json").json()
    assert node["allocation"] == names[0]

    bare_id = names[1].rsplit("/", 1)[1]
    r = ok(fed.top.endpoint, "allocation", "delete", bare_id, "--cell", "rack-1")
    assert r.out == f"deleted {names[1]}\n"
    r = cli(fed.top.endpoint, "allocation", "show", names[1])
    assert r.code == 1 and r.err.startswith("rackcells: NOT_FOUND: ")
    ok(fed.top.endpoint, "allocation", "delete", names[0])
    _available(fed, {"rack-1": 3, "rack-2": 2})


def test_disable_cell_and_allocate_elsewhere(fed: Fed) -> None:
    _available(fed, {"rack-1": 3, "rack-2": 2})
    r = ok(fed.top.endpoint, "cell", "disable", "rack-1", "--reason", "fan swap")
    assert r.out == "cells/rack-1: disabled, scheduling disabled (fan swap)\n"
    try:
        cell = _cells(fed)["cells/rack-1"]
        assert cell["state"] == "CELL_STATE_DISABLED" and cell["disabled_reason"] == "fan swap"
        row = next(
            line
            for line in ok(fed.top.endpoint, "cell", "list").out.split("\n")
            if "rack-1" in line
        )
        assert row.split()[1] == "disabled"
        schedulable = {n: c["schedulable"] for n, c in _capacity(fed)["by_cell"].items()}
        assert schedulable == {"cells/rack-1": False, "cells/rack-2": True}

        r = cli(fed.top.endpoint, "allocate", "--resource-class", "baremetal", "--cell", "rack-1")
        assert r.code == 1 and r.out == ""
        assert r.err.startswith("rackcells: FAILED_PRECONDITION: ") and "fan swap" in r.err

        # Without a cell only rack-2 is asked; once its two nodes are taken nothing is left.
        names = []
        for _ in range(2):
            alloc = ok(
                fed.top.endpoint, "allocate", "--resource-class", "baremetal", "-o", "json"
            ).json()
            assert alloc["node"].startswith("cells/rack-2/nodes/")
            names.append(alloc["name"])
        r = cli(fed.top.endpoint, "allocate", "--resource-class", "baremetal", "--policy", "pack")
        assert r.code == 1 and r.out == ""
        assert r.err.startswith("rackcells: RESOURCE_EXHAUSTED: ") and r.err.count("\n") == 1
        for name in names:
            ok(fed.top.endpoint, "allocation", "delete", name)
    finally:
        r = ok(fed.top.endpoint, "cell", "enable", "cells/rack-1", "-o", "json")
    enabled = r.json()
    assert enabled["scheduling_disabled"] is False and enabled["disabled_reason"] == ""
    assert enabled["state"] == "CELL_STATE_UP"
    _available(fed, {"rack-1": 3, "rack-2": 2})
    alloc = ok(
        fed.top.endpoint,
        "allocate",
        "--resource-class",
        "baremetal",
        "--cell",
        "rack-1",
        "-o",
        "json",
    ).json()
    assert alloc["node"].startswith("cells/rack-1/nodes/")
    ok(fed.top.endpoint, "allocation", "delete", alloc["name"])
