"""Debian's ipmitool (lanplus) against the simulator: what it does must reach the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import pytest

from rackcells.sim.harness import RunningSim

pytestmark = [
    pytest.mark.ipmitool,
    pytest.mark.skipif(
        shutil.which("ipmitool") is None and not os.environ.get("RACKCELLS_REQUIRE_IPMITOOL"),
        reason="ipmitool is not on PATH (apt-get install ipmitool)",
    ),
]

NODES = 5
BAD_CREDENTIALS_NODE = 5


@pytest.fixture(scope="module")
def sim(launch_sim: Callable[..., RunningSim]) -> RunningSim:
    return launch_sim(
        NODES, "--post-seconds", "0", "--fault", f"bad-credentials:{BAD_CREDENTIALS_NODE}"
    )


def ipmitool(
    sim: RunningSim, index: int, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "ipmitool",
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        str(sim.port(index)),
        "-U",
        "admin",
        "-P",
        password if password is not None else sim.password,
        "-R",
        "1",
        "-N",
        "1",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"ipmitool failed: {result.stdout}{result.stderr}"
    return result.stdout


def test_power_on_off_reach_the_machine(sim: RunningSim) -> None:
    name = sim.name(1)
    assert ok(ipmitool(sim, 1, "power", "status")).strip() == "Chassis Power is off"
    before = sim.control.machine(name)["power_on_count"]

    ok(ipmitool(sim, 1, "power", "on"))
    machine = sim.control.machine(name)
    assert machine["power"] == "on"
    assert machine["phase"] == "booted"  # --post-seconds 0
    assert machine["power_on_count"] == before + 1
    assert ok(ipmitool(sim, 1, "power", "status")).strip() == "Chassis Power is on"

    ok(ipmitool(sim, 1, "power", "off"))
    assert sim.control.machine(name)["power"] == "off"
    assert ok(ipmitool(sim, 1, "power", "status")).strip() == "Chassis Power is off"


def test_power_cycle_restarts_a_running_machine_and_is_refused_when_off(sim: RunningSim) -> None:
    name = sim.name(2)
    refused = ipmitool(sim, 2, "power", "cycle")
    assert refused.returncode != 0
    assert "not supported in present state" in refused.stdout + refused.stderr
    assert sim.control.machine(name)["power"] == "off"

    ok(ipmitool(sim, 2, "power", "on"))
    count = sim.control.machine(name)["power_on_count"]
    ok(ipmitool(sim, 2, "power", "cycle"))
    machine = sim.control.machine(name)
    assert machine["power"] == "on"
    assert machine["power_on_count"] == count + 1
    assert machine["last_action"] == "ipmi power cycle"


def test_soft_off_shuts_down_a_booted_machine(sim: RunningSim) -> None:
    name = sim.name(3)
    ok(ipmitool(sim, 3, "power", "on"))
    ok(ipmitool(sim, 3, "power", "soft"))
    assert sim.control.machine(name)["power"] == "off"


def test_boot_device_is_set_and_read_back(sim: RunningSim) -> None:
    name = sim.name(4)
    ok(ipmitool(sim, 4, "chassis", "bootdev", "pxe"))
    machine = sim.control.machine(name)
    assert (machine["boot_device"], machine["persistent"]) == ("pxe", False)
    shown = ok(ipmitool(sim, 4, "chassis", "bootparam", "get", "5"))
    assert "Force PXE" in shown
    assert "only next boot" in shown

    ok(ipmitool(sim, 4, "chassis", "bootdev", "disk", "options=persistent"))
    machine = sim.control.machine(name)
    assert (machine["boot_device"], machine["persistent"]) == ("disk", True)
    shown = ok(ipmitool(sim, 4, "chassis", "bootparam", "get", "5"))
    assert "Force Boot from default Hard-Drive" in shown
    assert "all future boots" in shown


def test_one_time_pxe_override_is_consumed_by_the_next_boot(sim: RunningSim) -> None:
    name = sim.name(4)
    ok(ipmitool(sim, 4, "chassis", "bootdev", "pxe"))
    ok(ipmitool(sim, 4, "power", "on"))
    machine = sim.control.machine(name)
    assert machine["booted_from"] == "pxe"
    assert machine["boot_device"] == "default"
    ok(ipmitool(sim, 4, "power", "off"))


def test_wrong_password_is_rejected_and_changes_nothing(sim: RunningSim) -> None:
    name = sim.name(1)
    before = sim.control.machine(name)
    result = ipmitool(sim, 1, "power", "on", password="wrong-password")
    assert result.returncode != 0
    assert "Unable to establish" in result.stderr
    after = sim.control.machine(name)
    assert (after["power"], after["power_on_count"]) == (before["power"], before["power_on_count"])


def test_bad_credentials_fault_makes_the_inventory_password_fail(sim: RunningSim) -> None:
    entry = sim.inventory[BAD_CREDENTIALS_NODE - 1]
    assert entry["bmc"]["password"] == sim.password
    assert ipmitool(sim, BAD_CREDENTIALS_NODE, "power", "status").returncode != 0
    ok(ipmitool(sim, BAD_CREDENTIALS_NODE, "power", "status", password=f"not-{sim.password}"))
    assert sim.control.machine(sim.name(BAD_CREDENTIALS_NODE))["faults"]["bad_credentials"]


def test_unreachable_fault_times_out_until_cleared(sim: RunningSim) -> None:
    name = sim.name(3)
    sim.control.set_fault(name, unreachable=True)
    try:
        result = ipmitool(sim, 3, "power", "status")
        assert result.returncode != 0
        assert "Unable to establish" in result.stderr
    finally:
        sim.control.clear_faults(name)
    ok(ipmitool(sim, 3, "power", "status"))


def test_out_of_band_power_button_is_seen_by_ipmitool(sim: RunningSim) -> None:
    name = sim.name(1)
    sim.control.press_power(name, True)
    assert ok(ipmitool(sim, 1, "power", "status")).strip() == "Chassis Power is on"
    machine = sim.control.press_power(name, False)
    assert machine["last_action"] == "button power off"
    assert ok(ipmitool(sim, 1, "power", "status")).strip() == "Chassis Power is off"
