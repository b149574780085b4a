"""Helpers of the registry suite: the ZooKeeper server to use, a private server to restart, and
a recorder of what a registry's subscribers were told.

The shared server is the one ``scripts/services start zookeeper`` runs; its address comes from
``RACKCELLS_TEST_ZK``. Without it the suite is skipped, unless ``RACKCELLS_REQUIRE_ZK=1`` (set by
scripts/test), in which case it fails, so that CI cannot silently lose the ZooKeeper run.
Tests that restart ZooKeeper get a private server (same script, own state directory and port)
so that they never disturb the shared one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ZK_ENV = "RACKCELLS_TEST_ZK"
REQUIRE_ZK_ENV = "RACKCELLS_REQUIRE_ZK"
ROOT = Path(__file__).resolve().parents[3]
SERVICES = ROOT / "scripts" / "services"


def zk_hosts() -> str:
    """HOST:PORT of the shared server; skips (or fails under RACKCELLS_REQUIRE_ZK=1) without it."""
    hosts = os.environ.get(ZK_ENV, "").strip()
    if hosts:
        return hosts
    if os.environ.get(REQUIRE_ZK_ENV, "").strip() == "1":
        pytest.fail(
            f"{ZK_ENV} is not set but {REQUIRE_ZK_ENV}=1 requires the ZooKeeper run: start it "
            "with `scripts/services start zookeeper` and `eval $(scripts/services env)`",
            pytrace=False,
        )
    pytest.skip(
        f"ZooKeeper run skipped: {ZK_ENV} is not set "
        "(run `scripts/services start zookeeper` and `eval $(scripts/services env)`)"
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateZk:
    """A ZooKeeper server of this test alone, driven through scripts/services."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = free_port()
        self.hosts = f"127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "RACKCELLS_TEST_STATE": str(state),
            "RACKCELLS_TEST_ZK_PORT": str(self.port),
        }

    def _services(self, action: str) -> None:
        subprocess.run([str(SERVICES), action, "zookeeper"], env=self._env, check=True, timeout=60)

    def start(self) -> None:
        self._services("start")

    def stop(self) -> None:
        self._services("stop")

    def wipe(self) -> None:
        """Deletes the stopped server's data: every session and znode is gone on restart."""
        shutil.rmtree(self.state / "zk" / "data")


class MembershipLog:
    """What a registry's subscriber was told, with the thread it was told on."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, Any], str]] = []
        self._cond = threading.Condition()

    def __call__(self, membership: dict[str, Any]) -> None:
        with self._cond:
            self.calls.append((time.monotonic(), membership, threading.current_thread().name))
            self._cond.notify_all()

    @property
    def last(self) -> dict[str, Any]:
        with self._cond:
            return self.calls[-1][1] if self.calls else {}

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> float:
        """Waits until the latest membership satisfies ``predicate``; returns when it was told."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.calls and predicate(self.calls[-1][1])):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {timeout} s waiting for {what}; last {self.last}")
                self._cond.wait(left)
            return self.calls[-1][0]
