"""leaf_cell.admission.Admission: at most ``limit`` holders, the rest served in arrival order,
with visible queue positions; cancelling a waiter frees nothing it did not hold, cancelling a
holder frees its slot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from leaf_cell.admission import Admission

HANG_GUARD = 10.0


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(scenario(), HANG_GUARD)

    return asyncio.run(guarded())


async def settle() -> None:
    """Lets every runnable task take its next steps."""
    for _ in range(5):
        await asyncio.sleep(0)


class Holders:
    """Tasks that each take a slot and hold it until released by the test."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.admitted: list[str] = []
        self._release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, key: str) -> asyncio.Task[None]:
        self._release[key] = asyncio.Event()

        async def hold() -> None:
            async with self.admission.slot(key):
                self.admitted.append(key)
                await self._release[key].wait()

        self.tasks[key] = asyncio.get_running_loop().create_task(hold(), name=key)
        return self.tasks[key]

    async def release(self, key: str) -> None:
        self._release[key].set()
        await self.tasks[key]


def test_slots_are_granted_in_arrival_order_with_positions_1_2_3() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        h = Holders(admission)
        arrivals = ["op-9", "op-3", "op-7", "op-1"]  # arrival order, not key order, counts
        for key in arrivals:
            h.start(key)
            await settle()
        assert h.admitted == ["op-9"]
        assert [admission.position(k) for k in arrivals] == [0, 1, 2, 3]
        assert (admission.running, admission.queued) == (1, 3)
        await h.release("op-9")
        await settle()
        assert h.admitted == ["op-9", "op-3"]
        assert [admission.position(k) for k in arrivals[1:]] == [0, 1, 2]
        for key in arrivals[1:]:
            await h.release(key)
            await settle()
        assert h.admitted == arrivals
        assert (admission.running, admission.queued) == (0, 0)

    run(scenario)


def test_up_to_the_limit_run_at_once_and_only_the_rest_queue() -> None:
    async def scenario() -> None:
        admission = Admission(2)
        h = Holders(admission)
        for key in ("a", "b", "c"):
            h.start(key)
        await settle()
        assert h.admitted == ["a", "b"]
        assert admission.position("c") == 1
        await h.release("b")
        await settle()
        assert h.admitted == ["a", "b", "c"]
        assert admission.running == 2
        await h.release("a")
        await h.release("c")
        assert admission.running == 0

    run(scenario)


def test_position_of_an_unknown_or_admitted_key_is_zero() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        h = Holders(admission)
        h.start("a")
        await settle()
        assert admission.position("a") == 0
        assert admission.position("nobody") == 0
        await h.release("a")

    run(scenario)


def test_cancelling_a_waiter_frees_no_slot_and_keeps_the_order_of_the_rest() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        h = Holders(admission)
        for key in ("a", "b", "c"):
            h.start(key)
            await settle()
        h.tasks["b"].cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.tasks["b"]
        # "a" still holds the only slot: nobody else got in, and "c" moved up.
        assert h.admitted == ["a"]
        assert (admission.running, admission.queued) == (1, 1)
        assert admission.position("c") == 1 and admission.position("b") == 0
        h.start("d")
        await settle()
        assert h.admitted == ["a"] and admission.position("d") == 2
        await h.release("a")
        await settle()
        assert h.admitted == ["a", "c"]
        await h.release("c")
        await settle()
        await h.release("d")
        assert h.admitted == ["a", "c", "d"]
        assert (admission.running, admission.queued) == (0, 0)

    run(scenario)


def test_cancelling_a_holder_releases_its_slot_to_the_next_waiter() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        h = Holders(admission)
        h.start("a")
        await settle()
        h.start("b")
        await settle()
        h.tasks["a"].cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.tasks["a"]
        await settle()
        assert h.admitted == ["a", "b"]
        assert (admission.running, admission.queued) == (1, 0)
        await h.release("b")
        assert admission.running == 0

    run(scenario)


def test_waiter_admitted_and_cancelled_in_the_same_tick_gives_its_slot_back() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        h = Holders(admission)
        release_a = asyncio.Event()

        async def hold_a() -> None:
            async with admission.slot("a"):
                h.admitted.append("a")
                await release_a.wait()
            # Leaving the slot handed it to "b"; "b" is cancelled before it runs again, so it
            # must pass the slot on rather than keep it.
            assert admission.position("b") == 0 and admission.running == 1
            h.tasks["b"].cancel()

        a = asyncio.get_running_loop().create_task(hold_a())
        await settle()
        h.start("b")
        h.start("c")
        await settle()
        release_a.set()
        await a
        with pytest.raises(asyncio.CancelledError):
            await h.tasks["b"]
        await settle()
        assert h.admitted == ["a", "c"]
        assert (admission.running, admission.queued) == (1, 0)
        await h.release("c")
        assert admission.running == 0

    run(scenario)


def test_an_exception_in_the_holder_releases_the_slot() -> None:
    async def scenario() -> None:
        admission = Admission(1)
        with pytest.raises(RuntimeError):
            async with admission.slot("a"):
                raise RuntimeError("boom")
        assert admission.running == 0
        async with admission.slot("b"):
            assert admission.running == 1

    run(scenario)
