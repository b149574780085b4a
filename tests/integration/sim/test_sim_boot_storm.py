"""A hundred machines PXE-boot and deploy at once: one worker's threads, the hashing sink,
and a control API that stays quick while they write."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

import pytest
from pyghmi.ipmi import command

from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf
from rackcells.sim.harness import RunningSim, wait_until

pytestmark = pytest.mark.slow

NODES = 100
IMAGE = os.urandom(16 << 20)


@pytest.fixture(scope="module")
def leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as fake:
        fake.add_image("storm.img", IMAGE)
        yield fake


def test_a_hundred_machines_deploy_at_once(
    launch_sim: Callable[..., RunningSim], leaf: FakeLeaf
) -> None:
    sim = launch_sim(
        NODES,
        "--post-seconds",
        "1",
        "--boot-url",
        leaf.boot_url,
        "--disk-sink",
        "hash",
        prefix="st-n",
    )
    for i, node in enumerate(sim.inventory, start=1):
        leaf.deploy(sim.name(i), node["ports"][0]["mac"], "storm.img")
    clients: list[command.Command] = []

    def all_done() -> bool:
        return all(m["phase"] == "agent_done" for m in sim.control.machines())

    try:
        for i in range(1, NODES + 1):
            client = command.Command(
                bmc="127.0.0.1", port=sim.port(i), userid=b"admin", password=sim.password.encode()
            )
            clients.append(client)
            client.set_bootdev("network")
            client.set_power("on")
        wait_until(all_done, "every agent", timeout=120)
    finally:
        for client in clients:  # pyghmi would keep them alive for later test modules
            client.ipmi_session.logout()
    image_sha = "sha256:" + hashlib.sha256(IMAGE).hexdigest()
    machines = sim.control.machines()
    assert all((m["deploys"], m["disk_sha256"]) == (1, image_sha) for m in machines)
    assert sum(r.success for r in leaf.reports) == NODES
    assert sim.control.summary()["workers"][0]["netboot_jobs"] == 0
