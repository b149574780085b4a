"""The cell directory: which leaf cells the top knows, how to reach them and whether they are up.

Membership comes from the registry (ZooKeeper or a static list). Reachability is *observed*:

* an inventory stream that delivers updates (heartbeats included, every ~2 s) keeps a cell UP;
  a broken or silent stream marks it DOWN until it delivers again (:meth:`heartbeat`,
  :meth:`mark_down`). This is the only signal with ZooKeeper, whose ephemeral znodes already
  say the process lives;
* with a static registry nothing else would notice a hung leaf, so the directory also runs a
  ``grpc.health.v1`` Check against every leaf and marks it DOWN when no check has succeeded
  for ``down_after`` seconds. A passing health check never clears a broken stream: the cell
  comes back UP when its stream delivers again, so a leaf that answers health checks but not
  WatchInventory does not flap.

A cell whose registration vanished (its znode is gone, or it was dropped from the static list)
stays listed as DOWN ("not registered") for ``forget_after`` seconds, so its nodes keep their
MACs reserved and a parent scheduler sees the cell go stale instead of silently shrinking;
after that it is forgotten together with its inventory. Cells that the stored inventory knows
but the registry does not (yet) list count as vanished at start-up.

Scheduling-disabled is operator state, not derived: it is written through to the top's
database and applied again after a restart. A disabled cell reports DISABLED while it is
reachable (DOWN wins) and gets no new allocations; named calls still reach it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.errors import NotFound, Unavailable
from rackcells.v1 import cell_service_pb2
from top_cell.inventory_db import TopStore

__all__ = [
    "CHANNEL_OPTIONS",
    "CellDirectory",
    "CellInfoLike",
    "CellRegistry",
    "CellStateValue",
    "StaticCell",
]

log = logging.getLogger(__name__)

CellStateValue: TypeAlias = cell_service_pb2.CellState.ValueType
UP = cell_service_pb2.CELL_STATE_UP
DOWN = cell_service_pb2.CELL_STATE_DOWN
DISABLED = cell_service_pb2.CELL_STATE_DISABLED
UNKNOWN = cell_service_pb2.CELL_STATE_UNSPECIFIED

# Reconnect quickly after a leaf restarts: gRPC's default backoff grows to two minutes, during
# which every call to the cell would fail at once.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class CellInfoLike(Protocol):
    """What the directory needs of a registry entry (``top_cell.registry.CellInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def version(self) -> str: ...


class CellRegistry(Protocol):
    """The registry as the directory uses it (``top_cell.registry.Registry``)."""

    def cells(self) -> Mapping[str, CellInfoLike]: ...
    def subscribe(self, callback: Callable[[Mapping[str, CellInfoLike]], None]) -> None: ...
    @property
    def static(self) -> bool: ...


@dataclass(frozen=True)
class StaticCell:
    """A cell the directory knows only from the stored inventory: no endpoint yet."""

    name: str
    endpoint: str = ""
    version: str = ""


@dataclass(slots=True)
class _Cell:
    info: CellInfoLike
    registered: bool = True
    gone_since: float = 0.0
    last_heartbeat: float | None = None
    stream_seen: bool = False
    """Whether the inventory stream ever delivered: only then is the cell UP (cell_service)."""
    stream_down: str | None = None
    health_down: str | None = None
    health_ok_at: float = 0.0
    disabled: bool = False
    disabled_reason: str = ""
    version: str = ""
    channel: grpc.aio.Channel | None = None
    channel_endpoint: str = ""


class CellDirectory:
    """The cells the top knows, their state, flags and one gRPC channel each.

    The directory does not start or stop the registry: whoever owns the registry does. Call
    :meth:`start` after the registry is constructed (it may or may not be started yet; the
    directory follows its callbacks either way).
    """

    def __init__(
        self,
        registry: CellRegistry,
        *,
        store: TopStore | None = None,
        health_interval: float = 2.0,
        health_timeout: float = 1.0,
        down_after: float = 5.0,
        forget_after: float = 900.0,
    ) -> None:
        self._registry = registry
        self._store = store
        self._health_interval = health_interval
        self._health_timeout = min(health_timeout, health_interval)
        self._down_after = down_after
        self._forget_after = forget_after
        self._cells: dict[str, _Cell] = {}
        self._flags: dict[str, tuple[bool, str]] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the flags, follows the registry and starts the background checks."""
        if self._store is not None:
            self._flags = await asyncio.to_thread(self._store.load_flags)
        for name, c in self._cells.items():  # remembered before start
            self._apply_flags(name, c)
        self._registry.subscribe(self._on_membership)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping(), name="cell housekeeping"))
        if self._registry.static:
            self._tasks.append(loop.create_task(self._health_loop(), name="cell health checks"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        channels = [c.channel for c in self._cells.values() if c.channel is not None]
        for cell in self._cells.values():
            cell.channel = None
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    def remember(self, cell: str) -> None:
        """Adds a cell known only from stored data; unless the registry lists it, it counts as
        vanished now and is forgotten after ``forget_after``."""
        if cell in self._cells:
            return
        c = self._cells[cell] = _Cell(StaticCell(cell), registered=False)
        c.gone_since = time.monotonic()
        self._apply_flags(cell, c)
        self._notify(cell)

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(cell)`` on the loop whenever a cell appears, vanishes, is
        forgotten, changes endpoint, state or flags."""
        self._callbacks.append(callback)

    # -- queries ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._cells)

    def known(self, cell: str) -> bool:
        return cell in self._cells

    def registered(self, cell: str) -> bool:
        """Whether the registry lists the cell now (a vanished cell is kept for a while)."""
        c = self._cells.get(cell)
        return c is not None and c.registered

    def info(self, cell: str) -> CellInfoLike:
        return self._get(cell).info

    def state(self, cell: str) -> CellStateValue:
        c = self._get(cell)
        if self._down_reason(c) is not None:
            return DOWN
        if c.last_heartbeat is None or not c.stream_seen:
            return UNKNOWN
        return DISABLED if c.disabled else UP

    def down_reason(self, cell: str) -> str | None:
        return self._down_reason(self._get(cell))

    def is_reachable(self, cell: str) -> bool:
        return self.state(cell) in (UP, DISABLED)

    def schedulable(self, cell: str) -> bool:
        """Up and not disabled: may receive new allocations."""
        return self.state(cell) == UP

    def last_heartbeat(self, cell: str) -> float | None:
        """Wall-clock time (seconds) the leaf last answered, or None if it never did."""
        return self._get(cell).last_heartbeat

    def scheduling(self, cell: str) -> tuple[bool, str]:
        """(scheduling disabled, reason)."""
        c = self._get(cell)
        return c.disabled, c.disabled_reason

    def version(self, cell: str) -> str:
        """The version the leaf registered with, else the one its stream reports."""
        c = self._get(cell)
        return c.info.version or c.version

    def endpoint(self, cell: str) -> str | None:
        """Where a call for the cell goes: its endpoint unless it is unknown or DOWN."""
        c = self._cells.get(cell)
        if c is None or not c.info.endpoint or self._down_reason(c) is not None:
            return None
        return c.info.endpoint

    def channel(self, cell: str, *, allow_down: bool = False) -> grpc.aio.Channel:
        """The cell's channel. Raises NotFound for an unknown cell and Unavailable for a DOWN
        one (unless ``allow_down``: the inventory stream needs it to find out it is back)."""
        c = self._get(cell)
        if not allow_down:
            reason = self._down_reason(c)
            if reason is not None:
                raise Unavailable(f"cell {cell} is down: {reason}")
        if not c.info.endpoint:
            raise Unavailable(f"cell {cell} is down: no endpoint registered")
        if c.channel is None or c.channel_endpoint != c.info.endpoint:
            self._close_channel(c)
            c.channel = grpc.aio.insecure_channel(c.info.endpoint, options=CHANNEL_OPTIONS)
            c.channel_endpoint = c.info.endpoint
        return c.channel

    # -- signals ----------------------------------------------------------------------------

    def heartbeat(self, cell: str, *, version: str = "") -> None:
        """The cell's inventory stream delivered: the cell is up."""
        c = self._cells.get(cell)
        if c is None:
            return
        before = self._state_of(c)
        c.last_heartbeat = time.time()
        c.stream_seen = True
        c.stream_down = None
        if version:
            c.version = version
        self._changed_if(cell, c, before)

    def mark_down(self, cell: str, reason: str) -> None:
        """The cell's inventory stream broke or went silent: DOWN until it delivers again."""
        c = self._cells.get(cell)
        if c is None:
            return
        before = self._state_of(c)
        c.stream_down = reason
        self._changed_if(cell, c, before)

    async def set_scheduling(self, cell: str, disabled: bool, reason: str) -> None:
        """Takes the cell out of (or back into) scheduling; persisted before it takes effect."""
        c = self._get(cell)
        if self._store is not None:
            await asyncio.to_thread(self._store.save_flags, cell, disabled, reason)
        self._flags[cell] = (disabled, reason)
        c.disabled, c.disabled_reason = disabled, reason
        self._notify(cell)

    # -- internals --------------------------------------------------------------------------

    def _get(self, cell: str) -> _Cell:
        c = self._cells.get(cell)
        if c is None:
            raise NotFound(f"cell {cell} is not known")
        return c

    def _down_reason(self, c: _Cell) -> str | None:
        if not c.registered:
            return "not registered"
        return c.stream_down or c.health_down

    def _state_of(self, c: _Cell) -> tuple[str | None, bool, bool]:
        return self._down_reason(c), c.last_heartbeat is None or not c.stream_seen, c.disabled

    def _changed_if(self, cell: str, c: _Cell, before: tuple[str | None, bool, bool]) -> None:
        after = self._state_of(c)
        if (before[0] is None) != (after[0] is None) or before[1:] != after[1:]:
            if after[0] is not None:
                log.warning("cell %s is down: %s", cell, after[0])
            elif before[0] is not None:
                log.info("cell %s is up again", cell)
            self._notify(cell)

    def _notify(self, cell: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(cell)
            except Exception:
                log.exception("cell change callback failed for %s", cell)

    def _apply_flags(self, name: str, c: _Cell) -> None:
        c.disabled, c.disabled_reason = self._flags.get(name, (False, ""))

    def _close_channel(self, c: _Cell) -> None:
        if c.channel is None:
            return
        channel, c.channel, c.channel_endpoint = c.channel, None, ""
        # Calls in flight on the old endpoint get a moment to finish.
        task = asyncio.get_running_loop().create_task(channel.close(grace=5.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _on_membership(self, members: Mapping[str, CellInfoLike]) -> None:
        now = time.monotonic()
        changed: list[str] = []
        for name, info in members.items():
            c = self._cells.get(name)
            if c is None:
                c = self._cells[name] = _Cell(info, health_ok_at=now)
                self._apply_flags(name, c)
                log.info("cell %s registered at %s", name, info.endpoint)
                changed.append(name)
                continue
            if not c.registered:
                c.registered, c.health_ok_at, c.health_down = True, now, None
                changed.append(name)
            if info.endpoint != c.info.endpoint:
                log.info("cell %s moved to %s", name, info.endpoint)
                self._close_channel(c)
                changed.append(name)
            c.info = info
        for name, c in self._cells.items():
            if c.registered and name not in members:
                log.warning("cell %s is no longer registered", name)
                c.registered, c.gone_since = False, now
                self._close_channel(c)
                changed.append(name)
        for name in dict.fromkeys(changed):
            self._notify(name)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(min(self._forget_after, 5.0))
            now = time.monotonic()
            for name, c in list(self._cells.items()):
                if not c.registered and now - c.gone_since >= self._forget_after:
                    log.warning(
                        "forgetting cell %s: unregistered for %.0f s", name, self._forget_after
                    )
                    self._close_channel(c)
                    del self._cells[name]
                    self._notify(name)

    async def _health_loop(self) -> None:
        while True:
            names = [n for n, c in self._cells.items() if c.registered]
            await asyncio.gather(*(self._check(n) for n in names), return_exceptions=True)
            await asyncio.sleep(self._health_interval)

    async def _check(self, cell: str) -> None:
        try:
            channel = self.channel(cell, allow_down=True)
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self._health_timeout
            )
            serving = health_pb2.HealthCheckResponse
            problem = (
                None
                if reply.status == serving.SERVING
                else f"health check says {serving.ServingStatus.Name(reply.status)}"
            )
        except grpc.aio.AioRpcError as exc:
            problem = f"health check failed: {exc.code().name}"
        except (NotFound, Unavailable) as exc:
            problem = str(exc)
        c = self._cells.get(cell)
        if c is None or not c.registered:
            return
        before = self._state_of(c)
        now = time.monotonic()
        if problem is None:
            c.health_ok_at, c.health_down = now, None
            c.last_heartbeat = time.time()
        elif now - c.health_ok_at >= self._down_after:
            c.health_down = problem
        self._changed_if(cell, c, before)
