"""The conductor: the leaf's asyncio task runner for work on BMCs and node states.

It owns two bounded thread pools — one for database work, one for blocking BMC calls — so
that a rack of slow BMCs can never starve the API of database threads, and neither pool can
grow without bound. On start it recovers from an unclean stop: it releases the leases it held,
moves nodes left in transient states to their failure states, and ends the operations that
were running. Background tasks (an operation's work, the power sweep) are tracked so that a
stop cancels and awaits them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from leaf_cell import states
from leaf_cell.config import LeafConfig
from leaf_cell.drivers import load_driver
from leaf_cell.drivers.base import BmcAccess, Driver
from leaf_cell.locks import NodeLocks
from leaf_cell.node_status import StatusStore
from leaf_cell.nodes import NodeStore
from leaf_cell.operations import OperationStore

__all__ = ["Conductor"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Conductor:
    config: LeafConfig
    nodes: NodeStore
    status: StatusStore
    locks: NodeLocks
    operations: OperationStore
    db_executor: ThreadPoolExecutor
    driver_loader: Callable[[str], Driver] = load_driver

    def __post_init__(self) -> None:
        self.bmc_executor = ThreadPoolExecutor(
            max_workers=self.config.bmc_workers, thread_name_prefix="leaf-bmc"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drivers: dict[str, Driver] = {}

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs blocking database work in the database pool."""
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, fn, *args)

    async def bmc(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs a blocking BMC call in the BMC pool."""
        return await asyncio.get_running_loop().run_in_executor(self.bmc_executor, fn, *args)

    def driver(self, name: str) -> Driver:
        if name not in self._drivers:
            self._drivers[name] = self.driver_loader(name)
        return self._drivers[name]

    async def forget_bmc(self, bmc: BmcAccess) -> None:
        """Drops the driver's sessions with a BMC whose node changed credentials or left."""
        if bmc.driver in self._drivers:
            await self.bmc(self._drivers[bmc.driver].forget, bmc)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Starts a tracked background task; its failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def recover(self) -> None:
        """Cleans up after an unclean stop of this cell's previous conductor."""
        self.operations.bind_loop(asyncio.get_running_loop())
        released = await self.db(self.locks.release_all_held_by_me)
        moved = await self.db(self.status.fail_transient, states.TRANSIENT, states.failure_target)
        if moved:
            await self.db(
                self.status.add_events,
                [
                    (node_id, "recovered", f"{src.value} -> {dst.value} after conductor restart")
                    for node_id, src, dst in moved
                ],
            )
        ended = await self.db(
            self.operations.fail_unfinished, "the conductor restarted before the operation ended"
        )
        if released or moved or ended:
            log.warning(
                "recovered from an unclean stop: %d leases released, %d nodes moved to failed "
                "states, %d operations ended",
                released,
                len(moved),
                ended,
            )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for driver in self._drivers.values():
            await asyncio.get_running_loop().run_in_executor(self.bmc_executor, driver.close)
        self.bmc_executor.shutdown(wait=False, cancel_futures=True)
