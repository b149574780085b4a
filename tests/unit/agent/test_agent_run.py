"""The deploy agent against an in-process AgentService and image server on 127.0.0.1.

The fake (rackcells.sim.fakeleaf) is a real gRPC server and a real stdlib HTTP server, so these
tests run the agent's own channel, retries and streaming code, not mocks of them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rackcells.agent import AgentResult, run_agent
from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf

MAC = "02:aa:bb:cc:00:01"
IMAGE = os.urandom(2 << 20) + b"odd tail"
IMAGE_SHA = "sha256:" + hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture(scope="module")
def module_leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as leaf:
        leaf.add_image("test.img", IMAGE)
        yield leaf


@pytest.fixture
def leaf(module_leaf: FakeLeaf) -> FakeLeaf:
    with module_leaf.lock:
        module_leaf.nodes.clear()
        module_leaf.lookups.clear()
        module_leaf.reports.clear()
        module_leaf.lookup_errors.clear()
    return module_leaf


class Disk(io.BytesIO):
    """A device that keeps what it was given after the agent closes it."""

    kept = b""

    def close(self) -> None:
        if not self.closed:
            self.kept = self.getvalue()
        super().close()


def run(leaf: FakeLeaf, **kwargs: object) -> AgentResult:
    kwargs.setdefault("lookup_timeout", 5.0)
    kwargs.setdefault("rpc_timeout", 5.0)
    return run_agent(leaf.agent_endpoint, [MAC.upper()], **kwargs)  # type: ignore[arg-type]


def test_success_writes_the_exact_bytes_and_reports_with_the_token(
    leaf: FakeLeaf, tmp_path: Path
) -> None:
    disk = tmp_path / "sda"
    plan = leaf.deploy("n1", MAC, "test.img", target_device=str(disk))

    result = run(leaf)  # the default opener writes the plan's target device

    assert disk.read_bytes() == IMAGE
    assert result.success, result.error
    assert (result.node, result.deploy_id) == ("cells/rack-1/nodes/n1", plan.deploy_id)
    assert (result.bytes_written, result.checksum, result.error) == (len(IMAGE), IMAGE_SHA, "")
    [report] = leaf.reports
    assert (report.node, report.deploy_id, report.token) == (
        result.node,
        plan.deploy_id,
        plan.token,
    )
    assert (report.success, report.error) == (True, "")
    assert (report.bytes_written, report.written_checksum) == (len(IMAGE), IMAGE_SHA)
    assert report.write_duration.ToNanoseconds() > 0
    assert leaf.lookups == [[MAC.upper()]]


def test_checksum_mismatch_is_reported_as_a_failure(leaf: FakeLeaf) -> None:
    wrong = "sha256:" + "ab" * 32
    leaf.deploy("n1", MAC, "test.img", checksum=wrong)
    device = Disk()

    result = run(leaf, open_device=lambda _path: device)

    assert not result.success
    assert result.error.startswith("checksum mismatch")
    assert result.checksum == IMAGE_SHA
    [report] = leaf.reports
    assert (report.success, report.written_checksum) == (False, IMAGE_SHA)
    assert "checksum mismatch" in report.error and wrong.split(":")[1] in report.error
    assert device.kept == IMAGE  # written, then found wrong: the leaf decides


def test_an_image_larger_than_the_plan_stops_the_write(leaf: FakeLeaf) -> None:
    leaf.deploy("n1", MAC, "test.img", size=1 << 20)
    device = Disk()
    result = run(leaf, open_device=lambda _path: device)
    assert not result.success
    assert "offers" in result.error  # refused from Content-Length, before writing anything
    assert device.closed and device.kept == b""
    assert not leaf.reports[0].success


def test_a_missing_image_is_reported(leaf: FakeLeaf) -> None:
    plan = leaf.deploy("n1", MAC, "test.img")
    plan.image_url = plan.image_url.replace("test.img", "gone.img")
    with leaf.lock:
        leaf.nodes[MAC].plan = plan
    result = run(leaf, open_device=lambda _path: Disk())
    assert not result.success
    assert "HTTP 404" in result.error
    assert "HTTP 404" in leaf.reports[0].error


class BrokenDisk(Disk):
    def write(self, data: object) -> int:  # type: ignore[override]
        raise OSError(5, "Input/output error")


def test_device_errors_are_reported(leaf: FakeLeaf) -> None:
    leaf.deploy("n1", MAC, "test.img", target_device="/dev/sdz")
    result = run(leaf, open_device=lambda _path: BrokenDisk())
    assert not result.success
    assert result.error.startswith("writing /dev/sdz failed at byte 0")
    assert "Input/output error" in leaf.reports[0].error

    def refuse(path: str) -> Disk:
        raise PermissionError(13, "Permission denied", path)

    leaf.deploy("n1", MAC, "test.img", target_device="/dev/sdz")
    result = run(leaf, open_device=refuse)
    assert result.error.startswith("cannot open /dev/sdz")
    assert len(leaf.reports) == 2 and not leaf.reports[1].success


def test_not_found_is_final(leaf: FakeLeaf) -> None:
    started = time.monotonic()
    result = run(leaf, lookup_timeout=30.0)
    assert time.monotonic() - started < 5
    assert not result.success
    assert "NOT_FOUND" in result.error
    assert len(leaf.lookups) == 1
    assert leaf.reports == []


def test_failed_precondition_and_unavailable_are_retried(leaf: FakeLeaf) -> None:
    leaf.deploy("n1", MAC, "test.img")
    leaf.lookup_errors.extend([grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE])
    result = run(leaf, open_device=lambda _path: Disk())
    assert result.success, result.error
    assert len(leaf.lookups) == 3
    assert len(leaf.reports) == 1


def test_lookup_gives_up_after_its_timeout(leaf: FakeLeaf) -> None:
    leaf.deploy("n1", MAC, "test.img", waiting=False)
    started = time.monotonic()
    result = run(leaf, lookup_timeout=0.8)
    assert 0.7 < time.monotonic() - started < 4
    assert "gave up after 0.8s: FAILED_PRECONDITION" in result.error
    assert len(leaf.lookups) >= 2
    assert leaf.reports == []


def test_cancel_stops_a_waiting_agent_without_a_report(leaf: FakeLeaf) -> None:
    leaf.deploy("n1", MAC, "test.img", waiting=False)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = run(leaf, lookup_timeout=30.0, cancel=cancel)
    assert time.monotonic() - started < 2
    assert (result.success, result.error) == (False, "cancelled")
    assert leaf.reports == []


def test_an_unreachable_leaf_ends_after_the_lookup_timeout() -> None:
    result = run_agent("127.0.0.1:1", [MAC], lookup_timeout=0.5, rpc_timeout=0.5)
    assert not result.success
    assert "UNAVAILABLE" in result.error


def test_the_token_never_appears_in_logs(leaf: FakeLeaf, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rackcells.agent")
    tokens = [leaf.deploy("n1", MAC, "test.img").token]
    assert run(leaf, open_device=lambda _path: Disk()).success
    tokens.append(leaf.deploy("n1", MAC, "test.img", checksum="sha256:" + "0" * 64).token)
    failed = run(leaf, open_device=lambda _path: Disk())
    assert not failed.success
    assert "reported" in caplog.text and "checksum mismatch" in caplog.text
    for token in tokens:
        assert token not in caplog.text
        assert token not in failed.error
