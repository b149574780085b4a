"""Network boot of one worker's machines: fetch the iPXE script, run the deploy agent.

The worker's event loop serves hundreds of BMCs and must never wait on HTTP or gRPC, and the
deploy agent is blocking code (it is the real :func:`rackcells.agent.run_agent`, not a model of
it).  So each PXE boot becomes one job in a thread pool: fetch ``{boot_url}/boot/{mac}``, and
for a deploy script run the agent against the machine's virtual disk.  Jobs never touch the
machine: they hand results to the loop with ``post`` (thread-safe), and the machine ignores
results for a boot it has left (see ``boot_epoch`` in :mod:`rackcells.sim.machine`).

Every booting machine gets a thread at once (script fetch and lookup are cheap and mostly
wait), but only ``writers`` agents per worker stream their image at a time; the others wait for
a turn when they open their disk.  Without that bound a hundred agents fight the event loop
for the GIL and the BMCs and the control API answer in seconds instead of milliseconds; the
host's cores, not the thread count, set the rack's total write rate anyway.

A power-off or reset sets the job's ``cancel`` event: the agent stops at its next chunk or
poll, its disk refuses further writes, and it does not report, as a machine without power
cannot.  A new deploy on the same machine first waits for such an abandoned job to unwind, so
two agents never write one disk.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from rackcells.agent import AgentResult, run_agent
from rackcells.sim.disk import DiskStore, VirtualDisk
from rackcells.sim.machine import BootScript, Phase, VirtualMachine
from rackcells.sim.pxe import fetch_script

LOG = logging.getLogger(__name__)

SCRIPT_TIMEOUT = 5.0
AGENT_LOOKUP_TIMEOUT = 60.0
AGENT_RPC_TIMEOUT = 10.0
_UNWIND_TIMEOUT = 2 * AGENT_RPC_TIMEOUT
_SHUTDOWN_GRACE = 3.0
_TURN_POLL = 0.1

#: Runs a callback in the worker's event loop with the loop's monotonic time; any thread.
Post = Callable[[Callable[[float], object]], None]


@dataclass(eq=False)
class _Job:
    """One PXE boot of one machine, from script fetch to the agent's report."""

    machine: VirtualMachine
    mac: str
    epoch: int
    previous: _Job | None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None


class NetBoot:
    """The PXE and deploy-agent behaviour of the machines of one worker."""

    def __init__(
        self, boot_url: str, disks: DiskStore, post: Post, *, threads: int, writers: int
    ) -> None:
        self.boot_url = boot_url
        self.disks = disks
        self._post = post
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="netboot")
        self._writers = threading.BoundedSemaphore(writers)
        self._jobs: dict[str, _Job] = {}  # machine name -> latest job; event-loop thread only
        self._macs: dict[str, str] = {}

    def attach(self, machine: VirtualMachine, mac: str) -> None:
        """Give ``machine`` a boot server: its PXE boots now fetch scripts from ``boot_url``."""
        machine.network_boot = True
        self._macs[machine.name] = mac
        machine.boot_hooks.append(self._on_boot)
        machine.halt_hooks.append(self._on_halt)

    def running(self) -> int:
        """Jobs not finished yet (fetching, deploying, or unwinding after a power-off)."""
        return sum(1 for job in self._jobs.values() if not job.finished.is_set())

    def shutdown(self) -> None:
        """Stop every job; wait a little for them, so the worker exits without stragglers."""
        for job in self._jobs.values():
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        futures = [job.future for job in self._jobs.values() if job.future is not None]
        _, pending = wait(futures, timeout=_SHUTDOWN_GRACE)
        if pending:
            LOG.warning("%d network-boot jobs still unwinding at shutdown", len(pending))

    # -- hooks, in the event loop ---------------------------------------------------------

    def _on_boot(self, machine: VirtualMachine, _device: str, _now: float) -> None:
        if machine.phase is not Phase.PXE:
            return
        previous = self._jobs.get(machine.name)
        if previous is not None and previous.finished.is_set():
            previous = None
        job = _Job(machine, self._macs[machine.name], machine.boot_epoch, previous)
        self._jobs[machine.name] = job
        try:
            job.future = self._pool.submit(self._run, job)
        except RuntimeError:  # shutting down
            job.finished.set()

    def _on_halt(self, machine: VirtualMachine, _now: float) -> None:
        job = self._jobs.get(machine.name)
        if job is not None:
            job.cancel.set()

    # -- jobs, in pool threads ------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        name = job.machine.name
        try:
            if not job.cancel.is_set():
                self._boot(job)
        except Exception as err:
            LOG.exception("%s: network boot failed", name)
            message = f"simulator error: {err}"

            def fail(now: float) -> None:  # whichever phase the machine is stuck in
                job.machine.pxe_loaded(job.epoch, BootScript.ERROR, now, message)
                job.machine.agent_finished(job.epoch, message, now)

            self._post(fail)
        finally:
            job.finished.set()

    def _boot(self, job: _Job) -> None:
        machine = job.machine
        outcome = fetch_script(self.boot_url, job.mac, SCRIPT_TIMEOUT)
        LOG.info("%s: pxe %s %s", machine.name, outcome.kind, outcome.detail)
        self._post(lambda now: machine.pxe_loaded(job.epoch, outcome.kind, now, outcome.detail))
        if outcome.kind is not BootScript.DEPLOY or job.cancel.is_set():
            return
        if job.previous is not None and not job.previous.finished.wait(_UNWIND_TIMEOUT):
            LOG.warning("%s: the previous agent is still unwinding", machine.name)
        disks: list[VirtualDisk] = []

        def open_device(_target: str) -> VirtualDisk:
            while not self._writers.acquire(timeout=_TURN_POLL):
                if job.cancel.is_set():
                    raise OSError(errno.EIO, "the machine is off")
            try:
                disk = self.disks.open(machine.name, job.cancel)
            except BaseException:
                self._writers.release()
                raise
            disk.on_close = self._writers.release
            disks.append(disk)
            self._post(lambda _now: machine.disk_changed(0, None))
            return disk

        try:
            result = run_agent(
                outcome.agent_endpoint,
                [job.mac],
                open_device,
                lookup_timeout=AGENT_LOOKUP_TIMEOUT,
                rpc_timeout=AGENT_RPC_TIMEOUT,
                cancel=job.cancel,
            )
        finally:
            for disk in disks:
                disk.close()
            if disks:
                size, checksum = disks[-1].size, disks[-1].checksum()
                self._post(lambda _now: machine.disk_changed(size, checksum))
        self._finish(job, result)

    def _finish(self, job: _Job, result: AgentResult) -> None:
        machine = job.machine
        error = "" if result.success else result.error or "the agent failed"
        if job.cancel.is_set():
            LOG.info("%s: agent stopped (the machine is off)", machine.name)
            return
        if error:
            LOG.warning("%s: deploy failed: %s", machine.name, error)
        else:
            LOG.info(
                "%s: deployed %d bytes in %.1fs", machine.name, result.bytes_written, result.seconds
            )
        self._post(lambda now: machine.agent_finished(job.epoch, error, now))
