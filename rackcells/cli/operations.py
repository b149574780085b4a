"""Waiting for a long-running operation (AIP-151) and reading its outcome.

Provisioning actions return a ``google.longrunning.Operation`` at once; the node gets where
it is going minutes later. ``WaitOperation`` lets the server hold the call until something
happens, which is cheaper than polling and reacts at once. It is asked for in short slices so
the progress line stays fresh and Ctrl-C is honoured promptly. A server that does not
implement ``WaitOperation`` (the method is optional in the standard) is polled with
``GetOperation`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

from rackcells.cli.errors import CliError, describe_status
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "INTERACTIVE_WAIT_SLICE",
    "POLL_INTERVAL",
    "WAIT_SLICE",
    "OperationFailed",
    "describe_progress",
    "metadata_of",
    "operation_node",
    "wait_operation",
]

# How long one WaitOperation call may be held by the server before the CLI asks again.
WAIT_SLICE = 5.0
# The same while someone watches the progress line: fresher phases and percentages.
INTERACTIVE_WAIT_SLICE = 1.0
# How often GetOperation is called when WaitOperation is not implemented.
POLL_INTERVAL = 0.5
# Consecutive UNAVAILABLE answers tolerated while waiting (a restarting top cell, a blip).
_UNAVAILABLE_RETRIES = 5


class OperationFailed(CliError):
    """The operation finished with an error status."""


def _code(err: grpc.RpcError) -> Any:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def wait_operation(
    operations: Any,
    operation: operations_pb2.Operation,
    *,
    wait_timeout: float | None,
    rpc_timeout: float,
    on_progress: Callable[[operations_pb2.Operation], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wait_slice: float = WAIT_SLICE,
) -> operations_pb2.Operation:
    """Returns ``operation`` once done, asking ``operations`` (an Operations stub).

    ``on_progress`` sees ``operation`` itself first (it may already say where the node is in
    the queue), then every answer that is not the final one. A server may hold WaitOperation
    until the operation ends, so ``wait_slice`` also bounds how stale the progress can get.

    Raises :class:`CliError` when ``wait_timeout`` seconds pass first; the operation keeps
    running on the server, and the message says how to look at it later.
    """
    if on_progress is not None and not operation.done:
        on_progress(operation)
    name = operation.name
    deadline = None if not wait_timeout else clock() + wait_timeout
    polling = False
    unavailable = 0
    while not operation.done:
        remaining = None if deadline is None else deadline - clock()
        if remaining is not None and remaining <= 0:
            raise CliError(
                f"operation {name} is still running after {wait_timeout:g}s; "
                "it continues on the server"
            )
        slice_ = wait_slice if remaining is None else min(wait_slice, remaining)
        try:
            if polling:
                sleep(min(POLL_INTERVAL, slice_))
                operation = operations.GetOperation(
                    operations_pb2.GetOperationRequest(name=name), timeout=rpc_timeout
                )
            else:
                wait = duration_pb2.Duration()
                wait.FromNanoseconds(int(slice_ * 1e9))
                operation = operations.WaitOperation(
                    operations_pb2.WaitOperationRequest(name=name, timeout=wait),
                    timeout=slice_ + rpc_timeout,
                )
            unavailable = 0
        except grpc.RpcError as err:
            code = _code(err)
            if code == grpc.StatusCode.UNIMPLEMENTED and not polling:
                polling = True
                continue
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                continue
            if code == grpc.StatusCode.UNAVAILABLE and unavailable < _UNAVAILABLE_RETRIES:
                unavailable += 1
                sleep(min(2.0**unavailable / 4, 4.0))
                continue
            raise
        if on_progress is not None and not operation.done:
            on_progress(operation)
    return operation


def metadata_of(
    operation: operations_pb2.Operation,
) -> node_service_pb2.ProvisionOperationMetadata | None:
    """The ProvisionOperationMetadata of ``operation``, or None if it carries none."""
    if not operation.HasField("metadata"):
        return None
    meta = node_service_pb2.ProvisionOperationMetadata()
    if not operation.metadata.Unpack(meta):
        return None
    return meta


def describe_progress(operation: operations_pb2.Operation) -> str:
    """A short progress text, e.g. ``n1: image_write 45%`` or ``n1: queued (position 3)``."""
    meta = metadata_of(operation)
    if meta is None:
        return f"{operation.name}: running"
    node = meta.node.rsplit("/", 1)[-1] or operation.name
    if meta.queue_position:
        return f"{node}: queued (position {meta.queue_position})"
    text = f"{node}: {meta.phase or 'running'}"
    if meta.percent:
        text += f" {meta.percent}%"
    return text


def operation_node(operation: operations_pb2.Operation) -> node_pb2.Node | None:
    """The Node a finished operation returned; raises :class:`OperationFailed` on error.

    Returns None when the response is not a Node (a server that leaves it empty); the
    caller then reads the node itself.
    """
    if operation.HasField("error"):
        raise OperationFailed(
            f"operation {operation.name} failed: {describe_status(operation.error)}"
        )
    if not operation.HasField("response"):
        return None
    node = node_pb2.Node()
    if not operation.response.Unpack(node):
        return None
    return node
