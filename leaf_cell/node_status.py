"""The conductor's reads and writes of node status: power, provision state, BMC access, events.

API-driven edits go through :mod:`leaf_cell.nodes`; this module is for the conductor, which
writes a few columns at a time with plain UPDATEs. Changes a client should notice (power state,
provision state, last error) bump the row's revision and so its etag; bookkeeping such as the
power-sync time does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Engine, Table, bindparam, insert, select, update

from common.errors import NotFound
from leaf_cell.db.models import EventRow, NodeRow, PortRow
from leaf_cell.drivers.base import BmcAccess
from leaf_cell.secrets import SecretBox, SecretError
from leaf_cell.states import State

__all__ = ["NodeStatus", "StatusStore", "SyncTarget"]

_NODES = cast(Table, NodeRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_PORTS = cast(Table, PortRow.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NodeStatus:
    """What the conductor needs to know about a node before acting on it."""

    pk: int
    node_id: str
    provision_state: State
    power_state: str
    maintenance: bool
    locked: bool
    bmc: BmcAccess


@dataclass(frozen=True)
class SyncTarget:
    """A node the power sweep reads: its BMC and the power state on record."""

    pk: int
    node_id: str
    power_state: str
    enforce_ok: bool
    bmc: BmcAccess


class StatusStore:
    def __init__(
        self,
        engine: Engine,
        cell: str,
        secrets: SecretBox,
        clock: Callable[[], datetime] = _now,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self.cell = cell
        self._secrets = secrets
        self._clock = clock
        self._on_events = on_events

    def _bmc(self, row: object) -> BmcAccess:
        enc = getattr(row, "bmc_password_enc", None)
        try:
            password = self._secrets.decrypt(enc) if enc else ""
        except SecretError:
            password = ""
        return BmcAccess(
            driver=getattr(row, "bmc_driver"),  # noqa: B009 - Core row attribute
            address=getattr(row, "bmc_address"),  # noqa: B009
            port=getattr(row, "bmc_port"),  # noqa: B009
            username=getattr(row, "bmc_username"),  # noqa: B009
            password=password,
        )

    def status(self, node_id: str) -> NodeStatus:
        now = self._clock()
        with self._engine.connect() as conn:
            row = conn.execute(select(_NODES).where(_NODES.c.node_id == node_id)).one_or_none()
        if row is None:
            raise NotFound(f"node cells/{self.cell}/nodes/{node_id} not found")
        expires = row.lock_expires
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return NodeStatus(
            pk=row.id,
            node_id=row.node_id,
            provision_state=State[row.provision_state],
            power_state=row.power_state,
            maintenance=row.maintenance,
            locked=bool(row.lock_holder) and expires is not None and expires > now,
            bmc=self._bmc(row),
        )

    def sync_targets(self, skip_states: Iterable[State]) -> list[SyncTarget]:
        """Unlocked nodes whose power the sweep should read, in no particular order."""
        now = self._clock()
        skip = [s.value for s in skip_states]
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(_NODES)
                .where(_NODES.c.provision_state.not_in(skip))
                .where((_NODES.c.lock_holder.is_(None)) | (_NODES.c.lock_expires < now))
            ).all()
        return [
            SyncTarget(
                pk=r.id,
                node_id=r.node_id,
                power_state=r.power_state,
                enforce_ok=not r.maintenance,
                bmc=self._bmc(r),
            )
            for r in rows
        ]

    def record_power(self, node_id: str, power_state: str, last_error: str | None = None) -> None:
        """Records a power state read or set just now; bumps the etag."""
        values: dict[str, object] = {
            "power_state": power_state,
            "power_sync_time": self._clock(),
            "revision": _NODES.c.revision + 1,
        }
        if last_error is not None:
            values["last_error"] = last_error
        with self._engine.begin() as conn:
            conn.execute(update(_NODES).where(_NODES.c.node_id == node_id).values(**values))

    def touch_synced(self, pks: Sequence[int]) -> None:
        """Marks unchanged nodes as synced now, in one statement batch (no etag change)."""
        if not pks:
            return
        now = self._clock()
        with self._engine.begin() as conn:
            conn.execute(
                update(_NODES).where(_NODES.c.id == bindparam("pk")).values(power_sync_time=now),
                [{"pk": pk} for pk in pks],
            )

    def set_provision(
        self,
        node_id: str,
        state: State,
        target: State | None,
        last_error: str | None = None,
    ) -> None:
        now = self._clock()
        values: dict[str, object] = {
            "provision_state": state.value,
            "target_provision_state": target.value if target else "UNSPECIFIED",
            "provision_update_time": now,
            "update_time": now,
            "revision": _NODES.c.revision + 1,
        }
        if last_error is not None:
            values["last_error"] = last_error
        with self._engine.begin() as conn:
            conn.execute(update(_NODES).where(_NODES.c.node_id == node_id).values(**values))

    def fail_transient(
        self, transient: Iterable[State], target_of: Callable[[State], State]
    ) -> list[tuple[str, State, State]]:
        """Restart recovery: move nodes left in transient states to their failure targets."""
        moved: list[tuple[str, State, State]] = []
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(_NODES.c.node_id, _NODES.c.provision_state).where(
                    _NODES.c.provision_state.in_([s.value for s in transient])
                )
            ).all()
        for node_id, state_text in rows:
            state = State[state_text]
            target = target_of(state)
            self.set_provision(
                node_id,
                target,
                None,
                last_error=f"the conductor restarted while the node was {state.value.lower()}",
            )
            moved.append((node_id, state, target))
        return moved

    def add_events(self, events: Sequence[tuple[str, str, str]]) -> None:
        """Appends (node_id, kind, detail) events; their ids are the cell's revisions."""
        if not events:
            return
        now = self._clock()
        with self._engine.begin() as conn:
            conn.execute(
                insert(_EVENTS),
                [
                    {"node_id": n, "time": now, "kind": k, "detail": d, "phase": "", "percent": 0}
                    for n, k, d in events
                ],
            )
        self._on_events()

    def add_progress(self, node_id: str, phase: str, percent: int, detail: str = "") -> None:
        """Records a deploy (or other task) phase change for watchers."""
        with self._engine.begin() as conn:
            conn.execute(
                insert(_EVENTS).values(
                    node_id=node_id,
                    time=self._clock(),
                    kind="phase",
                    detail=detail,
                    phase=phase,
                    percent=percent,
                )
            )
        self._on_events()

    def set_last_deploy(self, node_id: str, timings: dict[str, object]) -> None:
        """Stores the per-phase timings of the deploy that just ended."""
        with self._engine.begin() as conn:
            conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == node_id)
                .values(last_deploy=timings, revision=_NODES.c.revision + 1)
            )

    def set_instance_info(self, node_id: str, info: dict[str, str]) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(_NODES)
                .where(_NODES.c.node_id == node_id)
                .values(instance_info=info, revision=_NODES.c.revision + 1)
            )

    def node_id_for_macs(self, macs: Sequence[str]) -> str | None:
        """The node that owns one of ``macs`` (normalised), or None."""
        if not macs:
            return None
        with self._engine.connect() as conn:
            return conn.execute(
                select(_NODES.c.node_id)
                .join(_PORTS, _PORTS.c.node_pk == _NODES.c.id)
                .where(_PORTS.c.mac.in_(list(macs)))
                .limit(1)
            ).scalar()

    def events(self, node_id: str, limit: int = 50) -> list[tuple[int, datetime, str, str]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(_EVENTS.c.id, _EVENTS.c.time, _EVENTS.c.kind, _EVENTS.c.detail)
                .where(_EVENTS.c.node_id == node_id)
                .order_by(_EVENTS.c.id.desc())
                .limit(limit)
            ).all()
        return [(r.id, r.time, r.kind, r.detail) for r in rows]
