"""Failures turned into the one line an operator reads on stderr.

Every expected failure ends as ``rackcells: …`` and an exit status, never a traceback: a
traceback hides the one fact that matters (which field, which node, which endpoint) under
frames that mean nothing to an operator. Server errors carry ``google.rpc`` details
(AIP-193); the field violations of a ``BadRequest`` are the most useful part of an
INVALID_ARGUMENT, so they replace the summary message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "CliError",
    "RpcFailure",
    "UsageError",
    "describe_failure",
    "describe_rpc_error",
    "describe_status",
    "rpc_failure",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
# 128 + SIGINT, what shells report for a command ended with Ctrl-C.
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the CLI found itself (an unreadable file, a timed-out wait); exit status 1."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command line cannot be right (no cell for a bare node id, nothing to update).

    Exits 2 like argparse's own errors, so scripts can tell "I called it wrong" from "the
    server said no".
    """

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class RpcFailure:
    """The parts of a failed call the CLI looks at, independent of the grpc call object."""

    code: grpc.StatusCode
    message: str
    violations: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # True when the status carried google.rpc details, i.e. a server answered (as opposed to
    # the transport failing before any server was reached).
    from_server: bool = False


def _unpack_details(
    details: list[any_pb2.Any],
) -> tuple[tuple[tuple[str, str], ...], str, dict[str, str]]:
    violations: list[tuple[str, str]] = []
    reason = ""
    metadata: dict[str, str] = {}
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata.update(info.metadata)
    return tuple(violations), reason, metadata


def rpc_failure(err: grpc.RpcError) -> RpcFailure:
    """Extracts code, message and details from a failed call.

    ``grpc.RpcError`` itself promises no accessors; the errors raised by stubs are also
    ``grpc.Call`` objects, but anything else (a test double, a future transport) still
    produces a sensible line instead of an AttributeError.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    message = (details_fn() if callable(details_fn) else None) or str(err) or code.name
    status: status_pb2.Status | None = None
    if callable(getattr(err, "trailing_metadata", None)):
        try:
            status = rpc_status.from_call(err)
        except ValueError:
            status = None
    if status is None:
        return RpcFailure(code, message)
    violations, reason, metadata = _unpack_details(list(status.details))
    return RpcFailure(code, message, violations, reason, metadata, from_server=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_failure(failure: RpcFailure, endpoint: str) -> str:
    """The message (without the ``rackcells:`` prefix) for one failed call."""
    code = failure.code
    if code == grpc.StatusCode.UNAVAILABLE and not failure.from_server:
        return f"cannot reach {endpoint} ({_one_line(failure.message)})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not failure.from_server:
        return (
            f"DEADLINE_EXCEEDED: {endpoint} did not answer in time "
            "(raise --timeout if the server is just slow)"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT and failure.violations:
        text = "; ".join(f"{f}: {d}" if f else d for f, d in failure.violations)
        return f"{code.name}: {_one_line(text)}"
    return f"{code.name}: {_one_line(failure.message)}"


def describe_rpc_error(err: grpc.RpcError, endpoint: str) -> str:
    """One line for a failed call, e.g. ``NOT_FOUND: node cells/rack-1/nodes/x not found``."""
    return describe_failure(rpc_failure(err), endpoint)


def describe_status(status: status_pb2.Status) -> str:
    """One line for the ``error`` of a finished long-running operation."""
    try:
        name = code_pb2.Code.Name(status.code)
    except ValueError:
        name = f"CODE_{status.code}"
    violations, _, _ = _unpack_details(list(status.details))
    if violations:
        return f"{name}: " + _one_line("; ".join(f"{f}: {d}" for f, d in violations))
    return f"{name}: {_one_line(status.message) or 'the operation failed'}"
