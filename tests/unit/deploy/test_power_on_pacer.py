"""leaf_cell.admission.PowerOnPacer: a token bucket of ``rate`` power-ons per second with bursts
of ``max(rate, 1)``; rate 0 never waits. A fake clock stands in for ``time.monotonic`` and the
pacer's sleeps advance it, so nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator

import pytest

from leaf_cell import admission as admission_module
from leaf_cell.admission import PowerOnPacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    # Only the admission module sees the fake: its ``time`` and its ``asyncio.sleep``.
    monkeypatch.setattr(admission_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(
        admission_module,
        "asyncio",
        types.SimpleNamespace(Lock=asyncio.Lock, sleep=fake.sleep),
    )
    yield fake


def _acquire(pacer: PowerOnPacer, times: int) -> list[float]:
    async def go() -> list[float]:
        return [await pacer.acquire() for _ in range(times)]

    return asyncio.run(go())


def test_rate_zero_never_waits(clock: FakeClock) -> None:
    pacer = PowerOnPacer(0)
    assert _acquire(pacer, 100) == [0.0] * 100
    assert clock.sleeps == []


def test_a_burst_of_rate_power_ons_goes_at_once_then_one_per_interval(clock: FakeClock) -> None:
    pacer = PowerOnPacer(2.0)
    waits = _acquire(pacer, 5)
    assert waits[:2] == [0.0, 0.0]  # the bucket starts full: a burst of 2
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5])  # then 2 per second
    assert sum(clock.sleeps) == pytest.approx(1.5)


def test_a_rate_below_one_still_allows_one_power_on_then_waits_a_whole_interval(
    clock: FakeClock,
) -> None:
    pacer = PowerOnPacer(0.5)
    assert _acquire(pacer, 3) == pytest.approx([0.0, 2.0, 2.0])


def test_idle_time_refills_the_bucket_only_up_to_one_burst(clock: FakeClock) -> None:
    pacer = PowerOnPacer(4.0)
    assert _acquire(pacer, 4) == [0.0] * 4
    clock.now += 3600.0  # an hour of quiet earns one burst, not 14,400 power-ons
    waits = _acquire(pacer, 6)
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == pytest.approx([0.25, 0.25])


def test_partial_refill_shortens_the_next_wait(clock: FakeClock) -> None:
    pacer = PowerOnPacer(1.0)
    assert _acquire(pacer, 1) == [0.0]
    clock.now += 0.75
    assert _acquire(pacer, 1) == pytest.approx([0.25])


def test_concurrent_waiters_are_paced_one_interval_apart_in_arrival_order(
    clock: FakeClock,
) -> None:
    async def go() -> list[tuple[str, float]]:
        pacer = PowerOnPacer(1.0)
        granted: list[tuple[str, float]] = []

        async def power_on(name: str) -> None:
            await pacer.acquire()
            granted.append((name, clock.now))

        await asyncio.gather(*(power_on(n) for n in ("n1", "n2", "n3")))
        return granted

    granted = asyncio.run(go())
    assert [n for n, _ in granted] == ["n1", "n2", "n3"]
    start = granted[0][1]
    assert [t - start for _, t in granted] == pytest.approx([0.0, 1.0, 2.0])
