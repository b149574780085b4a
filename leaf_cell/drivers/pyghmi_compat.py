"""How the IPMI driver uses pyghmi's client, and the pyghmi behaviour it works around.

pyghmi (``pyghmi.ipmi.command.Command`` on ``pyghmi.ipmi.private.session.Session``) runs one
global I/O thread that ``select()``s on shared UDP sockets (one per 64 BMCs) and queues each
received packet on its session; the *calling* threads then decode packets and drive retries.
Credentials go in as bytes: with str, a second ``Command`` to the same BMC has been seen to hang.
What we found by reading ``session.py`` and measuring against the rack simulator on loopback,
and what this module does about it:

**Lost wake-ups.**  A synchronous command sends, then registers a wait with the I/O thread.  A
reply that arrives (on loopback: within microseconds) before the registration wakes nobody, and
the caller sleeps until its retransmit timer, 0.5-1.0 s.  Measured: 8 of 200 sequential status
calls took 0.5-0.8 s; 32 threads polling 50 BMCs needed 0.9 s per sweep instead of 0.07 s.
Synchronous logins wait in ``Session.wait_for_rsp()``, which decodes *any* session's packets: when
one login thread completes another's handshake, the other sleeps until the next timer of any
session, the ~24 s keepalive timer (2 of 50 logins from 8 threads took 24 s).  Every wait goes
through the module function ``session._io_wait``, and every loop around it re-checks its own
condition, so :func:`install_wait_bound` wraps it with a cap on each single wait: 20 ms during
the first 0.5 s of an operation, 100 ms up to 3 s, 250 ms after (a dead BMC costs a few wake-ups
per second, not fifty).  With it: no stall over 40 ms in 200 calls, 50 logins from 32 threads in
0.2-0.3 s.  If pyghmi's internals change shape, the wrapper is not installed (warning logged)
and everything still works, only with the stalls.

**A lock-order deadlock.**  ``Session.send_payload`` holds the module lock
``KEEPALIVE_SESSIONS`` while ``_xmit_packet`` takes ``WAITING_SESSIONS``; the retransmit path
(``awaitresponse`` or ``wait_for_rsp`` calling ``_timedout``, which resends or gives up) holds
``WAITING_SESSIONS`` and then takes ``KEEPALIVE_SESSIONS``.  With many threads and some BMCs
slow or dead, the process deadlocked within seconds (250 BMCs, 5 % unreachable, 64 threads:
every call timed out from the third sweep on, all threads parked in ``util.protect``).  Both are
re-entrant locks looked up by name at each use, so :func:`merge_session_locks` makes the two
names one lock: no order left to invert.  The sections they guard are short dictionary updates.

**Keepalives.**  pyghmi keeps a session alive by sending Get Device ID after 24-29 s without
traffic (``MAX_IDLE`` 29 s minus up to 4.9 s of jitter), but only from inside
``Session.wait_for_rsp()``: a thread running pyghmi's event loop (``Command.eventloop()``, the
``Housekeeper`` thread) or a synchronous login in progress.  Synchronous commands wait elsewhere
and never send them, so with power sweeps minutes apart the BMC ends idle sessions (IPMI's usual
inactivity timeout is 60 s; the simulator's too).  Running pyghmi's event loop in a thread would
send them, but that loop decodes every session's replies and races the synchronous callers for
them.  The driver therefore sends the same keepalive itself (see ``IpmiDriver``), through the
same per-BMC ordering as real calls.

**Stale sessions.**  When a BMC stops answering an established session (it rebooted, or dropped
the session), pyghmi retransmits (first after 0.5-1.0 s, then one second longer each time) until
``maxtimeout`` (4) is exceeded, then logs in again once in place (``logontries`` 1) and resends.
Measured after the simulator dropped its sessions: 20.9 s until the call returned; with
``maxtimeout`` 2 still 7 s, because the in-place login's Set Session Privilege waits in the same
thread for the interrupted command's deadline.  :func:`prepare_call` therefore sets
``maxtimeout`` 2 and ``logontries`` 0 before each call: a dead session fails within ~4 s with
"Session no longer connected" (marked broken), and the driver logs in afresh and retries once.
A BMC that answers up to ~2 s late still works (pyghmi accepts the answer to a retransmission).
Logins are less patient: six round trips, each first retried after 0.5-1.0 s, so a BMC 0.5 s
slow logs in in ~3.7 s, one 1 s slow in ~8 s, and one 2 s slow not at all.

**What pyghmi raises** (all ``pyghmi.exceptions.IpmiException`` unless noted):
wrong password: "Incorrect password provided" (RAKP2 HMAC mismatch, immediate); unknown user:
"Unauthorized name in RAKP2" (RMCP+ status 0x0d); a BMC that does not answer a login:
``IpmiException(None)`` after ~5 s; a host name that does not resolve: ``socket.gaierror``;
an error completion code: the code's text with ``ipmicode`` set (0xc1 "Invalid command");
an established session that stopped answering: "Session no longer connected".  A UDP port
nobody listens on is silence, not an error (pyghmi's sockets are unconnected and it ignores
send errors).
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyghmi.exceptions as pyghmi_exceptions
import pyghmi.ipmi.command as pyghmi_command
import pyghmi.ipmi.private.session as pyghmi_session

from leaf_cell.drivers.errors import DriverErrorKind
from leaf_cell.drivers.ipmi_codec import Request, completion_text

__all__ = [
    "SILENCE_LIMIT",
    "Failure",
    "classify_call_failure",
    "classify_login_failure",
    "close_session",
    "install_wait_bound",
    "merge_session_locks",
    "open_session",
    "prepare_call",
    "send",
    "session_alive",
    "start_wait_window",
]

log = logging.getLogger(__name__)

SILENCE_LIMIT = 2
"""pyghmi ``maxtimeout`` for calls: retransmit once, give up after ~2-4 s of silence."""

_WAIT_CAPS = ((0.5, 0.02), (3.0, 0.1))  # (time into the operation, longest single wait)
_LATE_WAIT_CAP = 0.25
_UNMARKED_WAIT_CAP = 0.1
_EXPECTED_WAIT_PARAMS = ["timeout", "myaddr", "evq"]

_now = time.monotonic  # the wait bound's clock (a seam for tests)
_window = threading.local()
_install_lock = threading.Lock()
_installed: list[Callable[..., Any]] = []  # the wrapper, once installed

_AUTH_DETAILS = (
    ("incorrect password", "wrong password"),
    ("unauthorized name", "unknown user"),
    ("invalid username length", "user name too long"),
    ("unauthorized role", "user not allowed this privilege level"),
    ("invalid role", "user not allowed this privilege level"),
    ("privelege level", "user not allowed this privilege level"),  # sic, pyghmi's spelling
    ("privilege level", "user not allowed this privilege level"),
    ("integrity check value", "wrong password"),
    ("rakp4 integrity", "wrong password or BMC key"),
)
_UNSUPPORTED_LOGIN = (
    ("no cipher suite", "IPMI 2.0 cipher suite 3 or 17 (lanplus)"),
    ("invalid authentication algorithm", "IPMI 2.0 cipher suite 3 or 17 (lanplus)"),
    ("invalid integrity algorithm", "IPMI 2.0 cipher suite 3 or 17 (lanplus)"),
    ("invalid confidentiality algorithm", "IPMI 2.0 cipher suite 3 or 17 (lanplus)"),
    ("md5 required", "IPMI 2.0 (lanplus) sessions"),
)
_SESSION_LOST = "session no longer connected"
_PYGHMI_TIMEOUT_CODE = 0xFFFF


@dataclass(frozen=True)
class Failure:
    """What a pyghmi exception means for the driver.

    ``detail`` is short text for the operator (not yet redacted); ``session_lost`` says the
    session cannot be used again, so the driver drops it (and may log in afresh and retry).
    """

    kind: DriverErrorKind
    detail: str
    session_lost: bool
    code: int | None = None


# -- the wait bound ------------------------------------------------------------------------


def start_wait_window() -> None:
    """Mark the start of an operation in this thread: waits are short again for a while."""
    _window.started = _now()


def _wait_cap() -> float:
    started: float | None = getattr(_window, "started", None)
    if started is None:
        return _UNMARKED_WAIT_CAP
    waited = _now() - started
    for limit, cap in _WAIT_CAPS:
        if waited < limit:
            return cap
    return _LATE_WAIT_CAP


def install_wait_bound() -> bool:
    """Cap pyghmi's single waits (see the module docstring); idempotent, process-wide.

    Returns False, after a warning, if pyghmi's internals are not what this was written for.
    """
    with _install_lock:
        current = getattr(pyghmi_session, "_io_wait", None)
        if current is not None and current in _installed:
            return True
        if current is None or not callable(current):
            log.warning("pyghmi has no session._io_wait; IPMI replies may stall up to 1 s")
            return False
        try:
            params = list(inspect.signature(current).parameters)
        except (TypeError, ValueError):
            params = []
        if params != _EXPECTED_WAIT_PARAMS:
            log.warning("pyghmi's session._io_wait%s is unexpected; not bounding waits", params)
            return False
        original = current

        def bounded_io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> Any:
            return original(min(timeout, _wait_cap()), myaddr, evq)

        pyghmi_session._io_wait = bounded_io_wait
        _installed.append(bounded_io_wait)
        return True


def merge_session_locks() -> bool:
    """Make ``WAITING_SESSIONS`` the same lock as ``KEEPALIVE_SESSIONS`` (see the docstring).

    Idempotent; returns False, after a warning, if pyghmi's module locks are not there.
    """
    with _install_lock:
        keepalive = getattr(pyghmi_session, "KEEPALIVE_SESSIONS", None)
        waiting = getattr(pyghmi_session, "WAITING_SESSIONS", None)
        if keepalive is not None and waiting is keepalive:
            return True
        if not all(
            hasattr(lock, "acquire") and hasattr(lock, "release") for lock in (keepalive, waiting)
        ):
            log.warning("pyghmi's session locks are not where expected; not merging them")
            return False
        pyghmi_session.WAITING_SESSIONS = keepalive
        return True


# -- sessions and requests -----------------------------------------------------------------


def open_session(address: str, port: int, username: str, password: str) -> Any:
    """Log in (RMCP+ / RAKP) and return a pyghmi ``Command``; raises what pyghmi raises."""
    return pyghmi_command.Command(
        bmc=address,
        userid=username.encode("utf-8"),
        password=password.encode("utf-8"),
        port=port,
    )


def session_alive(command: Any) -> bool:
    """Whether pyghmi still considers the command's session logged in and usable."""
    session = getattr(command, "ipmi_session", None)
    return bool(getattr(session, "logged", 0)) and not getattr(session, "broken", True)


def prepare_call(command: Any) -> None:
    """Fail fast on a dead session instead of pyghmi's slow in-place re-login.

    Set before every call because each (re-)login resets both attributes.  On a pyghmi without
    them this only adds unused attributes: calls then recover the slow way.
    """
    session = command.ipmi_session
    session.maxtimeout = SILENCE_LIMIT
    session.logontries = 0


def send(command: Any, request: Request, data: Iterable[int] = ()) -> bytes:
    """One IPMI request on the command's session; the response data on success.

    Raises ``IpmiException`` with ``ipmicode`` set for an error completion code.
    """
    response = command.xraw_command(netfn=request.netfn, command=request.command, data=tuple(data))
    return bytes(response["data"])


def close_session(command: Any) -> None:
    """Log out (Close Session, not waited for); never raises."""
    try:
        command.ipmi_session.logout()
    except Exception as err:  # the session may be half broken; there is nothing left to do
        log.debug("logout failed: %s", type(err).__name__)


# -- what the exceptions mean ---------------------------------------------------------------


def _text(err: BaseException) -> str:
    first = err.args[0] if err.args else None
    return "" if first is None else str(first)


def classify_login_failure(err: BaseException) -> Failure:
    """Meaning of an exception from :func:`open_session`."""
    if isinstance(err, socket.gaierror):
        return Failure(DriverErrorKind.UNREACHABLE, "address does not resolve", True)
    if isinstance(err, OSError):
        return Failure(DriverErrorKind.UNREACHABLE, err.strerror or type(err).__name__, True)
    if not isinstance(err, pyghmi_exceptions.IpmiException):
        return Failure(
            DriverErrorKind.PROTOCOL, f"unexpected answer during login ({type(err).__name__})", True
        )
    text = _text(err)
    lowered = text.lower()
    if not text or lowered == "timeout":
        return Failure(DriverErrorKind.TIMEOUT, "no answer to the login", True)
    for marker, detail in _AUTH_DETAILS:
        if marker in lowered:
            return Failure(DriverErrorKind.AUTH, detail, True)
    for marker, what in _UNSUPPORTED_LOGIN:
        if marker in lowered:
            return Failure(DriverErrorKind.UNSUPPORTED, what, True)
    if "unable to transmit" in lowered:
        return Failure(DriverErrorKind.UNREACHABLE, "cannot send to the address", True)
    if "insufficient resources" in lowered:
        return Failure(DriverErrorKind.PROTOCOL, "no free session on the BMC", True)
    return Failure(DriverErrorKind.PROTOCOL, f"login failed: {text}", True)


def classify_call_failure(err: BaseException, unsupported_codes: frozenset[int]) -> Failure:
    """Meaning of an exception from :func:`send` on a logged-in session."""
    if isinstance(err, OSError):
        return Failure(DriverErrorKind.UNREACHABLE, err.strerror or type(err).__name__, True)
    if not isinstance(err, pyghmi_exceptions.IpmiException):
        return Failure(DriverErrorKind.PROTOCOL, f"unexpected answer ({type(err).__name__})", True)
    text = _text(err)
    code = getattr(err, "ipmicode", 0) or 0
    if (
        code == _PYGHMI_TIMEOUT_CODE
        or text.lower() in ("timeout", "")
        or (text.lower().startswith(_SESSION_LOST))
    ):
        return Failure(DriverErrorKind.TIMEOUT, "session stopped answering", True)
    if 0 < code <= 0xFF:
        kind = (
            DriverErrorKind.UNSUPPORTED if code in unsupported_codes else (DriverErrorKind.PROTOCOL)
        )
        return Failure(kind, completion_text(code), False, code)
    return Failure(DriverErrorKind.PROTOCOL, text, True)
