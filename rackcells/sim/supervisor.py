"""The parent process of ``rackcells-sim rack``: workers, readiness, signals, control API.

The parent holds no BMC itself.  It splits the rack into shards of at most 250 BMCs, starts one
worker process per shard (``spawn``, so a worker inherits no descriptor but its own pipe and
notices at once when the parent dies), waits until every worker has bound its ports, then
starts the control API, writes the inventory atomically and prints one readiness line.

Afterwards it only waits: a SIGTERM or SIGINT is forwarded to every worker and the simulator
exits 0 once they are gone; a worker that dies on its own takes the whole simulator down with
exit status 1, because a rack with a silently missing shard would make every later test lie.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from rackcells.sim.control_server import ControlError, ControlServer
from rackcells.sim.faults import FaultSpec, plan_faults
from rackcells.sim.inventory import (
    NodePlan,
    plan_nodes,
    remove_stale_inventory,
    write_inventory,
)
from rackcells.sim.shard import WorkerConfig, run_worker

LOG = logging.getLogger(__name__)

MAX_PER_WORKER = 250
_STARTUP_TIMEOUT = 120.0
_STOP_GRACE = 5.0


@dataclass(frozen=True)
class RackOptions:
    """The parsed ``rack`` command line."""

    nodes: int
    port_base: int
    address: str
    post_seconds: float
    inventory_out: Path
    username: str
    password: str
    name_prefix: str
    rack: str
    control_port: int
    faults: tuple[FaultSpec, ...]
    seed: int
    per_worker: int
    log_level: int
    boot_url: str | None = None
    disk_dir: Path | None = None
    disk_hash: bool = True
    disk_writers: int = 8


class WorkerHandle:
    """The parent's end of one worker: process, pipe, and a lock so requests don't interleave."""

    def __init__(self, worker_id: int, nodes: list[NodePlan], process: Any, conn: Connection):
        self.worker_id = worker_id
        self.names = {n.name for n in nodes}
        self.first_port = nodes[0].port
        self.last_port = nodes[-1].port
        self.process = process
        self.conn = conn
        self.lock = threading.Lock()

    def call(self, *request: Any) -> Any:
        """Send one request and wait for its reply; turns worker failures into HTTP errors."""
        with self.lock:
            try:
                self.conn.send(request)
                reply = self.conn.recv()
            except (EOFError, OSError) as err:
                raise ControlError(
                    HTTPStatus.SERVICE_UNAVAILABLE, f"worker {self.worker_id} is gone: {err}"
                ) from None
        if reply[0] == "ok":
            return reply[1]
        raise ControlError(reply[1], reply[2])


def split_shards(nodes: list[NodePlan], per_worker: int) -> list[list[NodePlan]]:
    """Contiguous, evenly sized shards of at most ``per_worker`` nodes."""
    count = math.ceil(len(nodes) / per_worker)
    size, extra = divmod(len(nodes), count)
    shards, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        shards.append(nodes[start:end])
        start = end
    return shards


class RackSupervisor:
    """Runs one simulated rack; implements the control API's ``MachineDirectory``."""

    def __init__(self, options: RackOptions) -> None:
        self.options = options
        self.nodes = plan_nodes(options.name_prefix, options.nodes, options.port_base)
        self.workers: list[WorkerHandle] = []
        self._owner: dict[str, WorkerHandle] = {}
        self._stop_signal: int | None = None
        self._wake_read, self._wake_write = socket.socketpair()

    # -- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until told to stop; the process exit status."""
        opts = self.options
        remove_stale_inventory(opts.inventory_out)
        if opts.disk_dir is not None:
            opts.disk_dir.mkdir(parents=True, exist_ok=True)
        self._install_signal_handlers()
        control = ControlServer(opts.control_port, self)
        try:
            self._start_workers()
            failure = self._wait_ready()
            if failure:
                print(f"rackcells-sim: {failure}", file=sys.stderr, flush=True)
                return 1
            if self._stop_signal is not None:
                return 0
            control.start()
            write_inventory(
                opts.inventory_out,
                self.nodes,
                address=opts.address,
                username=opts.username,
                password=opts.password,
                rack=opts.rack,
            )
            print(
                f"rackcells-sim: {len(self.nodes)} BMCs listening on {opts.address}:"
                f"{self.nodes[0].port}-{self.nodes[-1].port} ({len(self.workers)} workers), "
                f"inventory {opts.inventory_out}, control {control.url}",
                flush=True,
            )
            return self._supervise()
        finally:
            self._stop_workers()
            control.stop()
            self._wake_read.close()
            self._wake_write.close()

    def _install_signal_handlers(self) -> None:
        self._wake_write.setblocking(False)
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def _start_workers(self) -> None:
        opts = self.options
        faults = plan_faults(opts.faults, [n.name for n in self.nodes], opts.seed, opts.password)
        ctx = multiprocessing.get_context("spawn")
        for worker_id, shard in enumerate(split_shards(self.nodes, opts.per_worker)):
            config = WorkerConfig(
                worker_id=worker_id,
                address=opts.address,
                nodes=tuple(shard),
                username=opts.username,
                password=opts.password,
                post_seconds=opts.post_seconds,
                seed=opts.seed,
                faults={n.index: faults[n.index] for n in shard if n.index in faults},
                log_level=opts.log_level,
                boot_url=opts.boot_url,
                disk_dir=opts.disk_dir,
                disk_hash=opts.disk_hash,
                disk_writers=opts.disk_writers,
            )
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=run_worker,
                args=(config, child_end),
                name=f"rackcells-sim-w{worker_id}",
                daemon=True,
            )
            process.start()
            child_end.close()
            handle = WorkerHandle(worker_id, shard, process, parent_end)
            self.workers.append(handle)
            for node in shard:
                self._owner[node.name] = handle

    def _wait_ready(self) -> str | None:
        """Block until every worker reported; an error message if one could not start."""
        pending = {w.conn: w for w in self.workers}
        sentinels = {w.process.sentinel: w for w in self.workers}
        while pending and self._stop_signal is None:
            ready = wait([*pending, *sentinels, self._wake_read], timeout=_STARTUP_TIMEOUT)
            if not ready:
                return "workers did not become ready in time"
            for obj in ready:
                if obj is self._wake_read:
                    self._drain_wakeup()
                elif obj in pending:
                    worker = pending.pop(obj)
                    try:
                        reply = worker.conn.recv()
                    except EOFError:
                        return f"worker {worker.worker_id} died during start-up"
                    if reply[0] != "ready":
                        return f"worker {worker.worker_id}: {reply[1]}"
                elif obj in sentinels and sentinels[obj].conn in pending:
                    worker = sentinels[obj]
                    return f"worker {worker.worker_id} exited during start-up"
        return None

    def _supervise(self) -> int:
        sentinels = {w.process.sentinel: w for w in self.workers}
        while self._stop_signal is None:
            for obj in wait([*sentinels, self._wake_read]):
                if obj is self._wake_read:
                    self._drain_wakeup()
                    continue
                worker = sentinels[obj]
                worker.process.join()
                print(
                    f"rackcells-sim: worker {worker.worker_id} (pid {worker.process.pid}) "
                    f"exited with status {worker.process.exitcode}; stopping the rack",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        LOG.info("signal %d: stopping %d workers", self._stop_signal, len(self.workers))
        return 0

    def _stop_workers(self) -> None:
        forward = self._stop_signal or signal.SIGTERM
        for worker in self.workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, forward)
        for worker in self.workers:
            worker.process.join(_STOP_GRACE)
            if worker.process.is_alive():
                LOG.warning("worker %d ignored the signal; killing it", worker.worker_id)
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def _drain_wakeup(self) -> None:
        self._wake_read.setblocking(False)
        try:
            while self._wake_read.recv(512):
                pass
        except BlockingIOError:
            pass

    # -- MachineDirectory ----------------------------------------------------------------

    def _worker_for(self, name: str) -> WorkerHandle:
        worker = self._owner.get(name)
        if worker is None:
            raise ControlError(HTTPStatus.NOT_FOUND, f"no machine {name!r}")
        return worker

    def summary(self) -> dict[str, Any]:
        opts = self.options
        return {
            "nodes": len(self.nodes),
            "address": opts.address,
            "first_port": self.nodes[0].port,
            "last_port": self.nodes[-1].port,
            "inventory": str(opts.inventory_out),
            "boot_url": opts.boot_url,
            "disk_dir": str(opts.disk_dir) if opts.disk_dir is not None else None,
            "workers": [w.call("stats") | {"pid": w.process.pid} for w in self.workers],
        }

    def list_machines(self) -> list[dict[str, Any]]:
        machines: list[dict[str, Any]] = []
        for worker in self.workers:
            machines.extend(worker.call("list"))
        return machines

    def get_machine(self, name: str) -> dict[str, Any]:
        return dict(self._worker_for(name).call("get", name))

    def set_fault(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._worker_for(name).call("fault", name, body))

    def press_power(self, name: str, on: bool) -> dict[str, Any]:
        return dict(self._worker_for(name).call("power", name, on))
