"""What pyghmi's exceptions mean for the driver, and the bound on pyghmi's waits."""

from __future__ import annotations

import socket
import threading

import pyghmi.ipmi.private.session as pyghmi_session
import pytest
from pyghmi.exceptions import IpmiException

from leaf_cell.drivers import pyghmi_compat as compat
from leaf_cell.drivers.base import DriverErrorKind

AUTH = DriverErrorKind.AUTH
TIMEOUT = DriverErrorKind.TIMEOUT
UNSUPPORTED = DriverErrorKind.UNSUPPORTED
UNREACHABLE = DriverErrorKind.UNREACHABLE
PROTOCOL = DriverErrorKind.PROTOCOL


@pytest.mark.parametrize(
    ("err", "kind", "detail"),
    [
        (IpmiException("Incorrect password provided"), AUTH, "wrong password"),
        (IpmiException("Unauthorized name in RAKP2"), AUTH, "unknown user"),
        (IpmiException("Invalid integrity check value reported in RAKP4"), AUTH, "wrong password"),
        (
            IpmiException("Parameter not supported while requesting privelege level 4 for b'x'"),
            AUTH,
            "user not allowed this privilege level",
        ),
        (IpmiException(None), TIMEOUT, "no answer to the login"),
        (IpmiException("timeout"), TIMEOUT, "no answer to the login"),
        (
            IpmiException("No Cipher suite match with proposed security algorithms"),
            UNSUPPORTED,
            "IPMI 2.0 cipher suite 3 or 17 (lanplus)",
        ),
        (
            IpmiException("MD5 required but not enabled/available on target BMC"),
            UNSUPPORTED,
            "IPMI 2.0 (lanplus) sessions",
        ),
        (
            IpmiException("Unable to transmit to specified address"),
            UNREACHABLE,
            "cannot send to the address",
        ),
        (socket.gaierror(-2, "Name or service not known"), UNREACHABLE, "address does not resolve"),
        (
            IpmiException(
                "Insufficient resources to create new session (wait for existing "
                "sessions to timeout)"
            ),
            PROTOCOL,
            "no free session on the BMC",
        ),
        (
            IpmiException("Session failed to initialize"),
            PROTOCOL,
            "login failed: Session failed to initialize",
        ),
        (KeyError("command"), PROTOCOL, "unexpected answer during login (KeyError)"),
    ],
)
def test_login_failures(err: BaseException, kind: DriverErrorKind, detail: str) -> None:
    failure = compat.classify_login_failure(err)
    assert (failure.kind, failure.detail, failure.session_lost) == (kind, detail, True)


@pytest.mark.parametrize(
    ("err", "kind", "lost", "code"),
    [
        (IpmiException("Session no longer connected"), TIMEOUT, True, None),
        (IpmiException("timeout", 0xFFFF), TIMEOUT, True, None),
        (IpmiException("Invalid command", 0xC1), UNSUPPORTED, False, 0xC1),
        (IpmiException("Invalid command for given LUN", 0xC2), UNSUPPORTED, False, 0xC2),
        (IpmiException("Command not supported in present state", 0xD5), PROTOCOL, False, 0xD5),
        (IpmiException("Node Busy", 0xC0), PROTOCOL, False, 0xC0),
        (IpmiException("Unknown code 0x80 encountered", 0x80), PROTOCOL, False, 0x80),
        (ConnectionRefusedError(111, "Connection refused"), UNREACHABLE, True, None),
        (AssertionError(), PROTOCOL, True, None),
    ],
)
def test_call_failures(
    err: BaseException, kind: DriverErrorKind, lost: bool, code: int | None
) -> None:
    failure = compat.classify_call_failure(err, frozenset({0xC1, 0xC2}))
    assert (failure.kind, failure.session_lost, failure.code) == (kind, lost, code)


def test_boot_option_parameter_code_is_unsupported_when_the_caller_says_so() -> None:
    failure = compat.classify_call_failure(IpmiException("x", 0x80), frozenset({0x80}))
    assert failure.kind is UNSUPPORTED
    assert failure.detail == "completion code 0x80"


def test_wait_bound_is_installed_once_and_caps_each_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[float] = []

    def original(timeout: float, myaddr: object = None, evq: object = None) -> None:
        seen.append(timeout)

    monkeypatch.setattr(pyghmi_session, "_io_wait", original)
    monkeypatch.setattr(compat, "_installed", [])
    assert compat.install_wait_bound()
    wrapper = pyghmi_session._io_wait
    assert compat.install_wait_bound()
    assert pyghmi_session._io_wait is wrapper  # not wrapped twice

    def in_fresh_thread() -> None:
        compat.start_wait_window()
        wrapper(30.0)
        wrapper(0.001, ("::1", 623), None)

    thread = threading.Thread(target=in_fresh_thread)
    thread.start()
    thread.join()
    assert seen == [0.02, 0.001]  # a long wait is cut short; a short one is left alone


def test_waits_grow_longer_as_an_operation_drags_on(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("leaf_cell.drivers.pyghmi_compat._now", lambda: clock[0])
    compat.start_wait_window()
    caps = []
    for elapsed in (0.0, 0.4, 1.0, 2.9, 3.5, 60.0):
        clock[0] = 100.0 + elapsed
        caps.append(compat._wait_cap())
    assert caps == [0.02, 0.02, 0.1, 0.1, 0.25, 0.25]


def test_unexpected_pyghmi_internals_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def different(deadline: float) -> None:
        raise AssertionError("must not be called")

    monkeypatch.setattr(pyghmi_session, "_io_wait", different)
    monkeypatch.setattr(compat, "_installed", [])
    assert not compat.install_wait_bound()
    assert pyghmi_session._io_wait is different


def test_session_locks_are_merged_into_one(monkeypatch: pytest.MonkeyPatch) -> None:
    keepalive, waiting = threading.RLock(), threading.RLock()
    monkeypatch.setattr(pyghmi_session, "KEEPALIVE_SESSIONS", keepalive)
    monkeypatch.setattr(pyghmi_session, "WAITING_SESSIONS", waiting)
    assert compat.merge_session_locks()
    assert pyghmi_session.WAITING_SESSIONS is keepalive
    assert pyghmi_session.KEEPALIVE_SESSIONS is keepalive
    assert compat.merge_session_locks()  # idempotent


def test_missing_session_locks_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pyghmi_session, "WAITING_SESSIONS")
    assert not compat.merge_session_locks()
    assert not hasattr(pyghmi_session, "WAITING_SESSIONS")


def test_prepare_call_disables_the_in_place_relogin() -> None:
    class Session:
        maxtimeout = 4
        logontries = 1

    class Command:
        ipmi_session = Session()

    command = Command()
    compat.prepare_call(command)
    assert (command.ipmi_session.maxtimeout, command.ipmi_session.logontries) == (2, 0)


def test_open_session_passes_credentials_as_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    got: dict[str, object] = {}

    def fake_command(**kwargs: object) -> object:
        got.update(kwargs)
        return object()

    monkeypatch.setattr("pyghmi.ipmi.command.Command", fake_command)
    compat.open_session("127.0.0.1", 16001, "admin", "pässword")
    assert got == {
        "bmc": "127.0.0.1",
        "userid": b"admin",
        "password": "pässword".encode(),
        "port": 16001,
    }
