"""The top cell's own database: cell flags set by operators and a copy of the derived inventory.

Two kinds of data live here and they are treated differently:

* ``top_cell_flags`` is operator state (scheduling disabled, and why). It is not derived from
  anything, so it is written through at once and survives restarts.
* ``top_inventory_cells`` / ``top_inventory_nodes`` are a cache of what the leaves streamed. They
  let a restarted top answer capacity and MAC look-ups at once and resume each leaf's stream
  from the last applied revision instead of asking for a full snapshot. Losing them costs one
  snapshot per leaf: a top started on an empty database asks every leaf for revision 0 and
  rebuilds everything.

Because every table is either operator flags or a rebuildable cache, the schema is created with
``metadata.create_all`` and there are no migrations: when :data:`CACHE_SCHEMA` changes, the
cache tables are dropped and the leaves refill them (the flags table is kept as it is).

Inventory writes are write-behind: the in-memory inventory answers as soon as an update
arrives, and :class:`InventoryWriter` coalesces the changes per node and flushes them in one
transaction per batch, together with each cell's revision, so the stored copy is always the
state after some whole update and a resumed stream never skips a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
)

from common.db import make_engine

__all__ = [
    "CACHE_SCHEMA",
    "CellWrite",
    "InventoryWriter",
    "NodeRow",
    "StoredCell",
    "TopStore",
    "open_store",
]

log = logging.getLogger(__name__)

# Bump when the cache tables change shape: a top that finds another number drops them.
CACHE_SCHEMA = 1

metadata = MetaData()

top_meta = Table(
    "top_meta",
    metadata,
    Column("key", String(63), primary_key=True),
    Column("value", String(255), nullable=False),
)

cell_flags = Table(
    "top_cell_flags",
    metadata,
    Column("cell", String(63), primary_key=True),
    Column("scheduling_disabled", Boolean, nullable=False),
    Column("disabled_reason", Text, nullable=False),
)

inventory_cells = Table(
    "top_inventory_cells",
    metadata,
    Column("cell", String(63), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("as_of", Float, nullable=False),
    Column("version", String(255), nullable=False),
)

inventory_nodes = Table(
    "top_inventory_nodes",
    metadata,
    Column("cell", String(63), primary_key=True),
    Column("node_id", String(63), primary_key=True),
    Column("uid", String(64), nullable=False),
    Column("resource_class", String(80), nullable=False),
    # Traits and MACs are comma-joined: neither can contain a comma, and the top only ever
    # reads the whole table back at start-up, so separate tables would buy nothing.
    Column("traits", Text, nullable=False),
    Column("provision_state", Integer, nullable=False),
    Column("maintenance", Boolean, nullable=False),
    Column("allocation", Text, nullable=False),
    Column("macs", Text, nullable=False),
)

# (node_id, uid, resource_class, traits, provision_state, maintenance, allocation, macs)
NodeRow = tuple[str, str, str, tuple[str, ...], int, bool, str, tuple[str, ...]]


@dataclass
class StoredCell:
    """One cell's stored inventory as read back at start-up."""

    cell: str
    revision: int
    as_of: float
    version: str
    nodes: list[NodeRow] = field(default_factory=list)


@dataclass
class CellWrite:
    """The coalesced changes of one cell since the last flush.

    ``reset`` drops every stored node of the cell first; ``nodes`` maps node ids to their new
    row, or to None for a deleted node; ``forget`` removes the cell altogether.
    """

    cell: str
    reset: bool = False
    forget: bool = False
    nodes: dict[str, NodeRow | None] = field(default_factory=dict)
    revision: int | None = None
    as_of: float = 0.0
    version: str = ""


def _join(items: Iterable[str]) -> str:
    return ",".join(items)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


class TopStore:
    """Blocking access to the top's tables; call it from a worker thread, never the loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_tables(self) -> None:
        """Creates missing tables; drops the cache tables if they are of another schema."""
        top_meta.create(self.engine, checkfirst=True)
        cache = [inventory_cells, inventory_nodes]
        with self.engine.begin() as conn:
            found = conn.execute(
                select(top_meta.c.value).where(top_meta.c.key == "cache_schema")
            ).scalar()
            if found != str(CACHE_SCHEMA):
                if found is not None:
                    log.warning(
                        "inventory cache schema %s is not %s: dropping it", found, CACHE_SCHEMA
                    )
                metadata.drop_all(conn, tables=cache, checkfirst=True)
                conn.execute(delete(top_meta).where(top_meta.c.key == "cache_schema"))
                conn.execute(insert(top_meta).values(key="cache_schema", value=str(CACHE_SCHEMA)))
            metadata.create_all(conn)

    def load_flags(self) -> dict[str, tuple[bool, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(cell_flags)).all()
        return {r.cell: (bool(r.scheduling_disabled), r.disabled_reason) for r in rows}

    def save_flags(self, cell: str, disabled: bool, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(cell_flags).where(cell_flags.c.cell == cell))
            conn.execute(
                insert(cell_flags).values(
                    cell=cell, scheduling_disabled=disabled, disabled_reason=reason
                )
            )

    def load_inventory(self) -> dict[str, StoredCell]:
        """Every stored cell with its nodes. Nodes of a cell without a revision row are
        ignored: they can only be the remains of an interrupted forget."""
        cells: dict[str, StoredCell] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(select(inventory_cells)):
                cells[r.cell] = StoredCell(r.cell, int(r.revision), float(r.as_of), r.version)
            for r in conn.execute(select(inventory_nodes)):
                stored = cells.get(r.cell)
                if stored is not None:
                    stored.nodes.append(
                        (
                            r.node_id,
                            r.uid,
                            r.resource_class,
                            _split(r.traits),
                            int(r.provision_state),
                            bool(r.maintenance),
                            r.allocation,
                            _split(r.macs),
                        )
                    )
        return cells

    def write(self, batch: Iterable[CellWrite]) -> None:
        """Applies the coalesced changes of several cells in one transaction."""
        n = inventory_nodes.c
        with self.engine.begin() as conn:
            for w in batch:
                if w.reset or w.forget:
                    conn.execute(delete(inventory_nodes).where(n.cell == w.cell))
                if w.forget:
                    conn.execute(delete(inventory_cells).where(inventory_cells.c.cell == w.cell))
                    continue
                ids = list(w.nodes)
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    conn.execute(
                        delete(inventory_nodes).where(n.cell == w.cell, n.node_id.in_(chunk))
                    )
                rows = [
                    {
                        "cell": w.cell,
                        "node_id": row[0],
                        "uid": row[1],
                        "resource_class": row[2],
                        "traits": _join(row[3]),
                        "provision_state": row[4],
                        "maintenance": row[5],
                        "allocation": row[6],
                        "macs": _join(row[7]),
                    }
                    for row in w.nodes.values()
                    if row is not None
                ]
                if rows:
                    conn.execute(insert(inventory_nodes), rows)
                if w.revision is not None:
                    conn.execute(delete(inventory_cells).where(inventory_cells.c.cell == w.cell))
                    conn.execute(
                        insert(inventory_cells).values(
                            cell=w.cell, revision=w.revision, as_of=w.as_of, version=w.version
                        )
                    )

    def close(self) -> None:
        self.engine.dispose()


async def open_store(db_url: str) -> TopStore:
    """Opens the top's database (``sqlite:///…`` or ``postgresql+psycopg2://…``) and creates
    any missing table."""
    store = TopStore(make_engine(db_url, pool_size=2))
    await asyncio.to_thread(store.create_tables)
    return store


class InventoryWriter:
    """Coalesces inventory changes on the event loop and flushes them from a worker thread.

    Record methods are cheap and synchronous, so applying a stream update never waits for the
    database. A failed flush keeps its changes and is retried on the next tick (newer changes
    recorded in between win); the in-memory inventory is unaffected either way.
    """

    def __init__(self, store: TopStore, *, interval: float = 0.2) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[str, CellWrite] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _entry(self, cell: str) -> CellWrite:
        entry = self._pending.get(cell)
        if entry is None:
            entry = self._pending[cell] = CellWrite(cell)
        return entry

    def reset(self, cell: str) -> None:
        entry = self._entry(cell)
        entry.reset, entry.forget = True, False
        entry.nodes.clear()

    def upsert(self, cell: str, row: NodeRow) -> None:
        self._entry(cell).nodes[row[0]] = row

    def delete(self, cell: str, node_id: str) -> None:
        self._entry(cell).nodes[node_id] = None

    def mark(self, cell: str, revision: int, as_of: float, version: str) -> None:
        entry = self._entry(cell)
        entry.revision, entry.as_of, entry.version = revision, as_of, version

    def forget(self, cell: str) -> None:
        self._pending[cell] = CellWrite(cell, forget=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="top inventory writer"
            )

    async def stop(self) -> None:
        if self._task is not None:
            async with self._lock:  # never cancel a write half-way: wait for it to finish
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Writes everything recorded so far; on failure puts it back for the next try."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                await asyncio.to_thread(self._store.write, list(batch.values()))
            except Exception:
                log.exception("writing the inventory cache failed; will retry")
                for cell, old in batch.items():
                    self._pending[cell] = _merge(old, self._pending.get(cell))
                raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            with contextlib.suppress(Exception):  # logged by flush; retried on the next tick
                await self.flush()


def _merge(old: CellWrite, new: CellWrite | None) -> CellWrite:
    """``old`` (not written) followed by ``new`` (recorded while ``old`` was being written)."""
    if new is None:
        return old
    if new.reset or new.forget:
        return new
    old.nodes.update(new.nodes)
    if new.revision is not None:
        old.revision, old.as_of, old.version = new.revision, new.as_of, new.version
    return old
