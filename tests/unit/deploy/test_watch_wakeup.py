"""WatchNodes must not sleep through an event committed while it was reading.

``leaf_cell.events.watch_nodes`` reads the rows after its revision, sends them, then sleeps on
the :class:`~leaf_cell.events.EventBus` until a writer notifies it (or a heartbeat passes). A
writer that commits and notifies *while the read is running* must still wake it; otherwise the
event waits for the next heartbeat (15 s in the leaf). The read is replaced by a fake here so the
interleaving is exact; the heartbeat is an hour, and the asyncio timeout only guards the hang.
"""

from __future__ import annotations

import asyncio
from typing import Any

from leaf_cell import events
from leaf_cell.events import EventBus, watch_nodes
from rackcells.v1 import node_service_pb2

HANG_GUARD = 5.0


def _event(revision: int) -> node_service_pb2.NodeEvent:
    return node_service_pb2.NodeEvent(revision=revision, node="cells/rack-1/nodes/n1", kind="x")


async def _first_event_after_a_concurrent_commit() -> node_service_pb2.NodeEvent:
    bus = EventBus()
    bus.bind_loop(asyncio.get_running_loop())
    committed: list[node_service_pb2.NodeEvent] = []
    reads = 0

    async def run_db(fn: Any, *args: Any) -> Any:
        nonlocal reads
        assert fn is events._read
        after = args[2]
        snapshot = [e for e in committed if e.revision > after]
        reads += 1
        if reads == 1:
            # A writer commits revision 1 just after this read took its snapshot, and notifies
            # the bus from its thread before the watcher goes back to sleep.
            committed.append(_event(1))
            bus.notify()
            await asyncio.sleep(0)  # the loop runs the notification's callback
            await asyncio.sleep(0)
        return snapshot

    stream = watch_nodes(
        node_service_pb2.WatchNodesRequest(parent="cells/rack-1", since_revision=0),
        "rack-1",
        None,  # type: ignore[arg-type]  # the fake run_db never touches an engine
        bus,
        run_db,
        heartbeat=3600.0,
    )
    try:
        return await asyncio.wait_for(stream.__anext__(), HANG_GUARD)
    finally:
        await stream.aclose()


def test_event_committed_during_a_read_wakes_the_watcher_without_waiting_for_a_heartbeat() -> None:
    try:
        event = asyncio.run(_first_event_after_a_concurrent_commit())
    except TimeoutError:
        raise AssertionError(
            "the watcher slept through a notification that arrived during its read "
            "(lost wake-up in EventBus.wait: it only waits for notifications after it is called)"
        ) from None
    assert event.revision == 1


async def _notify_then_wait() -> bool:
    bus = EventBus()
    bus.bind_loop(asyncio.get_running_loop())
    waiter = asyncio.ensure_future(bus.wait(3600.0))
    await asyncio.sleep(0)
    bus.notify()
    try:
        await asyncio.wait_for(waiter, HANG_GUARD)
    except TimeoutError:
        return False
    return True


def test_notify_wakes_a_watcher_that_is_already_waiting() -> None:
    assert asyncio.run(_notify_then_wait())
