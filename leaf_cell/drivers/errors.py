"""The one exception BMC drivers raise, and the operator-facing messages it carries.

A driver error becomes the node's ``last_error`` word for word, so the message is written for an
operator: it names the BMC, says what went wrong in plain words, and is distinct per
:class:`DriverErrorKind` so a glance tells "fix the credentials" from "the BMC is down".

Every message is built here, by the functions below, from fixed templates plus *sanitised*
details.  Text that came from a library or the network goes through :func:`redact` first, and
the finished message is redacted once more against the BMC password, so no code path can leak
the password into ``last_error``, a log line or an API response.  Driver errors are raised
``from None``: a chained library exception would carry text we do not control into tracebacks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leaf_cell.drivers.base import BmcAccess

__all__ = [
    "DriverError",
    "DriverErrorKind",
    "auth_failed",
    "protocol_error",
    "redact",
    "timed_out",
    "unreachable",
    "unsupported",
]

_REDACTED = "***"
_MAX_DETAIL = 200


class DriverErrorKind(StrEnum):
    """Why a BMC call failed, coarse enough for the conductor to decide what to do next."""

    AUTH = "auth"
    """The BMC refused the user name or password: an operator must fix the node's BMC fields."""
    TIMEOUT = "timeout"
    """The BMC did not answer in time: it may be down, rebooting or overloaded; try later."""
    UNSUPPORTED = "unsupported"
    """The BMC answered that it does not implement the command: retrying will not help."""
    UNREACHABLE = "unreachable"
    """The BMC's address could not be used at all (name does not resolve, no route)."""
    PROTOCOL = "protocol"
    """Anything else: an error completion code or an answer the driver could not understand."""


class DriverError(Exception):
    """A BMC call failed; ``str(err)`` is the operator-facing message, without secrets."""

    def __init__(self, kind: DriverErrorKind, message: str, *, endpoint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"DriverError({self.kind.value!r}, {self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keeps the error picklable (process pools, multiprocessing test helpers).
        return (_rebuild, (self.kind, self.message, self.endpoint))


def _rebuild(kind: DriverErrorKind, message: str, endpoint: str) -> DriverError:
    return DriverError(kind, message, endpoint=endpoint)


def redact(text: str, *secrets: str) -> str:
    """``text`` with every secret replaced, control characters dropped and its length capped.

    Short secrets are replaced too, even where that mangles the text: a message that reads
    oddly is acceptable, a message that contains a password is not.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    for secret in secrets:  # truncation or cleaning cannot reveal a secret, but be certain
        if secret and secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _finish(kind: DriverErrorKind, bmc: BmcAccess, message: str) -> DriverError:
    return DriverError(kind, redact(message, bmc.password), endpoint=bmc.endpoint)


def _suffix(detail: str, bmc: BmcAccess) -> str:
    detail = redact(detail, bmc.password)
    return f" ({detail})" if detail else ""


def auth_failed(bmc: BmcAccess, detail: str = "") -> DriverError:
    """The BMC rejected the user or password, e.g. ``... of user 'admin' (wrong password)``."""
    user = redact(bmc.username, bmc.password)
    return _finish(
        DriverErrorKind.AUTH,
        bmc,
        f"BMC {bmc.endpoint} rejected the credentials of user '{user}'{_suffix(detail, bmc)}",
    )


def timed_out(bmc: BmcAccess, timeout: float) -> DriverError:
    """No answer within the caller's time budget."""
    return _finish(
        DriverErrorKind.TIMEOUT, bmc, f"BMC {bmc.endpoint} did not answer within {timeout:.1f} s"
    )


def unsupported(bmc: BmcAccess, operation: str, detail: str = "") -> DriverError:
    """The BMC does not implement ``operation`` (e.g. ``set boot device``)."""
    return _finish(
        DriverErrorKind.UNSUPPORTED,
        bmc,
        f"BMC {bmc.endpoint} does not support {operation}{_suffix(detail, bmc)}",
    )


def unreachable(bmc: BmcAccess, detail: str) -> DriverError:
    """The address cannot be used: it does not resolve, or the network refused at once."""
    reason = redact(detail, bmc.password) or "no route to it"
    return _finish(DriverErrorKind.UNREACHABLE, bmc, f"BMC {bmc.endpoint} is unreachable: {reason}")


def protocol_error(bmc: BmcAccess, operation: str, detail: str) -> DriverError:
    """The BMC answered, but not with success; ``detail`` says what it answered."""
    reason = redact(detail, bmc.password) or "unexpected answer"
    return _finish(
        DriverErrorKind.PROTOCOL, bmc, f"BMC {bmc.endpoint} failed to {operation}: {reason}"
    )
