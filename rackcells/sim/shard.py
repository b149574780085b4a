"""A worker process: up to 250 simulated BMCs served by one epoll event loop.

Why a process per shard: Python serves IPMI at a few thousand packets per second per core, and
the simulator must hold 1,000 BMCs on a 2-core machine next to the client being tested; shards
let the kernel spread them over the cores, and keep each process far below the descriptor
limits.  Why our own loop instead of pyghmi's ``Bmc.listen``: pyghmi selects over every socket
of the process in a separate I/O thread and hands packets over with events that can be missed
(a stall of the whole listen timeout); epoll in a single thread has neither problem, and the
timer heap below gives slow-BMC faults and POST completion exact deadlines.

The parent talks to the worker over a ``multiprocessing`` pipe (see
:mod:`rackcells.sim.supervisor`): one request, one reply, handled between datagrams, so the
machine state never needs a lock.  Network boots (:mod:`rackcells.sim.netboot`) run in threads
and hand their results back through :meth:`Shard.post`, which queues a callback for the loop
and wakes it, for the same reason.  End of file on that pipe means the parent is gone, and the
worker exits rather than keep ports bound.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import random
import selectors
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rackcells.sim.bmc import SimBmc
from rackcells.sim.disk import DiskStore
from rackcells.sim.faults import FaultSpecError, FaultState, apply_changes
from rackcells.sim.inventory import NodePlan
from rackcells.sim.machine import VirtualMachine
from rackcells.sim.netboot import NetBoot

LOG = logging.getLogger(__name__)

_BATCH = 64  # datagrams read from one socket before the loop looks at the others
_HOUSEKEEPING_SECONDS = 5.0
_MAX_WAIT = 1.0
_RECV_BUFFER = 1 << 20
_UUID_NAMESPACE = uuid.UUID("8c5e8a9e-4f1b-4d7c-9a51-3f1f2b6c0d11")

Reply = tuple[Any, ...]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, picklable for the spawn start method."""

    worker_id: int
    address: str
    nodes: tuple[NodePlan, ...]
    username: str
    password: str
    post_seconds: float
    seed: int
    faults: dict[int, FaultState] = field(default_factory=dict)
    log_level: int = logging.WARNING
    #: Where PXE boots fetch their scripts; None: PXE "boots" at once, as before.
    boot_url: str | None = None
    #: Image files of the machines' disks; None: the disks only count and hash.
    disk_dir: Path | None = None
    #: Whether the disks hash what they are given (``--disk-sink count`` turns it off).
    disk_hash: bool = True
    #: Agents of this worker that write their disk at the same time.
    disk_writers: int = 8


class _Marker:
    """Selector key data that is not a BMC."""


_CONTROL = _Marker()
_WAKEUP = _Marker()


class Shard:
    """The BMCs of one worker, their sockets and the loop that serves them."""

    def __init__(self, config: WorkerConfig, conn: Connection) -> None:
        self.config = config
        self.conn = conn
        self.selector = selectors.DefaultSelector()
        self.bmcs: dict[str, SimBmc] = {}
        self.stopping = False
        self.wall_offset = time.time() - time.monotonic()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._post_deadlines: dict[str, float] = {}
        self._next_housekeeping = time.monotonic() + _HOUSEKEEPING_SECONDS
        self._errors = 0
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._posted: collections.deque[Callable[[float], object]] = collections.deque()
        self.netboot: NetBoot | None = None
        if config.boot_url:
            self.netboot = NetBoot(
                config.boot_url,
                DiskStore(config.disk_dir, hashing=config.disk_hash),
                self.post,
                threads=len(config.nodes),
                writers=config.disk_writers,
            )

    # -- BmcHost -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), callback))

    def machine_changed(self, bmc: SimBmc) -> None:
        deadline = bmc.machine.next_deadline()
        name = bmc.machine.name
        if deadline is None or self._post_deadlines.get(name) == deadline:
            return
        self._post_deadlines[name] = deadline
        self.call_at(deadline, lambda: self._finish_post(bmc, deadline))

    def post(self, callback: Callable[[float], object]) -> None:
        """Run ``callback(now)`` in the loop soon; safe from any thread."""
        self._posted.append(callback)
        # A full buffer means the loop is awake anyway; a closed socket, that it is shutting down.
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def _finish_post(self, bmc: SimBmc, deadline: float) -> None:
        if self._post_deadlines.get(bmc.machine.name) == deadline:
            del self._post_deadlines[bmc.machine.name]
        bmc.machine.refresh(self.now())  # runs the boot hooks, if any

    # -- set-up --------------------------------------------------------------------------

    def bind(self) -> None:
        """Create and bind every BMC's socket; raises OSError if a port is taken."""
        cfg = self.config
        now = self.now()
        for node in cfg.nodes:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                cfg.address, node.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            sock.setblocking(False)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                sock.close()
                raise OSError(err.errno, f"cannot bind {cfg.address}:{node.port}: {err}") from err
            machine = VirtualMachine(
                name=node.name,
                index=node.index,
                post_seconds=cfg.post_seconds,
                last_change=now,
                power_changed_at=now,
            )
            bmc = SimBmc(
                machine,
                sock,
                address=cfg.address,
                port=node.port,
                username=cfg.username,
                password=cfg.password,
                faults=cfg.faults.get(node.index, FaultState()),
                host=self,
                system_uuid=uuid.uuid5(_UUID_NAMESPACE, node.name),
                rng=random.Random(f"{cfg.seed}/loss/{node.index}"),  # noqa: S311 - reproducible
            )
            self.bmcs[node.name] = bmc
            if self.netboot is not None:
                self.netboot.attach(machine, node.mac)
            self.selector.register(sock, selectors.EVENT_READ, bmc)
        self.selector.register(self.conn, selectors.EVENT_READ, _CONTROL)
        self.selector.register(self._wake_read, selectors.EVENT_READ, _WAKEUP)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT end the loop cleanly; the wake-up socket interrupts the wait."""
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        LOG.debug("worker %d: signal %d", self.config.worker_id, signum)
        self.stopping = True

    # -- loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until a signal arrives or the parent goes away."""
        while not self.stopping:
            for key, _ in self.selector.select(self._wait_time()):
                data = key.data
                if isinstance(data, SimBmc):
                    self._drain(key.fileobj, data)  # type: ignore[arg-type]
                elif data is _CONTROL:
                    self._serve_control()
                else:
                    self._drain_wakeup()
            self._run_posted()
            self._run_timers()
            self._housekeeping()

    def close(self) -> None:
        if self.netboot is not None:
            self.netboot.shutdown()
        for bmc in self.bmcs.values():
            bmc.serversocket.close()
        self.selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def _wait_time(self) -> float:
        now = self.now()
        wait = min(_MAX_WAIT, self._next_housekeeping - now)
        if self._timers:
            wait = min(wait, self._timers[0][0] - now)
        return max(0.0, wait)

    def _drain(self, sock: socket.socket, bmc: SimBmc) -> None:
        # MSG_DONTWAIT because pyghmi's sessionless replies switch the socket to blocking.
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. ICMP port unreachable reported on the socket
                LOG.debug("%s: recv: %s", bmc.machine.name, err)
                return
            try:
                bmc.datagram_received(data, addr)
            except Exception:
                self._errors += 1
                LOG.exception("%s: error handling a packet from %s", bmc.machine.name, addr)

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_read.recv(512):
                pass
        except BlockingIOError:
            pass

    def _run_posted(self) -> None:
        while self._posted:
            callback = self._posted.popleft()
            try:
                callback(self.now())
            except Exception:
                self._errors += 1
                LOG.exception("worker %d: posted callback failed", self.config.worker_id)

    def _run_timers(self) -> None:
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            try:
                callback()
            except Exception:
                self._errors += 1
                LOG.exception("worker %d: timer callback failed", self.config.worker_id)

    def _housekeeping(self) -> None:
        now = self.now()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + _HOUSEKEEPING_SECONDS
        for bmc in self.bmcs.values():
            bmc.expire_sessions(now)

    # -- control requests from the parent ------------------------------------------------

    def _serve_control(self) -> None:
        try:
            while self.conn.poll():
                request = self.conn.recv()
                self.conn.send(self.handle_request(request))
        except (EOFError, OSError):
            LOG.warning("worker %d: parent went away, exiting", self.config.worker_id)
            self.stopping = True

    def handle_request(self, request: tuple[Any, ...]) -> Reply:
        """One control request -> ("ok", result) or ("error", http_status, message)."""
        op, *args = request
        if op == "list":
            return ("ok", [b.snapshot(self.wall_offset) for b in self.bmcs.values()])
        if op == "stats":
            return ("ok", self.stats())
        bmc = self.bmcs.get(args[0]) if args else None
        if bmc is None:
            return ("error", 404, f"no machine {args[0] if args else ''!r}")
        if op == "get":
            return ("ok", bmc.snapshot(self.wall_offset))
        if op == "fault":
            try:
                apply_changes(bmc.faults, args[1], self.config.password)
            except FaultSpecError as err:
                return ("error", 400, str(err))
            return ("ok", bmc.snapshot(self.wall_offset))
        if op == "power":
            now = self.now()
            if args[1]:
                bmc.machine.press_power_on(now, source="button")
            else:
                bmc.machine.press_power_off(now, source="button")
            self.machine_changed(bmc)
            return ("ok", bmc.snapshot(self.wall_offset))
        return ("error", 400, f"unknown request {op!r}")

    def stats(self) -> dict[str, int]:
        return {
            "worker": self.config.worker_id,
            "bmcs": len(self.bmcs),
            "sessions": sum(len(b.sessions) for b in self.bmcs.values()),
            "packets_in": sum(b.packets_in for b in self.bmcs.values()),
            "packets_dropped": sum(b.packets_dropped for b in self.bmcs.values()),
            "errors": self._errors,
            "netboot_jobs": self.netboot.running() if self.netboot is not None else 0,
        }


def run_worker(config: WorkerConfig, conn: Connection) -> None:
    """Process entry point: bind, report readiness, serve, exit 0 when told to stop."""
    logging.basicConfig(
        level=config.log_level,
        format=f"rackcells-sim[w{config.worker_id}] %(levelname)s %(name)s: %(message)s",
    )
    # Network boots log every outcome with the machine's name; the agents' own lines, which
    # lack it, only help when debugging.
    if config.log_level > logging.DEBUG:
        logging.getLogger("rackcells.agent").setLevel(logging.CRITICAL)
    shard = Shard(config, conn)
    shard.install_signal_handlers()
    try:
        shard.bind()
    except OSError as err:
        conn.send(("error", str(err)))
        shard.close()
        raise SystemExit(3) from None
    conn.send(("ready", len(shard.bmcs)))
    try:
        shard.run()
    finally:
        shard.close()
