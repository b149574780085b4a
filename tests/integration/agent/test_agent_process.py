"""``python -m rackcells.agent`` as a process: exit status, the written device, its stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf

MAC = "02:aa:bb:cc:01:01"
IMAGE = os.urandom(1 << 20) + b"!"


@pytest.fixture(scope="module")
def leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as fake:
        fake.add_image("test.img", IMAGE)
        yield fake


def agent(leaf: FakeLeaf, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(
        [sys.executable, "-m", "rackcells.agent", "--endpoint", leaf.agent_endpoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_a_deploy_exits_0_and_the_device_override_gets_the_image(
    leaf: FakeLeaf, tmp_path: Path
) -> None:
    plan = leaf.deploy("p1", MAC, "test.img", target_device="/dev/nonexistent-disk")
    device = tmp_path / "disk.img"
    done = agent(leaf, "--mac", MAC, "--device", str(device))
    assert done.returncode == 0, done.stderr
    assert device.read_bytes() == IMAGE
    assert "reported success" in done.stderr
    assert plan.token not in done.stderr + done.stdout
    assert leaf.reports[-1].success


def test_a_failed_deploy_is_reported_and_exits_1(leaf: FakeLeaf, tmp_path: Path) -> None:
    plan = leaf.deploy("p1", MAC, "test.img", checksum="sha256:" + "1" * 64)
    done = agent(leaf, "--mac", MAC, "--device", str(tmp_path / "disk.img"))
    assert done.returncode == 1
    assert "deploy failed: checksum mismatch" in done.stderr
    assert plan.token not in done.stderr + done.stdout
    assert not leaf.reports[-1].success


def test_an_unknown_machine_exits_1_without_a_report(leaf: FakeLeaf, tmp_path: Path) -> None:
    reports = len(leaf.reports)
    done = agent(leaf, "--mac", "02:00:00:00:99:99", "--device", str(tmp_path / "x"))
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr
    assert len(leaf.reports) == reports
