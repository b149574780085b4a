"""The one exception hierarchy of the servers.

Every error a caller can cause is a subclass of :class:`RackcellsError` that carries its gRPC
status code and a message template; :mod:`common.grpc_errors` turns them into statuses with
``google.rpc.ErrorInfo`` and ``BadRequest`` details (AIP-193). Anything else that escapes a
handler is a bug and becomes ``INTERNAL``.

Messages are built from templates with explicit parameters, never from the request as a whole,
so that secrets such as BMC passwords cannot leak into a status or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "EtagMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NodeLocked",
    "NotFound",
    "PermissionDenied",
    "RackcellsError",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
]

ERROR_DOMAIN = "rackcells.io"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path as the caller sent it (``node.ports[2].mac``) and why."""

    field: str
    description: str


class RackcellsError(Exception):
    """Base class: a failure with a gRPC code, a machine-readable reason and a clear message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    template: str = "{message}"

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: Sequence[FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
        **params: object,
    ) -> None:
        if message is None:
            message = self.template.format(**params)
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}


class InvalidArgument(RackcellsError):
    """The request is malformed; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    @classmethod
    def of(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """Builds one error from several violations, naming each field in the message."""
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(text, violations=violations)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls.of([FieldViolation(field, description)])


class NotFound(RackcellsError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(RackcellsError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(RackcellsError):
    """The request is valid but the resource is not in a state that allows it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NodeLocked(FailedPrecondition):
    """Another task holds the node's lock; the message names holder and purpose."""

    reason = "NODE_LOCKED"
    template = "node {name} is locked by {holder} for {purpose} since {since}"


class Aborted(RackcellsError):
    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class EtagMismatch(Aborted):
    """The caller's etag is stale: someone changed the resource since it was read."""

    reason = "ETAG_MISMATCH"
    template = "etag {given!r} does not match the current etag of {name}; read it again"


class PermissionDenied(RackcellsError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class DeadlineExceeded(RackcellsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(RackcellsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(RackcellsError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Unimplemented(RackcellsError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"
