"""What one image costs the host before any rackcells code runs: send it over loopback with
``sendfile`` (as the leaf's image server does) and receive and SHA-256 it (as every deploy
agent must), in two processes, timed by their CPU use.

``bench.deploy`` runs a hundred simulated machines on the leaf's own cores, so each machine's
download and checksum, work that a real machine does on its own CPU, competes with every other
machine's. From this cost follows the lowest mean deploy time the host allows at a given
concurrency, whatever the leaf does: see :func:`lowest_mean`.

    .venv/bin/python -m bench.transfer_cost [--image-mib 64]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["image_cpu_seconds", "lowest_mean"]

_ROUNDS = 5


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve(path: str) -> None:
    """Child: sends the file ``_ROUNDS`` times, then prints its CPU seconds per send."""
    size = os.path.getsize(path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        print(listener.getsockname()[1], flush=True)
        fd = os.open(path, os.O_RDONLY)
        before = _cpu_self()
        for _ in range(_ROUNDS):
            conn, _ = listener.accept()
            with conn:
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), fd, offset, size - offset)
        print((_cpu_self() - before) / _ROUNDS, flush=True)


def image_cpu_seconds(path: Path) -> tuple[float, float]:
    """(sender, receiver) CPU seconds for one copy of the file at ``path``."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.transfer_cost", "--serve", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    before = _cpu_self()
    for _ in range(_ROUNDS):
        digest = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            while got := conn.recv_into(buffer):
                digest.update(view[:got])
    receiver = (_cpu_self() - before) / _ROUNDS
    sender = float(child.stdout.readline())
    child.wait(timeout=30)
    return sender, receiver


def lowest_mean(floor: float, per_image: float, nodes: int, cores: int) -> float:
    """The lowest mean request-to-active time for ``nodes`` deploys started together: the
    floor, plus the mean wait for the others' images when the cores move ``cores`` images at
    a time, each taking ``per_image`` CPU seconds, shortest-first (no order does better)."""
    rounds = max(nodes / cores, 1.0)
    return floor + per_image * (rounds - 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mib", type=int, default=64)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(os.urandom(args.image_mib << 20))
        sender, receiver = image_cpu_seconds(path)
    print(
        f"one {args.image_mib} MiB image: sender {sender * 1000:.0f} ms CPU (sendfile), "
        f"receiver {receiver * 1000:.0f} ms CPU (receive + sha256)"
    )


if __name__ == "__main__":
    main()
