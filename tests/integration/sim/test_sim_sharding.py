"""Sharded mode: one command, several worker processes, one control API and inventory."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from pyghmi.ipmi import command

from rackcells.sim.harness import RunningSim, pid_alive, running_rack, start_rack, wait_until

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.fixture(scope="module")
def rack300(launch_sim: Callable[..., RunningSim]) -> RunningSim:
    return launch_sim(300, prefix="sh-n")


def test_300_nodes_run_in_two_workers_behind_one_control_api(rack300: RunningSim) -> None:
    workers = rack300.control.summary()["workers"]
    assert [w["bmcs"] for w in workers] == [150, 150]
    assert len({w["pid"] for w in workers}) == 2

    machines = rack300.control.machines()
    assert len(machines) == 300
    assert [m["name"] for m in machines] == [rack300.name(i) for i in range(1, 301)]
    assert [m["bmc_port"] for m in machines] == [rack300.port(i) for i in range(1, 301)]
    assert rack300.control.machine(rack300.name(300))["bmc_port"] == rack300.port(300)


def test_first_and_last_bmc_answer_ipmi(rack300: RunningSim) -> None:
    for index in (1, 300):
        client = command.Command(
            bmc="127.0.0.1",
            port=rack300.port(index),
            userid=b"admin",
            password=rack300.password.encode(),
        )
        client.set_power("on")
        assert client.get_power() == {"powerstate": "on"}
        assert rack300.control.machine(rack300.name(index))["power"] == "on"


def test_inventory_has_unique_names_macs_and_ports(rack300: RunningSim) -> None:
    inventory = rack300.inventory
    assert isinstance(inventory, list)
    assert len(inventory) == 300
    names = [n["name"] for n in inventory]
    macs = [n["ports"][0]["mac"] for n in inventory]
    ports = [n["bmc"]["port"] for n in inventory]
    assert len(set(names)) == len(set(macs)) == len(set(ports)) == 300
    assert all(_LABEL.match(name) for name in names)
    assert set(ports) == set(range(rack300.port_base, rack300.port_base + 300))
    assert {n["bmc"]["password"] for n in inventory} == {rack300.password}


def test_sigterm_stops_parent_and_workers_cleanly(tmp_path: Path) -> None:
    with running_rack(4, tmp_path, "--per-worker", "2") as sim:
        assert len(sim.workers) == 2
        assert sim.stop() == 0
        wait_until(lambda: not any(pid_alive(p) for p in sim.workers), "workers to exit")


def test_a_dying_worker_takes_the_simulator_down_with_an_error(tmp_path: Path) -> None:
    with running_rack(4, tmp_path, "--per-worker", "2") as sim:
        os.kill(sim.workers[1], signal.SIGKILL)
        assert sim.proc.wait(30) == 1
        assert "worker 1" in sim.stderr()
        wait_until(lambda: not pid_alive(sim.workers[0]), "the other worker to be stopped")


def test_port_in_use_fails_start_up(tmp_path: Path) -> None:
    with (
        running_rack(2, tmp_path / "a") as first,
        pytest.raises(RuntimeError, match="cannot bind"),
    ):
        start_rack(2, tmp_path / "b", port_base=first.port_base + 1)
