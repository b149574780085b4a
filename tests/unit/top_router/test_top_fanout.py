"""scatter_gather: every cell concurrently, each bounded by the budget; a slow cell times out,
a failing one is reported with its status, and the call itself never raises or overruns."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from common.errors import NotFound, Unavailable
from top_cell.fanout import Failed, Ok, TimedOut, fanout_budget, scatter_gather


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def behave(cell: str, budget: float) -> str:
    if cell == "slow":
        await asyncio.sleep(30)
    if cell == "down":
        raise Unavailable("cell down is DOWN")
    if cell == "refused":
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    if cell == "deadline":
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    if cell == "unknown":
        raise NotFound("no cell unknown")
    if cell == "bug":
        raise RuntimeError("oops")
    await asyncio.sleep(0.01)
    return f"{cell} answered within {budget}"


def test_results_are_classified_per_cell_and_the_call_ends_on_time() -> None:
    cells = ["fast", "slow", "down", "refused", "deadline", "unknown", "bug"]
    started = time.monotonic()
    results = asyncio.run(scatter_gather(cells, behave, timeout=0.3))
    elapsed = time.monotonic() - started
    assert list(results) == cells
    assert results["fast"] == Ok("fast answered within 0.3")
    assert results["slow"] == TimedOut(0.3)
    assert results["deadline"] == TimedOut(0.3)
    assert results["down"] == Failed(grpc.StatusCode.UNAVAILABLE, "cell down is DOWN")
    assert results["refused"] == Failed(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert results["unknown"] == Failed(grpc.StatusCode.NOT_FOUND, "no cell unknown")
    bug = results["bug"]
    assert isinstance(bug, Failed) and bug.code == grpc.StatusCode.INTERNAL
    assert elapsed < 2.0, "a slow cell held the whole call"


def test_cells_run_concurrently() -> None:
    async def sleepy(cell: str, budget: float) -> str:
        await asyncio.sleep(0.2)
        return cell

    started = time.monotonic()
    results = asyncio.run(scatter_gather([f"c{i}" for i in range(20)], sleepy, timeout=5))
    assert all(isinstance(r, Ok) for r in results.values())
    assert time.monotonic() - started < 2.0


def test_no_cells_is_no_results() -> None:
    assert asyncio.run(scatter_gather([], behave, timeout=1)) == {}


def test_cancelling_the_caller_cancels_every_call() -> None:
    cancelled: list[str] = []

    async def waits(cell: str, budget: float) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(cell)
            raise
        return cell

    async def scenario() -> None:
        task = asyncio.create_task(scatter_gather(["a", "b"], waits, timeout=30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b"]


@pytest.mark.parametrize(
    ("remaining", "configured", "expected"),
    [
        (None, 5.0, 5.0),  # no caller deadline: the configured timeout
        (30.0, 5.0, 5.0),  # far deadline: the configured timeout
        (2.0, 5.0, 1.9),  # near deadline: what is left minus the margin
        (0.5, 5.0, 0.45),  # very near: the margin shrinks to a tenth
        (0.0, 5.0, 0.0),  # expired
    ],
)
def test_budget(remaining: float | None, configured: float, expected: float) -> None:
    assert fanout_budget(remaining, configured) == pytest.approx(expected)
