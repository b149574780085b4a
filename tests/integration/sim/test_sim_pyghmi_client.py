"""pyghmi's client (what the leaf cell uses) against the simulator, several BMCs per process.

pyghmi's client proposes cipher suite 17 first and shares one UDP socket across up to 64 BMCs;
both tripped the stock pyghmi server (see rackcells.sim.bmc).  Credentials are bytes: with str,
pyghmi fails to recognise its own session and a second Command() to the same BMC hangs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pyghmi.ipmi import command

from rackcells.sim.harness import RunningSim, wait_until

NODES = 6


@pytest.fixture(scope="module")
def sim(launch_sim: Callable[..., RunningSim]) -> RunningSim:
    return launch_sim(NODES, "--post-seconds", "0.3", prefix="pg-n")


def connect(sim: RunningSim, index: int) -> command.Command:
    return command.Command(
        bmc="127.0.0.1", port=sim.port(index), userid=b"admin", password=sim.password.encode()
    )


def test_power_and_boot_device_on_several_bmcs_from_one_client(sim: RunningSim) -> None:
    indices = range(1, 5)
    clients = {i: connect(sim, i) for i in indices}
    for i, client in clients.items():
        assert client.get_power() == {"powerstate": "off"}
        client.set_bootdev("network")
        client.set_power("on")
        assert client.get_power() == {"powerstate": "on"}
        assert client.get_bootdev()["bootdev"] == "network"
        machine = sim.control.machine(sim.name(i))
        assert (machine["power"], machine["boot_device"]) == ("on", "pxe")
        # The suite-17 proposal was refused without creating a session; suite 3 made one.
        assert machine["sessions_opened"] == 1

    for i in indices:
        name = sim.name(i)
        wait_until(lambda: sim.control.machine(name)["phase"] == "booted", f"{name} to boot")  # noqa: B023
        machine = sim.control.machine(sim.name(i))
        assert machine["booted_from"] == "pxe"
        assert machine["boot_device"] == "default"  # one-time override consumed
    for client in clients.values():
        client.set_power("off")
    assert all(sim.control.machine(sim.name(i))["power"] == "off" for i in indices)


def test_relogin_on_a_shared_socket_keeps_the_other_ports_sessions(sim: RunningSim) -> None:
    first, second = connect(sim, 5), connect(sim, 6)
    shared = first.ipmi_session.socket
    assert second.ipmi_session.socket is shared, "precondition: one client socket, two ports"
    first.get_power()
    second.get_power()

    # The client loses its session to node 6 without the BMC hearing the Close Session
    # (dropped by a brief "unreachable"), then logs in again from the same socket: the
    # BMC sees pre-session packets from an address that already has a session there.
    name5, name6 = sim.name(5), sim.name(6)
    sim.control.set_fault(name6, unreachable=True)
    second.ipmi_session._mark_broken()
    sim.control.clear_faults(name6)
    again = connect(sim, 6)
    assert again.ipmi_session.socket is shared, "precondition: re-login from the same socket"

    assert again.get_power() == {"powerstate": "off"}
    assert first.get_power() == {"powerstate": "off"}
    node5, node6 = sim.control.machine(name5), sim.control.machine(name6)
    assert node6["sessions_opened"] == 2
    assert node6["sessions"] == 1  # the stale session was replaced, not kept
    assert node5["sessions_opened"] == 1, "node 5 lost its session to node 6's re-login"
    assert node5["sessions"] == 1
    assert all(w["errors"] == 0 for w in sim.control.summary()["workers"])


def test_out_of_band_power_is_what_the_client_reads(sim: RunningSim) -> None:
    client = connect(sim, 1)
    sim.control.press_power(sim.name(1), True)
    assert client.get_power() == {"powerstate": "on"}
    sim.control.press_power(sim.name(1), False)
    assert client.get_power() == {"powerstate": "off"}
