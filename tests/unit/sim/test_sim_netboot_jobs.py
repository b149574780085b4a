"""NetBoot's jobs in this process: threads run the real agent, results come back via ``post``.

The test plays the worker's event loop: it owns the machines and runs posted callbacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rackcells.sim.disk import DiskStore
from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf
from rackcells.sim.machine import Phase, VirtualMachine
from rackcells.sim.netboot import NetBoot

IMAGE = os.urandom(4 << 20)
IMAGE_SHA = "sha256:" + hashlib.sha256(IMAGE).hexdigest()


class Loop:
    """Stands in for the worker's loop: a queue of posted callbacks, run on demand."""

    def __init__(self) -> None:
        self.posted: queue.SimpleQueue[Callable[[float], object]] = queue.SimpleQueue()

    def post(self, callback: Callable[[float], object]) -> None:
        self.posted.put(callback)

    def run_until(self, done: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            with contextlib.suppress(queue.Empty):
                self.posted.get(timeout=0.05)(time.monotonic())


@pytest.fixture(scope="module")
def leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as fake:
        fake.add_image("test.img", IMAGE)
        yield fake


_indices = itertools.count(1)


def start(leaf: FakeLeaf, tmp_path: Path) -> tuple[Loop, NetBoot, VirtualMachine]:
    """A NetBoot with one machine that has a MAC of its own (the leaf is shared)."""
    index = next(_indices)
    loop = Loop()
    netboot = NetBoot(leaf.boot_url, DiskStore(tmp_path), loop.post, threads=4, writers=2)
    machine = VirtualMachine(name=f"nb-n{index:04d}", index=index)
    netboot.attach(machine, f"02:00:00:00:00:{index:02x}")
    return loop, netboot, machine


def pxe_on(machine: VirtualMachine) -> None:
    machine.set_boot_device("pxe", time.monotonic(), persistent=True)
    machine.press_power_on(time.monotonic())


def test_a_pxe_boot_deploys_through_the_agent(leaf: FakeLeaf, tmp_path: Path) -> None:
    loop, netboot, machine = start(leaf, tmp_path)
    mac = netboot._macs[machine.name]
    leaf.deploy(machine.name, mac, "test.img")
    try:
        pxe_on(machine)
        assert machine.phase is Phase.PXE
        loop.run_until(lambda: machine.phase is Phase.AGENT_DONE, "the agent")
        loop.run_until(lambda: netboot.running() == 0, "the job to end")
        assert (machine.deploys, machine.disk_bytes, machine.disk_sha256) == (
            1,
            len(IMAGE),
            IMAGE_SHA,
        )
        assert (tmp_path / f"{machine.name}.img").read_bytes() == IMAGE
    finally:
        netboot.shutdown()


def test_power_off_mid_download_ends_the_job_and_a_new_deploy_rewrites_the_disk(
    leaf: FakeLeaf, tmp_path: Path
) -> None:
    loop, netboot, machine = start(leaf, tmp_path)
    mac = netboot._macs[machine.name]
    leaf.deploy(machine.name, mac, "test.img")
    leaf.throttle = 1.0  # seconds per MiB: the power-off comes long before the end
    try:
        pxe_on(machine)
        disk = tmp_path / f"{machine.name}.img"
        loop.run_until(lambda: disk.exists() and disk.stat().st_size > 0, "the first MiB")
        machine.press_power_off(time.monotonic())
        started = time.monotonic()
        loop.run_until(lambda: netboot.running() == 0, "the job to end")
        assert time.monotonic() - started < 2
        loop.run_until(lambda: machine.disk_bytes > 0, "the partial disk")
        assert machine.disk_bytes < len(IMAGE)
        assert (machine.phase, machine.deploys) == (Phase.OFF, 0)
        assert not [r for r in leaf.reports if r.node.endswith(machine.name)]
    finally:
        leaf.throttle = 0.0
    try:
        pxe_on(machine)
        loop.run_until(lambda: machine.phase is Phase.AGENT_DONE, "the second agent")
        assert (machine.deploys, machine.disk_sha256) == (1, IMAGE_SHA)
        assert disk.read_bytes() == IMAGE
    finally:
        netboot.shutdown()


def test_shutdown_stops_waiting_agents_promptly(leaf: FakeLeaf, tmp_path: Path) -> None:
    loop, netboot, machine = start(leaf, tmp_path)
    leaf.deploy(machine.name, netboot._macs[machine.name], "test.img", waiting=False)
    pxe_on(machine)
    loop.run_until(lambda: machine.phase is Phase.AGENT, "the agent to start")
    started = time.monotonic()
    netboot.shutdown()
    assert time.monotonic() - started < 2
    assert netboot.running() == 0
