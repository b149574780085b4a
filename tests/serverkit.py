"""Server child processes for tests: start a leaf or top cell, wait for its port, stop it by PID.

Shared by the conformance suite and the end-to-end federation tests (pytest puts tests/ on
sys.path). Output of each child goes to ``<tmp>/<name>.log``; failures quote its tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BIN", "Proc", "leaf_argv"]

BIN = Path(sys.executable).parent
READY_GUARD = 90.0
"""How long a child may take to write its port file before the test gives up (a hang guard)."""


class Proc:
    """A server child process that writes its port to a file once it serves; stopped by PID."""

    def __init__(self, name: str, argv: list[str], tmp: Path, env_prefix: str) -> None:
        self.name = name
        self.argv = argv
        self.tmp = tmp
        self.env_prefix = env_prefix
        self.port_file = tmp / f"{name}.port"
        self.log_path = tmp / f"{name}.log"
        self.port = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.env_prefix)}
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [*self.argv, "--port-file", str(self.port_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, limit: float = READY_GUARD) -> int:
        """Waits for the port file (the limit is a hang guard, not what is tested)."""
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.endswith("\n"):
                self.port = int(text)
                return self.port
            time.sleep(0.05)
        raise AssertionError(f"{self.name} wrote no port file:\n{self.tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def signal(self, sig: int) -> None:
        """Signals this child, by its own PID, if it still runs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def restart(self, argv: list[str] | None = None) -> None:
        """Starts the same command again (after it was stopped or killed)."""
        assert self.proc.poll() is not None, f"{self.name} still runs"
        if argv is not None:
            self.argv = argv
        self.port = 0
        self.proc = self._spawn()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def leaf_argv(cell: str, tmp: Path, *extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    """``rackcells-leaf serve`` on SQLite in ``tmp``, power sync off, quiet logs."""
    return [
        str(BIN / "rackcells-leaf"),
        "serve",
        "--cell",
        cell,
        "--listen",
        listen,
        "--db",
        f"sqlite:///{tmp / cell}.db",
        "--secret-key-file",
        str(tmp / f"{cell}.key"),
        "--power-sync-interval",
        "0",
        "--log-level",
        "WARNING",
        *extra,
    ]
