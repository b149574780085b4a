"""What every benchmark needs: start servers as subprocesses, percentiles, RSS, tables.

Benchmarks print figures side by side from one run; nothing here asserts on time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Leaf", "peak_rss_mb", "percentile", "print_table", "start_leaf"]

ROOT = Path(__file__).resolve().parents[1]


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of samples."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def mean(samples: Sequence[float]) -> float:
    return statistics.fmean(samples) if samples else float("nan")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a live process and its live descendants (the simulator's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return total


@dataclass
class Server:
    """A cell server running as a subprocess of the benchmark."""

    process: subprocess.Popen[bytes]
    endpoint: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Leaf(Server):
    """A leaf cell running as a subprocess."""

    cell: str


def spawn(
    module: str, args: Sequence[str], name: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts ``python -m MODULE serve ARGS`` on a free loopback port, logging to
    ``workdir/NAME.log``, and waits until its port file says it serves."""
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "WARNING",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start; see {workdir / (name + '.log')}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def start_leaf(cell: str, db_url: str, workdir: Path, extra_args: Sequence[str] = ()) -> Leaf:
    """Starts ``rackcells-leaf serve`` on a free loopback port and waits until it serves."""
    process, endpoint = spawn(
        "leaf_cell.main", ["--cell", cell, "--db", db_url, *extra_args], cell, workdir
    )
    return Leaf(process, endpoint, cell)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()
