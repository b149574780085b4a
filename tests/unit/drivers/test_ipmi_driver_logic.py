"""The ipmi driver's session handling, retries, deadlines and locking, with pyghmi scripted.

``ScriptedBmcs`` replaces the three pyghmi entry points the driver uses (log in, send one
request, log out), so these tests run without a network and can make a BMC slow, forgetful or
picky on purpose.  The real protocol is covered by tests/integration/drivers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyghmi.exceptions import IpmiException

from leaf_cell.drivers import ipmi_codec as codec
from leaf_cell.drivers import pyghmi_compat as compat
from leaf_cell.drivers.base import (
    BmcAccess,
    BootDevice,
    DriverError,
    DriverErrorKind,
    PowerAction,
    PowerState,
)
from leaf_cell.drivers.ipmi import IpmiDriver

PASSWORD = "scripted-pw-42"
Handler = Callable[["Session", codec.Request, bytes], bytes]


@dataclass
class Session:
    port: int
    password: str
    logged: int = 1
    broken: bool = False
    maxtimeout: int = 4
    logontries: int = 1
    logouts: int = 0
    forgotten_by_bmc: bool = False
    """The BMC dropped the session; pyghmi finds out on the next request."""

    def logout(self) -> None:
        self.logouts += 1
        self.logged, self.broken = 0, True


@dataclass
class Command:
    ipmi_session: Session


@dataclass
class ScriptedBmcs:
    """BMCs keyed by port: power state, login behaviour and per-request handlers."""

    power: dict[int, bool] = field(default_factory=dict)
    logins: list[int] = field(default_factory=list)
    requests: list[tuple[int, codec.Request, bytes]] = field(default_factory=list)
    login_hook: Callable[[int], None] | None = None
    handler: Handler | None = None
    sessions: list[Session] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_session(self, address: str, port: int, username: str, password: str) -> Command:
        if self.login_hook is not None:
            self.login_hook(port)
        if password != PASSWORD:
            raise IpmiException("Incorrect password provided")
        with self.lock:
            self.logins.append(port)
            session = Session(port, password)
            self.sessions.append(session)
        return Command(session)

    def send(self, command: Command, request: codec.Request, data: Any = ()) -> bytes:
        session = command.ipmi_session
        payload = bytes(data)
        with self.lock:
            self.requests.append((session.port, request, payload))
        if session.forgotten_by_bmc:
            session.logged, session.broken = 0, True
        if not session.logged:
            raise IpmiException("Session no longer connected")
        if self.handler is not None:
            return self.handler(session, request, payload)
        return self.standard(session, request, payload)

    def standard(self, session: Session, request: codec.Request, data: bytes) -> bytes:
        if request == codec.GET_CHASSIS_STATUS:
            return bytes([1 if self.power.get(session.port) else 0, 0, 0])
        if request == codec.CHASSIS_CONTROL_REQUEST:
            on = self.power.get(session.port, False)
            if data[0] == 2 and not on:
                raise IpmiException("Command not supported in present state", 0xD5)
            self.power[session.port] = data[0] in (1, 2, 3)
            return b""
        return b""


@pytest.fixture
def bmcs(monkeypatch: pytest.MonkeyPatch) -> ScriptedBmcs:
    scripted = ScriptedBmcs()
    monkeypatch.setattr(compat, "open_session", scripted.open_session)
    monkeypatch.setattr(compat, "send", scripted.send)
    return scripted


@pytest.fixture
def driver(bmcs: ScriptedBmcs) -> Iterator[IpmiDriver]:
    drv = IpmiDriver(keepalive_interval=None)
    yield drv
    drv.close()


def access(port: int = 16001, password: str = PASSWORD) -> BmcAccess:
    return BmcAccess("ipmi", "127.0.0.1", port, "admin", password)


def sent(bmcs: ScriptedBmcs, request: codec.Request) -> int:
    return sum(1 for _, r, _ in bmcs.requests if r == request)


def test_one_login_serves_many_calls(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    for _ in range(5):
        assert driver.get_power(access(), 5.0) is PowerState.OFF
    stats = driver.stats()
    assert (stats.logins, stats.calls, stats.requests, stats.sessions) == (1, 5, 5, 1)
    assert bmcs.logins == [16001]


def test_session_is_tuned_to_fail_fast_before_each_call(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    driver.get_power(access(), 5.0)
    session = bmcs.sessions[0]
    session.maxtimeout, session.logontries = 4, 1  # what a pyghmi re-login would reset
    driver.get_power(access(), 5.0)
    assert (session.maxtimeout, session.logontries) == (2, 0)


def test_different_passwords_get_different_sessions(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    driver.get_power(access(), 5.0)
    with pytest.raises(DriverError) as caught:
        driver.get_power(access(password="another-pw"), 5.0)
    assert caught.value.kind is DriverErrorKind.AUTH
    assert "another-pw" not in str(caught.value)
    driver.get_power(access(), 5.0)
    assert driver.stats().logins == 1
    assert driver.stats().login_failures == 1


def test_dead_reused_session_is_replaced_and_the_call_retried_once(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    driver.get_power(access(), 5.0)
    bmcs.sessions[0].forgotten_by_bmc = True  # the BMC rebooted
    bmcs.power[16001] = True
    assert driver.get_power(access(), 5.0) is PowerState.ON
    stats = driver.stats()
    assert (stats.logins, stats.retries) == (2, 1)


def test_fresh_session_that_fails_is_not_retried(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    def always_lost(session: Session, request: codec.Request, data: bytes) -> bytes:
        raise IpmiException("Session no longer connected")

    bmcs.handler = always_lost
    with pytest.raises(DriverError) as caught:
        driver.get_power(access(), 5.0)
    assert caught.value.kind is DriverErrorKind.TIMEOUT
    assert (driver.stats().logins, driver.stats().retries) == (1, 0)


def test_retries_are_bounded_to_two_attempts(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    driver.get_power(access(), 5.0)

    def always_lost(session: Session, request: codec.Request, data: bytes) -> bytes:
        raise IpmiException("Session no longer connected")

    bmcs.handler = always_lost
    with pytest.raises(DriverError):
        driver.get_power(access(), 5.0)
    assert (driver.stats().logins, driver.stats().retries) == (2, 1)
    assert sent(bmcs, codec.GET_CHASSIS_STATUS) == 3


def test_error_completion_code_is_an_answer_not_a_broken_session(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    def no_boot_options(session: Session, request: codec.Request, data: bytes) -> bytes:
        if request in (codec.SET_BOOT_OPTIONS, codec.GET_BOOT_OPTIONS):
            raise IpmiException("Invalid command", 0xC1)
        return bmcs.standard(session, request, data)

    bmcs.handler = no_boot_options
    with pytest.raises(DriverError) as caught:
        driver.set_boot_device(access(), BootDevice.PXE, False, 5.0)
    assert caught.value.kind is DriverErrorKind.UNSUPPORTED
    assert str(caught.value) == (
        "BMC 127.0.0.1:16001 does not support set boot device "
        "(completion code 0xc1: invalid command)"
    )
    driver.get_power(access(), 5.0)
    assert (driver.stats().logins, driver.stats().retries) == (1, 0)


def test_boot_parameter_not_supported_is_unsupported(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    def no_flags(session: Session, request: codec.Request, data: bytes) -> bytes:
        raise IpmiException("Parameter not supported", 0x80)

    bmcs.handler = no_flags
    with pytest.raises(DriverError) as caught:
        driver.get_boot_device(access(), 5.0)
    assert caught.value.kind is DriverErrorKind.UNSUPPORTED


def test_set_boot_device_sends_valid_bit_clearing_then_flags(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    driver.set_boot_device(access(), BootDevice.PXE, True, 5.0)
    assert [(r, d) for _, r, d in bmcs.requests] == [
        (codec.SET_BOOT_OPTIONS, bytes([3, 8])),
        (codec.SET_BOOT_OPTIONS, bytes([5, 0xC0, 0x04, 0, 0, 0])),
    ]


def test_set_boot_device_tolerates_a_bmc_without_valid_bit_clearing(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    def no_parameter_3(session: Session, request: codec.Request, data: bytes) -> bytes:
        if data[:1] == b"\x03":
            raise IpmiException("Parameter not supported", 0x80)
        return b""

    bmcs.handler = no_parameter_3
    driver.set_boot_device(access(), BootDevice.DISK, False, 5.0)
    assert sent(bmcs, codec.SET_BOOT_OPTIONS) == 2


def test_power_actions_send_chassis_control(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    assert driver.set_power(access(), PowerAction.REBOOT, 5.0) is PowerState.ON  # off: power on
    assert driver.set_power(access(), PowerAction.REBOOT, 5.0) is PowerState.ON  # on: cycle
    assert driver.set_power(access(), PowerAction.OFF, 5.0) is PowerState.OFF
    assert driver.set_power(access(), PowerAction.ON, 5.0) is PowerState.ON
    assert driver.set_power(access(), PowerAction.SOFT_OFF, 5.0) is PowerState.OFF
    controls = [d[0] for _, r, d in bmcs.requests if r == codec.CHASSIS_CONTROL_REQUEST]
    assert controls == [0x01, 0x02, 0x00, 0x01, 0x05]


def test_reboot_of_a_machine_switched_off_meanwhile_powers_it_on(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    def off_after_status(session: Session, request: codec.Request, data: bytes) -> bytes:
        if request == codec.GET_CHASSIS_STATUS:
            return b"\x01\x00\x00"  # reads as on; the cycle below then finds it off
        return bmcs.standard(session, request, data)

    bmcs.handler = off_after_status
    assert driver.set_power(access(), PowerAction.REBOOT, 5.0) is PowerState.ON
    controls = [d[0] for _, r, d in bmcs.requests if r == codec.CHASSIS_CONTROL_REQUEST]
    assert controls == [0x02, 0x01]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (IpmiException("Incorrect password provided"), DriverErrorKind.AUTH),
        (IpmiException(None), DriverErrorKind.TIMEOUT),
        (OSError(101, "Network is unreachable"), DriverErrorKind.UNREACHABLE),
        (IpmiException("No Cipher suite match"), DriverErrorKind.UNSUPPORTED),
    ],
)
def test_login_failures_map_to_kinds(
    driver: IpmiDriver, bmcs: ScriptedBmcs, error: Exception, kind: DriverErrorKind
) -> None:
    def fail(port: int) -> None:
        raise error

    bmcs.login_hook = fail
    with pytest.raises(DriverError) as caught:
        driver.get_power(access(), 5.0)
    assert caught.value.kind is kind
    assert "127.0.0.1:16001" in str(caught.value)


def test_missing_address_is_unreachable(driver: IpmiDriver) -> None:
    with pytest.raises(DriverError) as caught:
        driver.get_power(BmcAccess("ipmi", "", 0, "admin", PASSWORD), 5.0)
    assert caught.value.kind is DriverErrorKind.UNREACHABLE


def test_a_bmc_that_never_answers_costs_the_caller_its_timeout_and_one_thread(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    release = threading.Event()

    def hang(session: Session, request: codec.Request, data: bytes) -> bytes:
        release.wait(10)
        return b"\x00"

    driver.get_power(access(), 5.0)
    bmcs.handler = hang
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        driver.get_power(access(), 0.3)
    assert caught.value.kind is DriverErrorKind.TIMEOUT
    assert str(caught.value) == "BMC 127.0.0.1:16001 did not answer within 0.3 s"
    # The stuck worker still holds the BMC: further calls wait their own timeout, start nothing.
    for _ in range(3):
        with pytest.raises(DriverError):
            driver.get_power(access(), 0.1)
    assert time.monotonic() - started < 5.0
    assert sent(bmcs, codec.GET_CHASSIS_STATUS) == 2
    release.set()
    bmcs.handler = None
    assert driver.get_power(access(), 5.0) is PowerState.OFF
    assert driver.stats().timeouts == 4


def test_same_bmc_from_two_threads_logs_in_once(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    entered = threading.Event()

    def slow_login(port: int) -> None:
        entered.set()
        time.sleep(0.2)

    bmcs.login_hook = slow_login
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(driver.get_power, access(), 5.0)
        entered.wait(5)
        second = pool.submit(driver.get_power, access(), 5.0)
        assert (first.result(), second.result()) == (PowerState.OFF, PowerState.OFF)
    assert bmcs.logins == [16001]


def test_logins_to_different_bmcs_run_in_parallel(driver: IpmiDriver, bmcs: ScriptedBmcs) -> None:
    count = 8
    barrier = threading.Barrier(count, timeout=5)

    def wait_for_all(port: int) -> None:
        barrier.wait()  # breaks (and the login fails) unless all logins are under way at once

    bmcs.login_hook = wait_for_all
    with ThreadPoolExecutor(count) as pool:
        states = list(pool.map(lambda p: driver.get_power(access(p), 5.0), range(20001, 20009)))
    assert states == [PowerState.OFF] * count
    assert sorted(bmcs.logins) == list(range(20001, 20009))


def test_forget_logs_out_every_session_to_that_endpoint(
    driver: IpmiDriver, bmcs: ScriptedBmcs
) -> None:
    driver.get_power(access(), 5.0)
    driver.get_power(access(16002), 5.0)
    driver.forget(BmcAccess("ipmi", "127.0.0.1", 16001, "someone-else", "new-password"))
    deadline = time.monotonic() + 5
    while bmcs.sessions[0].logouts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.logouts for s in bmcs.sessions] == [1, 0]
    driver.get_power(access(), 5.0)
    assert bmcs.logins == [16001, 16002, 16001]


def test_close_logs_out_and_refuses_further_calls(bmcs: ScriptedBmcs) -> None:
    driver = IpmiDriver(keepalive_interval=None)
    for port in (16001, 16002, 16003):
        driver.get_power(access(port), 5.0)
    driver.close()
    driver.close()  # idempotent
    assert driver.closed
    assert [s.logouts for s in bmcs.sessions] == [1, 1, 1]
    with pytest.raises(RuntimeError):
        driver.get_power(access(), 5.0)


def test_close_while_a_worker_is_stuck_still_logs_everything_out(bmcs: ScriptedBmcs) -> None:
    driver = IpmiDriver(keepalive_interval=None, max_workers=1)
    driver.get_power(access(16001), 5.0)
    driver.get_power(access(16002), 5.0)
    release = threading.Event()

    def hang_on_first(session: Session, request: codec.Request, data: bytes) -> bytes:
        if session.port == 16001:
            release.wait(10)
        return b"\x00"

    bmcs.handler = hang_on_first
    with pytest.raises(DriverError):
        driver.get_power(access(16001), 0.2)  # the only worker is now stuck
    with pytest.raises(DriverError):
        driver.get_power(access(16002), 0.2)  # queued behind it, given up
    closer = threading.Thread(target=driver.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()  # close() does not wait for the stuck BMC
    release.set()
    deadline = time.monotonic() + 5
    while any(s.logouts == 0 for s in bmcs.sessions) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Queued logouts were not cancelled: both sessions end once the worker is free.
    assert [s.logouts for s in bmcs.sessions] == [1, 1]


def test_idle_sessions_get_keepalives_and_a_failed_one_drops_the_session(
    bmcs: ScriptedBmcs,
) -> None:
    driver = IpmiDriver(keepalive_interval=0.2)
    try:
        driver.get_power(access(), 5.0)
        deadline = time.monotonic() + 5
        while driver.stats().keepalives < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.stats().keepalives >= 2
        assert sent(bmcs, codec.GET_DEVICE_ID) >= 2
        assert driver.stats().logins == 1

        bmcs.sessions[0].forgotten_by_bmc = True
        while driver.stats().sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.stats().keepalive_failures >= 1
        assert driver.stats().sessions == 0
        driver.get_power(access(), 5.0)
        assert (driver.stats().logins, driver.stats().retries) == (2, 0)  # no wasted attempt
    finally:
        driver.close()


def test_sessions_nobody_uses_are_logged_out(bmcs: ScriptedBmcs) -> None:
    driver = IpmiDriver(keepalive_interval=0.1, idle_logout=0.3)
    try:
        driver.get_power(access(), 5.0)
        deadline = time.monotonic() + 5
        while bmcs.sessions[0].logouts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bmcs.sessions[0].logouts == 1
        assert driver.stats().sessions == 0
    finally:
        driver.close()


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_non_positive_timeout_is_a_programming_error(driver: IpmiDriver, timeout: float) -> None:
    with pytest.raises(ValueError):
        driver.get_power(access(), timeout)
