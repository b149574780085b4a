"""Node events for watchers: a wake-up signal across threads, and the stream behind WatchNodes.

Events are rows of ``node_events`` whose id is the cell's revision. Writers (database threads)
call :meth:`EventBus.notify` after committing; each WatchNodes stream sleeps on the bus and, when
woken, reads the rows after the last revision it sent. A slow watcher therefore never holds
memory for events it has not read, and a client that reconnects resumes from its revision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table, func, select

from common.errors import InvalidArgument, NotFound
from common.names import ALL_CELLS, parse_cell, parse_node_name
from leaf_cell.convert import timestamp
from leaf_cell.db.models import EventRow, NodeRow
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = ["EventBus", "watch_nodes"]

T = TypeVar("T")
_EVENTS = cast(Table, EventRow.__table__)
_NODES = cast(Table, NodeRow.__table__)
_BATCH = 500


class EventBus:
    """Wakes every waiting watcher when new events were committed (callable from any thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._changed: asyncio.Event | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    def notify(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        assert self._changed is not None
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def generation(self) -> int:
        """Counts notifications; take it before reading so :meth:`wait` cannot miss one."""
        return self._generation

    async def wait(self, timeout: float, since: int | None = None) -> None:
        """Returns when events arrive or after ``timeout`` seconds.

        With ``since`` (a :attr:`generation` taken before the caller last read the log), a
        notification that came while the caller was reading returns at once instead of being
        lost until the next heartbeat.
        """
        assert self._changed is not None
        if since is not None and since != self._generation:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


def _read(
    engine: Engine, cell: str, after: int, node_ids: list[str] | None
) -> list[node_service_pb2.NodeEvent]:
    stmt = (
        select(
            _EVENTS,
            _NODES.c.provision_state.label("node_state"),
            _NODES.c.power_state.label("node_power"),
        )
        .select_from(_EVENTS.outerjoin(_NODES, _NODES.c.node_id == _EVENTS.c.node_id))
        .where(_EVENTS.c.id > after)
        .order_by(_EVENTS.c.id)
        .limit(_BATCH)
    )
    if node_ids is not None:
        stmt = stmt.where(_EVENTS.c.node_id.in_(node_ids))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    events = []
    for r in rows:
        event = node_service_pb2.NodeEvent(
            revision=r.id,
            node=f"cells/{cell}/nodes/{r.node_id}",
            time=timestamp(r.time),
            kind=r.kind,
            detail=r.detail,
            phase=r.phase,
            percent=r.percent,
        )
        if r.node_state:
            event.provision_state = node_pb2.ProvisionState.Value("PROVISION_STATE_" + r.node_state)
            event.power_state = node_pb2.PowerState.Value("POWER_STATE_" + r.node_power)
        events.append(event)
    return events


def _latest(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(_EVENTS.c.id))).scalar() or 0)


async def watch_nodes(
    req: node_service_pb2.WatchNodesRequest,
    cell: str,
    engine: Engine,
    bus: EventBus,
    run_db: Callable[..., Any],
    *,
    heartbeat: float = 15.0,
) -> AsyncIterator[node_service_pb2.NodeEvent]:
    """The WatchNodes stream: replay after ``since_revision``, then follow new events forever."""
    parent = parse_cell(req.parent, allow_all=True)
    if parent not in (cell, ALL_CELLS):
        raise NotFound(f"cell {parent} is not served here (this is cell {cell})")
    node_ids: list[str] | None = None
    if req.names:
        node_ids = []
        for i, name in enumerate(req.names):
            parsed = parse_node_name(name, f"names[{i}]")
            if parsed.cell == cell:
                node_ids.append(parsed.node)
    if req.since_revision < -1:
        raise InvalidArgument.field("since_revision", "must be -1, 0 or a revision")
    after = await run_db(_latest, engine) if req.since_revision == -1 else req.since_revision
    while True:
        seen = bus.generation
        batch = await run_db(_read, engine, cell, after, node_ids)
        for event in batch:
            yield event
            after = event.revision
        if len(batch) < _BATCH:
            await bus.wait(heartbeat, since=seen)
