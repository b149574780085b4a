"""A leaf killed with SIGKILL mid-deploy (or mid-verify) and restarted on the same database
leaves no stale lock and no node in a transient state: every node it was working on is moved to
its failed state with last_error saying why, every operation it was running ends with an error,
and a failed node can be deployed again.

The leaf runs as a subprocess (so it can really be killed) against the rack simulator. The
machines' boot server is a gate in front of the leaf's: while it is closed a PXE-booting machine
finds no script, so its deploy sits in wait-call-back for as long as the test needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploykit import (
    TRANSIENT,
    BootGate,
    Cell,
    LeafProcess,
    free_tcp_port,
    metadata,
    wait_until,
)

from rackcells.sim.harness import RunningSim, start_rack
from rackcells.v1 import node_pb2, node_service_pb2

_machines = itertools.count(0)


@pytest.fixture(scope="module")
def gate() -> Iterator[BootGate]:
    g = BootGate()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, gate: BootGate) -> Iterator[RunningSim]:
    rack = start_rack(
        16,
        tmp_path_factory.mktemp("recovery-sim"),
        "--post-seconds",
        "0.2",
        "--boot-url",
        gate.url,
        prefix="rc-n",
    )
    try:
        yield rack
    finally:
        rack.stop()
        survivors = rack.reap_workers()
        assert not survivors, f"simulator workers {survivors} outlived their parent"


@pytest.fixture
def leaf(db_url: str, tmp_path: Path, gate: BootGate) -> Iterator[Any]:
    """``leaf(*extra_args)``: starts the leaf subprocess (once per test) on ``db_url`` with a
    boot HTTP server on a fixed port behind the gate (closed); stopped by PID afterwards."""
    started: list[LeafProcess] = []
    http_port = free_tcp_port()

    def start(*args: str) -> LeafProcess:
        gate.upstream, gate.is_open = f"http://127.0.0.1:{http_port}", False
        process = LeafProcess(
            tmp_path,
            db_url,
            ["--http-listen", f"127.0.0.1:{http_port}", "--power-on-rate", "0", *args],
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
    gate.is_open = False


@pytest.fixture
def cells() -> Iterator[Any]:
    """``cells(endpoint)``: a client, closed after the test."""
    opened: list[Cell] = []

    def connect(endpoint: str) -> Cell:
        opened.append(Cell(endpoint))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()


def _available(cell: Cell, sim: RunningSim, count: int) -> list[str]:
    names = []
    for _ in range(count):
        entry = sim.inventory[next(_machines)]
        cell.enrol(entry)
        cell.make_available(entry["name"])
        names.append(str(entry["name"]))
    return names


def _assert_recovered(
    cell: Cell, names: list[str], op_names: list[str], failed: int, was: list[str]
) -> None:
    """What a restarted leaf must show for the nodes and operations the dead one left;
    ``was`` is the state each node was in when the leaf died, as last_error names it."""
    for name, was_state in zip(names, was, strict=True):
        node = cell.get(name)
        state = node_pb2.ProvisionState.Name(node.provision_state)
        assert not node.HasField("lock"), f"{name} still locked: {node.lock}"
        assert node.provision_state not in TRANSIENT, f"{name} stuck in {state}"
        assert node.provision_state == failed, f"{name} in {state}"
        assert "restarted" in node.last_error, node.last_error
        assert node.last_error.endswith(f"was {was_state}"), node.last_error
    for op_name in op_names:
        op = cell.get_op(op_name)
        assert op.done and op.HasField("error") and op.error.code != 0, op
        assert "restarted" in op.error.message, op.error.message
    assert all(op.done for op in cell.operations())


def test_kill_while_deploys_are_queued_fails_every_queued_and_running_deploy_cleanly(
    leaf, cells, sim, gate, image
) -> None:  # type: ignore[no-untyped-def]
    process = leaf("--deploy-concurrency", "1")
    cell = cells(process.endpoint)
    names = _available(cell, sim, 4)
    ops = [cell.deploy(name, image.url, image.checksum) for name in names]
    cell.wait_state(names[0], node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(
        lambda: [metadata(cell.get_op(o.name)).queue_position for o in ops] == [0, 1, 2, 3],
        "three deploys queued behind the first",
    )

    process.kill()
    process.start()
    cell = cells(process.endpoint)

    _assert_recovered(
        cell,
        names,
        [o.name for o in ops],
        node_pb2.PROVISION_STATE_DEPLOY_FAILED,
        ["wait_call_back", "deploying", "deploying", "deploying"],
    )
    # A deploy that is over is not in anyone's queue any more.
    assert [metadata(cell.get_op(o.name)).queue_position for o in ops] == [0, 0, 0, 0]

    gate.is_open = True
    for name in (names[0], names[3]):  # the one that was booting, and the last in the queue
        op = cell.wait(cell.deploy(name, image.url, image.checksum))
        assert not op.HasField("error"), f"{op.error}\n{process.log()}"
        node = cell.get(name)
        assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE and not node.last_error
    machine = sim.control.machine(names[0])
    assert machine["disk_sha256"] == image.checksum


def test_kill_while_nodes_wait_for_pxe_fails_their_deploys_cleanly(
    leaf, cells, sim, gate, image
) -> None:  # type: ignore[no-untyped-def]
    process = leaf()
    cell = cells(process.endpoint)
    names = _available(cell, sim, 2)
    ops = [cell.deploy(name, image.url, image.checksum) for name in names]
    for name in names:
        cell.wait_state(name, node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
        wait_until(lambda n=name: sim.control.machine(n)["pxe_failures"] >= 1, f"{name} PXE")
    assert all(metadata(cell.get_op(o.name)).phase == "pxe" for o in ops)

    process.kill()
    process.start()
    cell = cells(process.endpoint)

    _assert_recovered(
        cell,
        names,
        [o.name for o in ops],
        node_pb2.PROVISION_STATE_DEPLOY_FAILED,
        ["wait_call_back", "wait_call_back"],
    )
    gate.is_open = True
    op = cell.wait(cell.deploy(names[1], image.url, image.checksum))
    assert not op.HasField("error"), f"{op.error}\n{process.log()}"
    assert cell.get(names[1]).provision_state == node_pb2.PROVISION_STATE_ACTIVE
    assert sim.control.machine(names[1])["disk_sha256"] == image.checksum


def test_kill_during_verification_returns_the_node_to_enroll_and_it_can_be_managed_again(
    leaf, cells, sim
) -> None:  # type: ignore[no-untyped-def]
    process = leaf()
    cell = cells(process.endpoint)
    entry = sim.inventory[next(_machines)]
    name = str(entry["name"])
    cell.enrol(entry)
    sim.control.set_fault(name, slow=5.0)  # the BMC answers 5 s late: verification takes a while
    op = cell.change(name, node_service_pb2.PROVISION_ACTION_MANAGE)
    node = cell.get(name)
    assert node.provision_state == node_pb2.PROVISION_STATE_VERIFYING and node.lock.purpose
    assert not cell.get_op(op.name).done

    process.kill()
    process.start()
    cell = cells(process.endpoint)

    _assert_recovered(cell, [name], [op.name], node_pb2.PROVISION_STATE_ENROLL, ["verifying"])
    sim.control.clear_faults(name)
    op = cell.wait(cell.change(name, node_service_pb2.PROVISION_ACTION_MANAGE))
    assert not op.HasField("error"), op.error
    assert cell.get(name).provision_state == node_pb2.PROVISION_STATE_MANAGEABLE
