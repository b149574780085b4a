"""Deploy admission control and boot-storm pacing for one cell.

Deploys beyond ``deploy_concurrency`` wait in a FIFO queue instead of being refused (Ironic
rejects; a parent scheduler asking for 100 nodes should get 100 deploys, served in order). The
queue position of every waiting deploy is visible through its operation. Power-ons are paced by
a token bucket (``power_on_rate`` per second, bursts of the same size), so a rack does not draw
inrush current all at once and the DHCP server is not asked for 100 leases in one second.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["Admission", "PowerOnPacer"]


class Admission:
    """At most ``limit`` holders at once; the rest wait in arrival order."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running: set[str] = set()
        self._waiting: OrderedDict[str, asyncio.Future[None]] = OrderedDict()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def position(self, key: str) -> int:
        """1-based place in the queue, 0 once admitted (or unknown)."""
        for i, waiting in enumerate(self._waiting, start=1):
            if waiting == key:
                return i
        return 0

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Waits for a free slot in FIFO order and holds it for the block."""
        if len(self._running) < self._limit and not self._waiting:
            self._running.add(key)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            try:
                await future
            except asyncio.CancelledError:
                if self._waiting.pop(key, None) is None and key in self._running:
                    self._release(key)  # admitted and cancelled in the same tick
                raise
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self._running.discard(key)
        while self._waiting and len(self._running) < self._limit:
            next_key, future = self._waiting.popitem(last=False)
            if future.done():
                continue
            self._running.add(next_key)
            future.set_result(None)


class PowerOnPacer:
    """Token bucket: ``rate`` power-ons per second, bursts up to ``rate`` (0 disables pacing)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = max(rate, 1.0)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Waits for a power-on token; returns how long it waited."""
        if self._rate <= 0:
            return 0.0
        started = time.monotonic()
        async with self._lock:  # FIFO among waiters
            while True:
                now = time.monotonic()
                self._tokens = min(
                    max(self._rate, 1.0), self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return time.monotonic() - started
                await asyncio.sleep((1.0 - self._tokens) / self._rate)
