"""InventoryService.WatchInventory: the leaf's inventory as a resumable stream for the top cell.

The change log is the ``node_events`` table: every inventory write (create, update, delete,
state and power changes, claims) appends an event in the same transaction, and the event id is
the cell's revision. A subscriber that knows nothing (revision 0) first gets a snapshot in
chunks, then the nodes touched by each later batch of events as whole summaries — so applying
an update is idempotent and a reconnecting top simply resumes from the last revision it applied.
Ids are read with a small overlap: on PostgreSQL a transaction can commit a lower id after a
higher one became visible, and re-sending a few summaries costs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select

from common.errors import InvalidArgument
from leaf_cell.db.models import EventRow, NodeRow, PortRow, TraitRow
from leaf_cell.events import EventBus
from rackcells.v1 import inventory_service_pb2, node_pb2

__all__ = ["watch_inventory"]

_NODES = cast(Table, NodeRow.__table__)
_PORTS = cast(Table, PortRow.__table__)
_TRAITS = cast(Table, TraitRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_CHUNK = 1000
_OVERLAP = 16


def _summaries(
    engine: Engine, node_ids: Sequence[str] | None, after_pk: int = 0
) -> list[inventory_service_pb2.NodeSummary]:
    """Summaries of the named nodes, or of the next chunk of all nodes after ``after_pk``."""
    stmt = select(
        _NODES.c.id,
        _NODES.c.node_id,
        _NODES.c.uid,
        _NODES.c.resource_class,
        _NODES.c.provision_state,
        _NODES.c.maintenance,
        _NODES.c.allocation,
    )
    if node_ids is None:
        stmt = stmt.where(_NODES.c.id > after_pk).order_by(_NODES.c.id).limit(_CHUNK)
    else:
        stmt = stmt.where(_NODES.c.node_id.in_(list(node_ids)))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        if not rows:
            return []
        pks = [r.id for r in rows]
        traits: dict[int, list[str]] = {}
        for pk, trait in conn.execute(
            select(_TRAITS.c.node_pk, _TRAITS.c.trait).where(_TRAITS.c.node_pk.in_(pks))
        ):
            traits.setdefault(pk, []).append(trait)
        macs: dict[int, list[str]] = {}
        for pk, mac in conn.execute(
            select(_PORTS.c.node_pk, _PORTS.c.mac).where(_PORTS.c.node_pk.in_(pks))
        ):
            macs.setdefault(pk, []).append(mac)
    return [
        inventory_service_pb2.NodeSummary(
            node_id=r.node_id,
            uid=r.uid,
            resource_class=r.resource_class,
            traits=sorted(traits.get(r.id, ())),
            provision_state=node_pb2.ProvisionState.Value("PROVISION_STATE_" + r.provision_state),
            maintenance=r.maintenance,
            allocation=r.allocation,
            macs=macs.get(r.id, ()),
        )
        for r in rows
    ]


def _snapshot_chunk(engine: Engine, after_pk: int) -> tuple[list[Any], int]:
    chunk = _summaries(engine, None, after_pk)
    if not chunk:
        return [], after_pk
    with engine.connect() as conn:
        last_pk = conn.execute(
            select(_NODES.c.id).where(_NODES.c.node_id == chunk[-1].node_id)
        ).scalar_one()
    return chunk, int(last_pk)


def _changes(engine: Engine, after: int) -> tuple[list[str], int]:
    """Node ids touched by events after ``after`` (with overlap) and the newest revision."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(_EVENTS.c.id, _EVENTS.c.node_id)
            .where(_EVENTS.c.id > max(0, after - _OVERLAP))
            .order_by(_EVENTS.c.id)
            .limit(_CHUNK * 5)
        ).all()
    fresh = [r for r in rows if r.id > after]
    if not fresh:
        return [], after
    touched = sorted({r.node_id for r in rows})
    return touched, max(r.id for r in fresh)


def _latest(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(_EVENTS.c.id))).scalar() or 0)


async def watch_inventory(
    req: inventory_service_pb2.WatchInventoryRequest,
    cell: str,
    engine: Engine,
    bus: EventBus,
    run_db: Callable[..., Any],
    *,
    version: str,
    heartbeat: float = 2.0,
) -> AsyncIterator[inventory_service_pb2.InventoryUpdate]:
    name = f"cells/{cell}"
    if req.since_revision < 0:
        raise InvalidArgument.field("since_revision", "must not be negative")
    latest = await run_db(_latest, engine)
    after = req.since_revision
    if after == 0 or after > latest:
        # Snapshot at `latest`: changes racing with it are re-sent by the replay below.
        after_pk, first = 0, True
        while True:
            chunk, after_pk = await run_db(_snapshot_chunk, engine, after_pk)
            done = len(chunk) < _CHUNK
            yield inventory_service_pb2.InventoryUpdate(
                cell=name,
                revision=latest,
                reset=first,
                upserts=chunk,
                snapshot_complete=done,
                version=version,
            )
            first = False
            if done:
                break
        after = latest
    while True:
        seen = bus.generation
        touched, newest = await run_db(_changes, engine, after)
        if touched:
            upserts = await run_db(_summaries, engine, touched)
            present = {s.node_id for s in upserts}
            yield inventory_service_pb2.InventoryUpdate(
                cell=name,
                revision=newest,
                upserts=upserts,
                deleted=[n for n in touched if n not in present],
                version=version,
            )
            after = newest
            continue
        await bus.wait(heartbeat, since=seen)
        if await run_db(_latest, engine) == after:
            yield inventory_service_pb2.InventoryUpdate(cell=name, revision=after, version=version)
