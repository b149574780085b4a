"""Deploys over real IPMI: an in-process leaf with the ``ipmi`` driver against the rack
simulator, whose machines PXE-boot from ``--boot-url`` and run the real deploy agent."""

from __future__ import annotations

import hashlib
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploykit import PHASES, wait_until

from rackcells.sim.harness import RunningSim, start_rack
from rackcells.v1 import node_pb2

_nodes = itertools.count(1)


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def boot_port() -> int:
    """The port the simulator's machines fetch boot scripts from; a leaf may listen there."""
    return _free_tcp_port()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, boot_port: int) -> Iterator[RunningSim]:
    workdir = tmp_path_factory.mktemp("ipmi-sim")
    rack = start_rack(
        8,
        workdir,
        "--post-seconds",
        "0.2",
        "--boot-url",
        f"http://127.0.0.1:{boot_port}",
        "--disk-dir",
        str(workdir / "disks"),
        prefix="ip-n",
    )
    try:
        yield rack
    finally:
        rack.stop()
        survivors = rack.reap_workers()
        assert not survivors, f"simulator workers {survivors} outlived their parent"


def _available(cell, sim: RunningSim) -> str:  # type: ignore[no-untyped-def]
    """Enrols the next unused machine of the simulator and makes it available over IPMI."""
    entry = sim.inventory[next(_nodes) - 1]
    cell.enrol(entry)
    cell.make_available(entry["name"])
    return str(entry["name"])


def test_ipmi_deploy_writes_the_image_to_the_disk_and_boots_it(
    start_cell, sim, boot_port, image
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(http_listen=f"127.0.0.1:{boot_port}", bmc_timeout=5.0)
    name = _available(cell, sim)
    op = cell.wait(cell.deploy(name, image.url, image.checksum))
    assert not op.HasField("error"), op.error
    node = cell.get(name)
    assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
    assert [p.phase for p in node.last_deploy.phases] == list(PHASES)
    disk = Path(sim.inventory_path.parent / "disks" / f"{name}.img")
    assert "sha256:" + hashlib.sha256(disk.read_bytes()).hexdigest() == image.checksum
    machine = wait_until(
        lambda: (m := sim.control.machine(name))["phase"] == "booted" and m, f"{name} booted"
    )
    assert machine["booted_from"] == "disk" and machine["booted_image"] == image.checksum
    assert machine["last_boot_script"] == "deploy" and machine["deploys"] == 1


def test_ipmi_node_whose_boot_server_is_unreachable_fails_in_pxe(start_cell, sim, image) -> None:  # type: ignore[no-untyped-def]
    # The leaf's boot server listens elsewhere: the machine's PXE fetch reaches nothing.
    cell = start_cell(deploy_pxe_timeout=2.0, bmc_timeout=5.0)
    name = _available(cell, sim)
    op = cell.wait(cell.deploy(name, image.url, image.checksum))
    node = cell.assert_failed_cleanly(name, op, "pxe")
    assert "boot script" in node.last_error
    machine = wait_until(
        lambda: (m := sim.control.machine(name))["pxe_failures"] >= 1 and m, "a failed PXE boot"
    )
    assert machine["power"] == "on" and machine["deploys"] == 0
