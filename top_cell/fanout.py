"""Scatter-gather over leaf cells: one call per cell, concurrently, each bounded in time.

The top cell asks many leaves at once for cross-cell answers (a listing over ``cells/-``, a
merged watch). One slow or dead leaf must never fail the whole call or hold it past the
caller's deadline, so :func:`scatter_gather` never raises for a cell's failure: it returns one
typed result per cell, :class:`Ok`, :class:`Failed` or :class:`TimedOut`, and the caller decides
what a missing cell means (usually: list it in ``unreachable``, AIP-217).

The time budget of each call is the smaller of the configured fan-out timeout and what is left
of the caller's own deadline minus a safety margin (:func:`fanout_budget`), so that the top has
time to merge and answer before its caller gives up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

import grpc

from common.errors import RackcellsError

__all__ = [
    "CellResult",
    "Failed",
    "Ok",
    "TimedOut",
    "fanout_budget",
    "scatter_gather",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Time kept back from the caller's deadline for merging and answering.
DEFAULT_MARGIN = 0.1


@dataclass(frozen=True)
class Ok(Generic[T]):
    """The cell answered."""

    value: T


@dataclass(frozen=True)
class Failed:
    """The cell (or the way to it) answered with an error status."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class TimedOut:
    """The cell did not answer within the budget."""

    seconds: float


CellResult: TypeAlias = Ok[T] | Failed | TimedOut


def fanout_budget(
    remaining: float | None, configured: float, margin: float = DEFAULT_MARGIN
) -> float:
    """Seconds each cell gets: the configured timeout, cut to the caller's deadline.

    ``remaining`` is ``context.time_remaining()`` (None when the caller set no deadline). When
    the deadline is close, the margin shrinks to a tenth of what is left rather than leaving
    nothing at all for the cells.
    """
    if remaining is None:
        return configured
    keep = min(margin, remaining / 10)
    return max(0.0, min(configured, remaining - keep))


def _classify(exc: BaseException, timeout: float) -> Failed | TimedOut:
    if isinstance(exc, TimeoutError):
        return TimedOut(timeout)
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TimedOut(timeout)
        return Failed(exc.code(), exc.details() or exc.code().name)
    if isinstance(exc, RackcellsError):
        return Failed(exc.code, exc.message)
    log.warning("fan-out call failed unexpectedly", exc_info=exc)
    return Failed(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def _one(
    cell: str, call: Callable[[str, float], Awaitable[T]], timeout: float
) -> CellResult[T]:
    try:
        # The call gets the budget too, so that it can pass it on as its gRPC deadline and the
        # leaf stops working when the top stops waiting; wait_for guards calls that ignore it.
        value = await asyncio.wait_for(call(cell, timeout), timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _classify(exc, timeout)
    return Ok(value)


async def scatter_gather(
    cells: Iterable[str],
    call: Callable[[str, float], Awaitable[T]],
    *,
    timeout: float,
) -> dict[str, CellResult[T]]:
    """Runs ``call(cell, timeout)`` for every cell concurrently; never raises for a cell.

    Returns one result per cell, in the order the cells were given. Only the cancellation of the
    caller itself propagates (and cancels every outstanding call).
    """
    names = list(dict.fromkeys(cells))
    if not names:
        return {}
    results = await asyncio.gather(*(_one(cell, call, timeout) for cell in names))
    return dict(zip(names, results, strict=True))
