"""The ``ipmi`` driver: power and boot device over IPMI 2.0 (lanplus) with pyghmi, in-process.

Why in-process sessions: an ``ipmitool`` subprocess per call costs a fork, an exec and a full
RAKP login every time (measured against the simulator: ~55 ms of CPU per status call); a reused
pyghmi session answers one in about a millisecond of wall time and half of that in CPU.  So the
driver keeps **one session per BMC** -- keyed by address, port, user and a hash of the
password -- and logs in only when there is none or it broke.

How a call runs (``_call``):

* The caller takes the BMC's *slot lock* (waiting at most its timeout), so calls to one BMC are
  sent one after the other and two threads never log in to the same BMC at once.  Slots of
  different BMCs are independent: logins to many BMCs proceed in parallel.
* The pyghmi work runs in a worker thread while the caller waits on a future with its deadline.
  pyghmi's own timers are longer than a caller's budget (up to ~10 s for a dead BMC); the
  caller gets ``TIMEOUT`` on time and the worker finishes in the background, still holding the
  slot, so later calls to that BMC wait for it (within their own timeout) instead of starting
  more threads.  Threads are thereby bounded: one busy worker per BMC, ``max_workers`` in all.
* In the worker: log in if needed, send the request(s); if a *reused* session turns out dead
  (BMC rebooted, session expired), drop it, log in again and retry once, within the deadline.
  Error completion codes are answers, not broken sessions: they are never retried.

Sessions survive between power sweeps minutes apart because the driver sends a keepalive (Get
Device ID, like pyghmi's own) on every session idle for ``keepalive_interval`` (20) seconds,
before pyghmi's own 24 s timer and the BMC's ~60 s inactivity timeout; a failed keepalive drops
the session so the next call logs in at once.  Sessions no call has used for ``idle_logout``
seconds are logged out.  :mod:`leaf_cell.drivers.pyghmi_compat` explains why pyghmi's own
keepalive is not used, and the pyghmi behaviour the driver works around.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from leaf_cell.drivers import ipmi_codec as codec
from leaf_cell.drivers import pyghmi_compat as compat
from leaf_cell.drivers.base import (
    BmcAccess,
    BootDevice,
    BootInterface,
    PowerAction,
    PowerInterface,
    PowerState,
)
from leaf_cell.drivers.errors import (
    DriverError,
    DriverErrorKind,
    auth_failed,
    protocol_error,
    timed_out,
    unreachable,
    unsupported,
)

__all__ = ["IpmiDriver", "IpmiStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Key = tuple[str, int, str, str]

_MAX_ATTEMPTS = 2
_BOOT_UNSUPPORTED_CODES = codec.UNSUPPORTED_CODES | {0x80}  # 0x80: parameter not supported
_LOGOUT_WAIT = 2.0
_RETIRE_WAIT = 60.0  # longer than pyghmi can hold a slot (~10 s), short of forever


@dataclass(frozen=True)
class IpmiStats:
    """Counters since the driver was created, for benchmarks and tests."""

    logins: int
    """Successful RMCP+ logins (sessions opened)."""
    login_failures: int
    calls: int
    """Driver operations started (get_power, set_power, ...), keepalives not included."""
    requests: int
    """IPMI requests sent for those operations (a reboot may need two)."""
    retries: int
    """Operations retried on a fresh session after a reused one turned out dead."""
    timeouts: int
    """Operations that returned TIMEOUT to their caller."""
    keepalives: int
    keepalive_failures: int
    sessions: int
    """Sessions open now."""


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = dict.fromkeys(
            (
                "logins",
                "login_failures",
                "calls",
                "requests",
                "retries",
                "timeouts",
                "keepalives",
                "keepalive_failures",
            ),
            0,
        )

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] += amount


@dataclass(eq=False)
class _Slot:
    """One BMC (per credentials): its session, and the lock that orders its calls.

    The lock is taken by a caller and released by the worker that did the work (a plain
    ``Lock`` allows that).  ``command`` and the times are only touched by the lock holder.
    """

    access: BmcAccess
    lock: threading.Lock = field(default_factory=threading.Lock)
    command: Any = None
    last_used: float = 0.0
    last_call: float = 0.0
    retired: bool = False


@dataclass(frozen=True)
class _Job(Generic[T]):
    """One operation on one BMC, as the caller hands it to a worker."""

    slot: _Slot
    operation: str
    op: Callable[[Any], T]
    deadline: float
    timeout: float
    unsupported_codes: frozenset[int]


def _key(bmc: BmcAccess) -> _Key:
    digest = hashlib.sha256(bmc.password.encode("utf-8")).hexdigest()
    return (bmc.address, bmc.effective_port, bmc.username, digest)


class IpmiDriver:
    """IPMI power and boot-device control with one reused pyghmi session per BMC.

    ``max_workers`` bounds the threads that talk to BMCs; ``keepalive_interval`` (seconds, None
    to disable) is how long a session may sit idle before the driver pings it;
    ``idle_logout`` is how long a session no call used stays open.
    """

    name = "ipmi"

    def __init__(
        self,
        *,
        max_workers: int = 256,
        keepalive_interval: float | None = 20.0,
        idle_logout: float = 900.0,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive (or None)")
        self.power: PowerInterface = self
        self.boot: BootInterface = self
        compat.merge_session_locks()
        compat.install_wait_bound()
        self._keepalive_interval = keepalive_interval
        self._idle_logout = idle_logout
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ipmi")
        self._slots: dict[_Key, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._counters = _Counters()
        self._closed = False
        self._stop = threading.Event()
        self._keepalive_thread: threading.Thread | None = None

    # -- PowerInterface -------------------------------------------------------------------

    def get_power(self, bmc: BmcAccess, timeout: float) -> PowerState:
        def op(command: Any) -> PowerState:
            return codec.parse_chassis_status(self._send(command, codec.GET_CHASSIS_STATUS))

        return self._call(bmc, "get power state", op, timeout)

    def set_power(self, bmc: BmcAccess, action: PowerAction, timeout: float) -> PowerState:
        action = PowerAction(action)
        if action is PowerAction.REBOOT:
            return self._call(bmc, "reboot", self._reboot, timeout)
        if action is PowerAction.SOFT_OFF:
            return self._call(bmc, "soft power off", self._soft_off, timeout)
        target = PowerState.ON if action is PowerAction.ON else PowerState.OFF

        def op(command: Any) -> PowerState:
            self._chassis_control(command, action.value)
            return target

        return self._call(bmc, f"power {action.value}", op, timeout)

    # -- BootInterface --------------------------------------------------------------------

    def set_boot_device(
        self, bmc: BmcAccess, device: BootDevice, persistent: bool, timeout: float
    ) -> None:
        device = BootDevice(device)
        request = codec.boot_flags_request(device, persistent)

        def op(command: Any) -> None:
            try:  # keep the override past the 60 s valid-bit timer; optional for a BMC
                self._send(
                    command,
                    codec.SET_BOOT_OPTIONS,
                    (codec.BOOT_VALID_BIT_CLEARING_PARAMETER, codec.KEEP_VALID_BIT_ON_TIMEOUT),
                )
            except Exception as err:
                if compat.classify_call_failure(err, frozenset()).session_lost:
                    raise
            self._send(command, codec.SET_BOOT_OPTIONS, request)

        self._call(bmc, "set boot device", op, timeout, _BOOT_UNSUPPORTED_CODES)

    def get_boot_device(self, bmc: BmcAccess, timeout: float) -> tuple[BootDevice | None, bool]:
        def op(command: Any) -> tuple[BootDevice | None, bool]:
            data = self._send(command, codec.GET_BOOT_OPTIONS, (codec.BOOT_FLAGS_PARAMETER, 0, 0))
            return codec.parse_boot_flags(data)

        return self._call(bmc, "get boot device", op, timeout, _BOOT_UNSUPPORTED_CODES)

    # -- Driver ---------------------------------------------------------------------------

    def forget(self, bmc: BmcAccess) -> None:
        """Drop every session to ``bmc``'s address and port, whatever its credentials."""
        where = (bmc.address, bmc.effective_port)
        with self._slots_lock:
            gone = [k for k in self._slots if k[:2] == where]
            slots = [self._slots.pop(k) for k in gone]
        for slot in slots:
            self._retire(slot)

    def close(self) -> None:
        """Log out of all sessions (waiting up to ~2 s) and stop the background threads."""
        with self._slots_lock:
            if self._closed:
                return
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
        self._stop.set()
        futures = [f for f in (self._retire(slot) for slot in slots) if f is not None]
        deadline = time.monotonic() + _LOGOUT_WAIT
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # a logout that is late or failed changes nothing now
                break
        # Queued work is not cancelled: each queued job owns a slot lock only it releases, and
        # every job is bounded by pyghmi's timers, so the workers drain and exit on their own.
        self._executor.shutdown(wait=False)
        if self._keepalive_thread is not None:
            self._keepalive_thread.join(timeout=1.0)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> IpmiStats:
        """A snapshot of the counters."""
        with self._slots_lock:
            sessions = sum(1 for slot in self._slots.values() if slot.command is not None)
        with self._counters.lock:
            values = dict(self._counters.values)
        return IpmiStats(sessions=sessions, **values)

    # -- the operations -------------------------------------------------------------------

    def _send(
        self, command: Any, request: codec.Request, data: tuple[int, ...] | bytes = ()
    ) -> bytes:
        self._counters.add("requests")
        return compat.send(command, request, data)

    def _chassis_control(self, command: Any, what: str) -> None:
        self._send(command, codec.CHASSIS_CONTROL_REQUEST, (codec.CHASSIS_CONTROL[what],))

    def _reboot(self, command: Any) -> PowerState:
        state = codec.parse_chassis_status(self._send(command, codec.GET_CHASSIS_STATUS))
        if state is PowerState.OFF:
            self._chassis_control(command, "on")
            return PowerState.ON
        try:
            self._chassis_control(command, "cycle")
        except Exception as err:
            # Switched off between our two requests: a power cycle is refused then (0xd5).
            failure = compat.classify_call_failure(err, frozenset())
            if failure.code != codec.CC_NOT_IN_PRESENT_STATE:
                raise
            self._chassis_control(command, "on")
        return PowerState.ON

    def _soft_off(self, command: Any) -> PowerState:
        self._chassis_control(command, "soft_off")
        return codec.parse_chassis_status(self._send(command, codec.GET_CHASSIS_STATUS))

    # -- calling a BMC --------------------------------------------------------------------

    def _call(
        self,
        bmc: BmcAccess,
        operation: str,
        op: Callable[[Any], T],
        timeout: float,
        unsupported_codes: frozenset[int] = codec.UNSUPPORTED_CODES,
    ) -> T:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if not bmc.address:
            raise unreachable(bmc, "no address configured")
        self._counters.add("calls")
        deadline = time.monotonic() + timeout
        slot = self._slot(bmc)
        if not slot.lock.acquire(timeout=timeout):  # an earlier call still waits for the BMC
            self._counters.add("timeouts")
            raise timed_out(bmc, timeout)
        job = _Job(slot, operation, op, deadline, timeout, unsupported_codes)
        try:
            future = self._executor.submit(self._work, job)
        except BaseException:
            slot.lock.release()
            raise
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if future.cancel():  # never started: the lock is still ours to give back
                slot.lock.release()
            self._counters.add("timeouts")
            raise timed_out(bmc, timeout) from None
        except CancelledError:  # not expected (close() lets queued work run); stay consistent
            slot.lock.release()
            raise RuntimeError("the ipmi driver is closed") from None
        except DriverError as err:
            if err.kind is DriverErrorKind.TIMEOUT:
                self._counters.add("timeouts")
            raise

    def _work(self, job: _Job[T]) -> T:
        """Runs in a worker thread holding ``job.slot.lock``; releases it when done."""
        try:
            return self._attempts(job)
        finally:
            if job.slot.retired:
                self._drop_session(job.slot, logout=True)
            job.slot.lock.release()

    def _attempts(self, job: _Job[T]) -> T:
        slot, bmc = job.slot, job.slot.access
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            if time.monotonic() >= job.deadline:  # the caller has given up: start nothing
                raise timed_out(bmc, job.timeout)
            compat.start_wait_window()
            fresh = False
            if slot.command is None or not compat.session_alive(slot.command):
                self._drop_session(slot, logout=False)
                slot.command = self._login(slot, job.timeout)
                fresh = True
            command = slot.command
            compat.prepare_call(command)
            try:
                result = job.op(command)
            except Exception as err:
                failure = compat.classify_call_failure(err, job.unsupported_codes)
                if not failure.session_lost:
                    slot.last_used = slot.last_call = time.monotonic()
                    raise self._error(bmc, job.operation, failure, job.timeout) from None
                self._drop_session(slot, logout=False)
                if fresh or attempt == _MAX_ATTEMPTS or time.monotonic() >= job.deadline:
                    raise self._error(bmc, job.operation, failure, job.timeout) from None
                log.info(
                    "BMC %s: session lost (%s), logging in again", bmc.endpoint, failure.detail
                )
                self._counters.add("retries")
                continue
            slot.last_used = slot.last_call = time.monotonic()
            return result
        raise AssertionError("not reached: the last attempt returns or raises")

    def _login(self, slot: _Slot, timeout: float) -> Any:
        bmc = slot.access
        try:
            command = compat.open_session(
                bmc.address, bmc.effective_port, bmc.username, bmc.password
            )
        except Exception as err:
            self._counters.add("login_failures")
            failure = compat.classify_login_failure(err)
            raise self._error(bmc, "log in", failure, timeout) from None
        self._counters.add("logins")
        self._ensure_keepalive()
        return command

    @staticmethod
    def _error(
        bmc: BmcAccess, operation: str, failure: compat.Failure, timeout: float
    ) -> DriverError:
        if failure.kind is DriverErrorKind.AUTH:
            return auth_failed(bmc, failure.detail)
        if failure.kind is DriverErrorKind.TIMEOUT:
            return timed_out(bmc, timeout)
        if failure.kind is DriverErrorKind.UNSUPPORTED:
            return unsupported(bmc, operation, failure.detail)
        if failure.kind is DriverErrorKind.UNREACHABLE:
            return unreachable(bmc, failure.detail)
        return protocol_error(bmc, operation, failure.detail)

    # -- slots and sessions ---------------------------------------------------------------

    def _slot(self, bmc: BmcAccess) -> _Slot:
        key = _key(bmc)
        with self._slots_lock:
            if self._closed:
                raise RuntimeError("the ipmi driver is closed")
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(bmc)
            return slot

    @staticmethod
    def _drop_session(slot: _Slot, *, logout: bool) -> None:
        command, slot.command = slot.command, None
        if command is not None and logout:
            compat.close_session(command)

    def _retire(self, slot: _Slot) -> Future[None] | None:
        """Log a removed slot out in a worker, as soon as its current call (if any) is done."""
        slot.retired = True  # a call that started on the slot meanwhile logs out after itself

        def logout() -> None:
            if not slot.lock.acquire(timeout=_RETIRE_WAIT):
                log.warning("BMC %s: still busy, session not logged out", slot.access.endpoint)
                return
            try:
                self._drop_session(slot, logout=True)
            finally:
                slot.lock.release()

        try:
            return self._executor.submit(logout)
        except RuntimeError:  # executor already shut down: nothing can talk to the BMC any more
            return None

    # -- keepalive ------------------------------------------------------------------------

    def _ensure_keepalive(self) -> None:
        if self._keepalive_interval is None or self._keepalive_thread is not None:
            return
        with self._slots_lock:
            if self._keepalive_thread is None and not self._closed:
                self._keepalive_thread = threading.Thread(
                    target=self._keepalive_loop, name="ipmi-keepalive", daemon=True
                )
                self._keepalive_thread.start()

    def _keepalive_loop(self) -> None:
        interval = self._keepalive_interval
        assert interval is not None
        # Checking every interval/5 (at most 4 s) pings a session after 20-24 s of silence with
        # the default interval: before pyghmi's own timer (24-29 s) and the BMC's (~60 s).
        while not self._stop.wait(min(interval / 5, 4.0)):
            try:
                self._keepalive_round(interval)
            except Exception:  # never let the thread die; the next round tries again
                log.exception("IPMI keepalive round failed")

    def _keepalive_round(self, interval: float) -> None:
        now = time.monotonic()
        with self._slots_lock:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.command is None or now - slot.last_used < interval:
                continue
            if not slot.lock.acquire(blocking=False):
                continue  # busy: a real call keeps it alive
            idle_too_long = now - slot.last_call >= self._idle_logout
            try:
                self._executor.submit(self._keepalive_one, slot, idle_too_long)
            except RuntimeError:  # shutting down
                slot.lock.release()
                return

    def _keepalive_one(self, slot: _Slot, idle_too_long: bool) -> None:
        try:
            if slot.command is None:
                return
            if idle_too_long:
                log.debug("BMC %s: logging out an unused session", slot.access.endpoint)
                self._drop_session(slot, logout=True)
                return
            compat.start_wait_window()
            command = slot.command
            if not compat.session_alive(command):
                self._drop_session(slot, logout=False)
                return
            compat.prepare_call(command)
            try:
                compat.send(command, codec.GET_DEVICE_ID)
            except Exception as err:
                self._counters.add("keepalive_failures")
                failure = compat.classify_call_failure(err, codec.UNSUPPORTED_CODES)
                if failure.session_lost:
                    log.info("BMC %s: keepalive failed, session dropped", slot.access.endpoint)
                    self._drop_session(slot, logout=False)
                return
            self._counters.add("keepalives")
            slot.last_used = time.monotonic()
        finally:
            if slot.retired:
                self._drop_session(slot, logout=True)
            slot.lock.release()
