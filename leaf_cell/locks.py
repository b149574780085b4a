"""The node lock: a lease stored in the node's row.

Taking the lock is one conditional ``UPDATE … WHERE lock_holder IS NULL OR lock_expires < now``:
whoever's update matches the row holds it, with no separate lock table and no read-then-write
race, on SQLite and PostgreSQL alike. The holder, purpose and start are visible in the API so an
operator can see who is working on a node. A lease that is not renewed runs out, so a crashed
task cannot pin a node forever; a conductor that restarts releases its own leases at once
(:meth:`NodeLocks.release_all_held_by_me`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Engine, Table, or_, select, update

from common.errors import NodeLocked, NotFound
from leaf_cell.db.models import NodeRow

__all__ = ["Lease", "NodeLocks"]

_NODES = cast(Table, NodeRow.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Lease:
    """Proof of holding a node's lock; ``since`` tells this lease apart from a later one."""

    node_id: str
    holder: str
    purpose: str
    since: datetime


class NodeLocks:
    """Leases on one cell's nodes, all taken in the name of one conductor (``holder``)."""

    def __init__(
        self,
        engine: Engine,
        cell: str,
        holder: str,
        lease: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._engine = engine
        self._cell = cell
        self.holder = holder
        self._lease = lease
        self._clock = clock

    def acquire(self, node_id: str, purpose: str) -> Lease:
        """Takes the lock or raises NodeLocked naming the current holder (NotFound if no node)."""
        now = self._clock()
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == node_id)
                .where(or_(_NODES.c.lock_holder.is_(None), _NODES.c.lock_expires < now))
                .values(
                    lock_holder=self.holder,
                    lock_purpose=purpose,
                    lock_since=now,
                    lock_expires=now + self._lease,
                )
            )
            if result.rowcount == 1:
                return Lease(node_id, self.holder, purpose, now)
            row = conn.execute(
                select(_NODES.c.lock_holder, _NODES.c.lock_purpose, _NODES.c.lock_since).where(
                    _NODES.c.node_id == node_id
                )
            ).one_or_none()
        name = f"cells/{self._cell}/nodes/{node_id}"
        if row is None:
            raise NotFound(f"node {name} not found")
        since = row.lock_since.isoformat(timespec="seconds") if row.lock_since else "?"
        raise NodeLocked(
            name=name,
            holder=row.lock_holder,
            purpose=row.lock_purpose,
            since=since,
            metadata={"holder": row.lock_holder or "", "purpose": row.lock_purpose or ""},
        )

    def renew(self, lease: Lease) -> bool:
        """Extends the lease; False if it was lost (expired and taken by someone else)."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == lease.node_id)
                .where(_NODES.c.lock_holder == lease.holder)
                .where(_NODES.c.lock_since == lease.since)
                .values(lock_expires=self._clock() + self._lease)
            )
        return result.rowcount == 1

    def release(self, lease: Lease) -> None:
        """Releases the lease if it is still ours; a lost lease is left to its new holder."""
        with self._engine.begin() as conn:
            conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == lease.node_id)
                .where(_NODES.c.lock_holder == lease.holder)
                .where(_NODES.c.lock_since == lease.since)
                .values(lock_holder=None, lock_purpose=None, lock_since=None, lock_expires=None)
            )

    def release_all_held_by_me(self) -> int:
        """On conductor start: drop every lease this conductor held before it restarted."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_NODES)
                .where(_NODES.c.lock_holder == self.holder)
                .values(lock_holder=None, lock_purpose=None, lock_since=None, lock_expires=None)
            )
        return result.rowcount

    @contextmanager
    def held(self, node_id: str, purpose: str) -> Iterator[Lease]:
        """``with locks.held(node, "power on"):`` — acquire, run, always release."""
        lease = self.acquire(node_id, purpose)
        try:
            yield lease
        finally:
            self.release(lease)
