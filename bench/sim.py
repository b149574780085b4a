"""Start the rack simulator for a benchmark and wait until its inventory says it is ready."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SimRack", "start_rack"]


@dataclass
class SimRack:
    process: subprocess.Popen[bytes]
    inventory: list[dict[str, Any]]
    inventory_path: Path
    control_url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_rack(
    workdir: Path, nodes: int, port_base: int, prefix: str = "r1-n", extra: tuple[str, ...] = ()
) -> SimRack:
    inventory = workdir / f"{prefix}inventory.json"
    log_path = workdir / f"{prefix}sim.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rackcells.sim.cli",
            "rack",
            "--nodes",
            str(nodes),
            "--bmc-port-base",
            str(port_base),
            "--name-prefix",
            prefix,
            "--inventory-out",
            str(inventory),
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not inventory.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"simulator did not start; see {log_path}")
        time.sleep(0.1)
    match = None
    while match is None and time.monotonic() < deadline:
        match = re.search(r"http://127\.0\.0\.1:\d+", log_path.read_text())
        time.sleep(0.05)
    if match is None:
        raise RuntimeError(f"simulator printed no control URL; see {log_path}")
    return SimRack(process, json.loads(inventory.read_text()), inventory, match.group(0))
