"""Run a simulated rack as a subprocess from tests (ours, and later the leaf cell's).

``running_rack(nodes, workdir)`` starts ``python -m rackcells.sim.cli rack`` on free loopback
ports, waits for the inventory file and the readiness line, and on exit stops the simulator by
PID (SIGTERM, then SIGKILL) and makes sure its worker processes are gone too, so a failing test
never leaves 1,000 UDP ports bound.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rackcells.sim.control import SimControl

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_READY_LINE = re.compile(r"control (http://127\.0\.0\.1:\d+)")


def free_udp_port_base(count: int, address: str = LOOPBACK) -> int:
    """A base port such that base..base+count-1 are free UDP ports on ``address``.

    Picked below Linux's ephemeral range (32768+) so client source ports cannot take them
    between the check and the simulator's bind.
    """
    rng = random.Random()  # noqa: S311 - spreading test runs, not a secret
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((address, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports on {address}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (zombies count as gone for our children)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll for a state; the timeout only bounds a hung test, it is not what is tested."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@dataclass
class RunningSim:
    """One simulator subprocess and what it announced."""

    proc: subprocess.Popen[str]
    inventory_path: Path
    stderr_path: Path
    port_base: int
    nodes: int
    password: str
    prefix: str
    control: SimControl = field(init=False)
    inventory: list[dict[str, Any]] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)

    def name(self, index: int) -> str:
        """Node name of 1-based ``index`` (racks below 10,000 nodes)."""
        return f"{self.prefix}{index:04d}"

    def port(self, index: int) -> int:
        return self.port_base + index - 1

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM by PID, SIGKILL if that is ignored; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def reap_workers(self) -> list[int]:
        """Kill (by PID) workers that outlived the parent; returns their PIDs."""
        survivors = []
        for pid in self.workers:
            deadline = time.monotonic() + STOP_TIMEOUT
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                survivors.append(pid)
        return survivors


def start_rack(
    nodes: int,
    workdir: Path,
    *extra: str,
    prefix: str = "t1-n",
    password: str = "s3cret-pw",  # noqa: S107 - a loopback test rack
    address: str = LOOPBACK,
    port_base: int | None = None,
) -> RunningSim:
    """Start a simulator and wait until it is ready; the caller must :meth:`RunningSim.stop`.

    ``port_base`` defaults to a free range found by :func:`free_udp_port_base`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    base = port_base if port_base is not None else free_udp_port_base(nodes, address)
    stderr_path = workdir / "sim-stderr.txt"
    inventory_path = workdir / "inventory.json"
    cmd = [
        sys.executable,
        "-m",
        "rackcells.sim.cli",
        "rack",
        "--nodes",
        str(nodes),
        "--bmc-port-base",
        str(base),
        "--address",
        address,
        "--inventory-out",
        str(inventory_path),
        "--password",
        password,
        "--name-prefix",
        prefix,
        "--control-port",
        "0",
        *extra,
    ]
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    sim = RunningSim(proc, inventory_path, stderr_path, base, nodes, password, prefix)
    try:
        _wait_ready(sim)
        sim.workers = [int(w["pid"]) for w in sim.control.summary()["workers"]]
    except BaseException:
        sim.stop()
        raise
    return sim


@contextmanager
def running_rack(nodes: int, workdir: Path, *extra: str, **kwargs: Any) -> Iterator[RunningSim]:
    """``with running_rack(10, tmp_path) as sim:`` -- started, then stopped and reaped."""
    sim = start_rack(nodes, workdir, *extra, **kwargs)
    try:
        yield sim
    finally:
        sim.stop()
        survivors = sim.reap_workers()
        if survivors:
            raise RuntimeError(f"simulator workers {survivors} outlived their parent")


def _wait_ready(sim: RunningSim) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not sim.inventory_path.exists():
        if sim.proc.poll() is not None:
            raise RuntimeError(f"simulator exited {sim.proc.returncode}:\n{sim.stderr()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator not ready after {START_TIMEOUT}s:\n{sim.stderr()}")
        time.sleep(0.05)
    assert sim.proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(sim.proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise RuntimeError("simulator printed no readiness line")
    line = sim.proc.stdout.readline()
    match = _READY_LINE.search(line)
    if not match:
        raise RuntimeError(f"unexpected readiness line {line!r}:\n{sim.stderr()}")
    sim.control = SimControl(match.group(1))
    sim.inventory = json.loads(sim.inventory_path.read_text())
