"""The simulator's network boot end to end: IPMI power-on with PXE, the leaf's iPXE script, the
real deploy agent writing the machine's disk file, then a boot from that disk.

The leaf is :class:`rackcells.sim.fakeleaf.FakeLeaf` (stdlib HTTP for scripts and images, gRPC
AgentService) in this process; the simulator is a subprocess; power and boot device go through
pyghmi's client, as the leaf's IPMI driver does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyghmi.ipmi import command

from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf
from rackcells.sim.harness import RunningSim, wait_until

NODES = 6
Connect = Callable[[int], command.Command]
IMAGE = os.urandom(3 << 20) + bytes(2 << 20) + b"tail"  # data, a hole, data


@pytest.fixture(scope="module")
def leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as fake:
        fake.add_image("test.img", IMAGE)
        yield fake


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disks")


@pytest.fixture(scope="module")
def sim(launch_sim: Callable[..., RunningSim], leaf: FakeLeaf, disk_dir: Path) -> RunningSim:
    return launch_sim(
        NODES,
        "--post-seconds",
        "0.2",
        "--boot-url",
        leaf.boot_url,
        "--disk-dir",
        str(disk_dir),
        prefix="bt-n",
    )


def mac(sim: RunningSim, index: int) -> str:
    return str(sim.inventory[index - 1]["ports"][0]["mac"])


@pytest.fixture
def connect(sim: RunningSim) -> Iterator[Callable[[int], command.Command]]:
    """pyghmi clients for this test, logged out after it: pyghmi keeps sessions alive
    process-wide, and stale ones would slow the pyghmi clients of later test modules."""
    clients: list[command.Command] = []

    def open_client(index: int) -> command.Command:
        client = command.Command(
            bmc="127.0.0.1", port=sim.port(index), userid=b"admin", password=sim.password.encode()
        )
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.ipmi_session.logout()


def power_cycle(client: command.Command) -> None:
    client.raw_command(netfn=0, command=2, data=[2])  # chassis control: power cycle


def wait_phase(sim: RunningSim, index: int, phase: str) -> dict[str, object]:
    name = sim.name(index)
    wait_until(lambda: sim.control.machine(name)["phase"] == phase, f"{name} in {phase}")
    return dict(sim.control.machine(name))


def test_pxe_deploy_writes_the_image_and_the_machine_then_boots_it(
    sim: RunningSim, leaf: FakeLeaf, disk_dir: Path, connect: Connect
) -> None:
    plan = leaf.deploy(sim.name(1), mac(sim, 1), "test.img")
    client = connect(1)
    client.set_bootdev("network")
    client.set_power("on")

    machine = wait_phase(sim, 1, "agent_done")
    image_sha = "sha256:" + hashlib.sha256(IMAGE).hexdigest()
    assert (disk_dir / f"{sim.name(1)}.img").read_bytes() == IMAGE
    assert machine["disk_bytes"] == len(IMAGE)
    assert machine["disk_sha256"] == image_sha
    assert (machine["deploys"], machine["agent_runs"]) == (1, 1)
    assert (machine["last_boot_script"], machine["deploy_error"]) == ("deploy", None)
    assert machine["booted_from"] == "pxe"
    [report] = [r for r in leaf.reports if r.node.endswith(sim.name(1))]
    assert (report.success, report.token, report.deploy_id) == (True, plan.token, plan.deploy_id)
    assert (report.written_checksum, report.bytes_written) == (image_sha, len(IMAGE))
    assert leaf.script_requests.count(mac(sim, 1)) == 1

    # The leaf's next step: boot the installed image from disk, with a power cycle.
    client.set_bootdev("hd")
    power_cycle(client)
    machine = wait_phase(sim, 1, "booted")
    assert (machine["booted_from"], machine["booted_image"]) == ("disk", image_sha)
    assert leaf.script_requests.count(mac(sim, 1)) == 1  # no PXE this time
    assert sim.control.summary()["workers"][0]["netboot_jobs"] == 0
    client.set_power("off")


def test_boot_from_disk_script_boots_the_disk(
    sim: RunningSim, leaf: FakeLeaf, connect: Connect
) -> None:
    leaf.boot_from_disk(sim.name(2), mac(sim, 2))
    client = connect(2)
    client.set_bootdev("network")
    client.set_power("on")
    machine = wait_phase(sim, 2, "booted")
    assert (machine["booted_from"], machine["last_boot_script"]) == ("disk", "disk")
    assert (machine["deploys"], machine["booted_image"]) == (0, None)  # an empty disk
    client.set_power("off")


def test_unknown_mac_fails_pxe_and_retries_on_the_next_power_on(
    sim: RunningSim, leaf: FakeLeaf, connect: Connect
) -> None:
    client = connect(3)
    client.set_bootdev("network", persist=True)
    client.set_power("on")
    machine = wait_phase(sim, 3, "pxe_failed")
    assert (machine["last_boot_script"], machine["pxe_failures"]) == ("error", 1)
    assert machine["power"] == "on"

    leaf.boot_from_disk(sim.name(3), mac(sim, 3))
    power_cycle(client)
    machine = wait_phase(sim, 3, "booted")
    assert (machine["last_boot_script"], machine["pxe_failures"]) == ("disk", 1)
    client.set_power("off")


def test_power_off_stops_a_waiting_agent(sim: RunningSim, leaf: FakeLeaf, connect: Connect) -> None:
    leaf.deploy(sim.name(4), mac(sim, 4), "test.img", waiting=False)
    client = connect(4)
    client.set_bootdev("network")
    client.set_power("on")
    wait_phase(sim, 4, "agent")
    wait_until(lambda: any(mac(sim, 4) in macs for macs in leaf.lookups), "a lookup")
    assert sim.control.summary()["workers"][0]["netboot_jobs"] == 1

    client.set_power("off")
    wait_until(lambda: sim.control.summary()["workers"][0]["netboot_jobs"] == 0, "agent end")
    machine = sim.control.machine(sim.name(4))
    assert (machine["phase"], machine["deploys"], machine["disk_bytes"]) == ("off", 0, 0)
    assert not [r for r in leaf.reports if r.node.endswith(sim.name(4))]


def test_power_off_aborts_a_download_and_the_next_deploy_succeeds(
    sim: RunningSim, leaf: FakeLeaf, disk_dir: Path, connect: Connect
) -> None:
    name = sim.name(5)
    leaf.deploy(name, mac(sim, 5), "test.img")
    leaf.throttle = 1.0  # seconds per MiB: the power-off comes long before the end
    try:
        client = connect(5)
        client.set_bootdev("network", persist=True)
        client.set_power("on")
        disk = disk_dir / f"{name}.img"
        wait_until(lambda: disk.exists() and disk.stat().st_size > 0, "the first MiB")
        client.set_power("off")
        wait_until(lambda: sim.control.summary()["workers"][0]["netboot_jobs"] == 0, "agent end")
    finally:
        leaf.throttle = 0.0
    machine = sim.control.machine(name)
    assert 0 < machine["disk_bytes"] < len(IMAGE)
    assert (machine["deploys"], machine["phase"]) == (0, "off")
    assert not [r for r in leaf.reports if r.node.endswith(name)]

    # The leaf still waits for an agent; the next power-on deploys the whole image.
    client.set_power("on")
    machine = wait_phase(sim, 5, "agent_done")
    assert machine["deploys"] == 1
    assert disk.read_bytes() == IMAGE
    client.set_power("off")


def test_failed_deploy_is_reported_and_visible(
    sim: RunningSim, leaf: FakeLeaf, connect: Connect
) -> None:
    leaf.deploy(sim.name(6), mac(sim, 6), "test.img", checksum="sha256:" + "0" * 64)
    client = connect(6)
    client.set_bootdev("network")
    client.set_power("on")
    machine = wait_phase(sim, 6, "agent_done")
    assert machine["deploys"] == 0
    assert "checksum mismatch" in str(machine["deploy_error"])
    [report] = [r for r in leaf.reports if r.node.endswith(sim.name(6))]
    assert not report.success
    assert "checksum mismatch" in report.error
    client.set_power("off")
