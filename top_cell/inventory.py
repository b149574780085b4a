"""The derived inventory: every leaf's node summaries, indexed and counted as they stream in.

The top cell never asks a leaf how many nodes it has. Each leaf streams its inventory
(``InventoryService.WatchInventory``): a snapshot, then every change as it happens, and a
heartbeat every few seconds. :class:`Inventory` keeps one such stream per registered cell,
applies each update the moment it arrives (enrol-to-visible is one network hop), resumes from
the last applied revision after a break, and marks the cell DOWN in the
:class:`~top_cell.cells.CellDirectory` while its stream is broken or silent.

What is kept is deliberately small, so 8 cells x 5,000 nodes fit comfortably in memory:

* per node one frozen, slotted :class:`NodeRec` whose strings are interned and whose trait
  set is shared with every node that has the same traits (racks are mostly homogeneous);
* the look-up indexes uid → (cell, node) and MAC → (cell, node), which the router uses to
  route look-ups and to refuse a MAC that another cell already has;
* per cell a :class:`~top_cell.capacity.CountTable`, maintained incrementally, so a capacity
  query never walks the nodes.

A snapshot is assembled aside and swapped in when complete, so a reconnect never shows a
half-filled cell. The stored copy (:mod:`top_cell.inventory_db`) is only a cache: started on
an empty database the top asks every leaf for revision 0 and rebuilds the same state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys
import time
from dataclasses import dataclass, field

import grpc

from common.keys import normalize_mac
from rackcells.v1 import inventory_service_pb2, inventory_service_pb2_grpc
from top_cell.capacity import CapacityQuery, CountTable, packed_contribution
from top_cell.cells import CellDirectory, CellRegistry
from top_cell.inventory_db import InventoryWriter, NodeRow, StoredCell, TopStore, open_store

__all__ = [
    "Committed",
    "Inventory",
    "InventoryIndex",
    "InventoryParts",
    "NodeRec",
    "ResyncNeeded",
    "normalize_mac",
    "start_inventory",
]

log = logging.getLogger(__name__)

Loc = tuple[str, str]  # (cell, node_id)

_CANONICAL_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class NodeRec:
    """What the top keeps of one node (see ``NodeSummary``); replaced, never changed."""

    node_id: str
    uid: str
    resource_class: str
    traits: frozenset[str]
    provision_state: int
    maintenance: bool
    allocation: str
    macs: tuple[str, ...]

    def row(self) -> NodeRow:
        return (
            self.node_id,
            self.uid,
            self.resource_class,
            tuple(sorted(self.traits)),
            self.provision_state,
            self.maintenance,
            self.allocation,
            self.macs,
        )

    def delta(self) -> int:
        """What the node adds to its group's packed counters."""
        return packed_contribution(self.provision_state, self.maintenance, bool(self.allocation))


class _CellNodes:
    """One cell's nodes and counters, at one revision."""

    __slots__ = ("as_of", "nodes", "revision", "table", "version")

    def __init__(self, revision: int = 0, as_of: float = 0.0, version: str = "") -> None:
        self.nodes: dict[str, NodeRec] = {}
        self.table = CountTable()
        self.revision = revision
        self.as_of = as_of
        self.version = version

    def put(self, rec: NodeRec) -> NodeRec | None:
        old = self.nodes.get(rec.node_id)
        if old is not None:
            self.table.remove(old.resource_class, old.traits, old.delta())
        self.nodes[rec.node_id] = rec
        self.table.add(rec.resource_class, rec.traits, rec.delta())
        return old

    def drop(self, node_id: str) -> NodeRec | None:
        old = self.nodes.pop(node_id, None)
        if old is not None:
            self.table.remove(old.resource_class, old.traits, old.delta())
        return old


@dataclass
class Committed:
    """What one applied update changed: with ``reset`` the cell now holds exactly
    ``upserts``; otherwise ``upserts`` and ``deleted`` are the changed nodes."""

    reset: bool
    upserts: list[NodeRec] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class ResyncNeeded(Exception):
    """The stream sent changes the index cannot place; ask for a full snapshot."""


class InventoryIndex:
    """The in-memory inventory of every cell: no I/O, driven by :meth:`apply`."""

    def __init__(self) -> None:
        self._cells: dict[str, _CellNodes] = {}
        self._staging: dict[str, _CellNodes] = {}
        self._by_uid: dict[str, Loc] = {}
        self._by_mac: dict[str, Loc] = {}
        self._mac_dups: dict[str, list[Loc]] = {}
        self._traitsets: dict[frozenset[str], frozenset[str]] = {}

    # -- reading ----------------------------------------------------------------------------

    def cells(self) -> list[str]:
        """Cells with figures (a complete snapshot, or data loaded from the store)."""
        return sorted(self._cells)

    def assembling(self, cell: str) -> bool:
        """Whether a snapshot of the cell is being received."""
        return cell in self._staging

    def generation(self, cell: str) -> int:
        """The leaf's inventory revision last applied (0: none)."""
        c = self._cells.get(cell)
        return 0 if c is None else c.revision

    def as_of(self, cell: str) -> float | None:
        """When the cell's figures were last confirmed by its stream; None: never heard."""
        c = self._cells.get(cell)
        return None if c is None else c.as_of

    def version(self, cell: str) -> str:
        c = self._cells.get(cell)
        return "" if c is None else c.version

    def node(self, cell: str, node_id: str) -> NodeRec | None:
        c = self._cells.get(cell)
        return None if c is None else c.nodes.get(node_id)

    def nodes(self, cell: str) -> list[NodeRec]:
        c = self._cells.get(cell)
        return [] if c is None else list(c.nodes.values())

    def count(self, cell: str, query: CapacityQuery) -> list[int]:
        c = self._cells.get(cell)
        return CountTable().count(query) if c is None else c.table.count(query)

    def locate_uid(self, uid: str) -> Loc | None:
        return self._by_uid.get(uid)

    def locate_mac(self, mac: str) -> Loc | None:
        norm = normalize_mac(mac)
        return None if norm is None else self._by_mac.get(norm)

    def cell_of_uid(self, uid: str) -> str | None:
        loc = self._by_uid.get(uid)
        return None if loc is None else loc[0]

    def cell_of_mac(self, mac: str) -> str | None:
        loc = self.locate_mac(mac)
        return None if loc is None else loc[0]

    def mac_conflicts(self) -> dict[str, list[Loc]]:
        """MACs that more than one node claims, with every holder (the first one wins)."""
        return {m: [self._by_mac[m], *dups] for m, dups in self._mac_dups.items()}

    # -- writing ----------------------------------------------------------------------------

    def record(self, s: inventory_service_pb2.NodeSummary) -> NodeRec:
        """A compact record of ``s``: interned strings, a shared trait set, normalised MACs."""
        traits = frozenset(map(sys.intern, s.traits))
        shared = self._traitsets.setdefault(traits, traits)
        macs = tuple(s.macs)
        if not all(map(_CANONICAL_MAC.match, macs)):
            # Leaves send normalised MACs; only an odd one goes through the slow path.
            macs = tuple(normalize_mac(m) or m.lower() for m in macs)
        return NodeRec(
            s.node_id,
            s.uid,
            sys.intern(s.resource_class),
            shared,
            int(s.provision_state),
            s.maintenance,
            s.allocation,
            macs,
        )

    def apply(
        self, cell: str, update: inventory_service_pb2.InventoryUpdate, now: float
    ) -> Committed | None:
        """Applies one stream update; returns what became visible, None while a snapshot is
        still being assembled. Raises :class:`ResyncNeeded` for changes to a cell of which
        nothing is held and no snapshot was announced."""
        cell = sys.intern(cell)
        staging = self._staging.get(cell)
        if update.reset:
            staging = self._staging[cell] = _CellNodes()
        if staging is not None:
            for s in update.upserts:
                staging.put(self.record(s))
            for node_id in update.deleted:
                staging.drop(node_id)
            staging.revision, staging.version = update.revision, update.version
            if not update.snapshot_complete:
                return None
            del self._staging[cell]
            staging.as_of = now
            self._replace(cell, staging)
            return Committed(True, list(staging.nodes.values()))
        c = self._cells.get(cell)
        if c is None:
            raise ResyncNeeded(f"changes for cells/{cell} without a snapshot")
        done = Committed(False)
        for s in update.upserts:
            rec = self.record(s)
            old = c.put(rec)
            if old is None:
                self._index(cell, rec)
            else:
                self._reindex(cell, old, rec)
            done.upserts.append(rec)
        for node_id in update.deleted:
            old = c.drop(node_id)
            if old is not None:
                self._unindex(cell, old)
                done.deleted.append(node_id)
        c.revision, c.as_of = update.revision, now
        if update.version:
            c.version = update.version
        return done

    def abort_snapshot(self, cell: str) -> None:
        """Drops a half-received snapshot (its stream broke); the old figures stay."""
        self._staging.pop(cell, None)

    def load(self, stored: StoredCell) -> None:
        """Restores a cell from the store, as it was at ``stored.revision``."""
        c = _CellNodes(stored.revision, stored.as_of, stored.version)
        for node_id, uid, rc, traits, state, maint, alloc, macs in stored.nodes:
            tset = frozenset(map(sys.intern, traits))
            shared = self._traitsets.setdefault(tset, tset)
            c.put(NodeRec(node_id, uid, sys.intern(rc), shared, state, maint, alloc, macs))
        self._replace(sys.intern(stored.cell), c)

    def forget(self, cell: str) -> None:
        self._staging.pop(cell, None)
        old = self._cells.pop(cell, None)
        if old is not None:
            for rec in old.nodes.values():
                self._unindex(cell, rec)

    def note_allocation(self, cell: str, node_id: str, allocation: str) -> bool:
        """Counts a node as claimed before the stream says so (it will, shortly)."""
        c = self._cells.get(cell)
        rec = None if c is None else c.nodes.get(node_id)
        if c is None or rec is None or rec.allocation:
            return False
        c.put(
            NodeRec(
                rec.node_id,
                rec.uid,
                rec.resource_class,
                rec.traits,
                rec.provision_state,
                rec.maintenance,
                allocation,
                rec.macs,
            )
        )
        return True

    # -- indexes ----------------------------------------------------------------------------

    def _replace(self, cell: str, new: _CellNodes) -> None:
        old = self._cells.get(cell)
        if old is not None:
            for rec in old.nodes.values():
                self._unindex(cell, rec)
        self._cells[cell] = new
        for rec in new.nodes.values():
            self._index(cell, rec)

    def _index(self, cell: str, rec: NodeRec) -> None:
        loc = (cell, rec.node_id)
        if rec.uid:
            self._by_uid[rec.uid] = loc
        for mac in rec.macs:
            self._index_mac(mac, loc)

    def _unindex(self, cell: str, rec: NodeRec) -> None:
        loc = (cell, rec.node_id)
        if rec.uid and self._by_uid.get(rec.uid) == loc:
            del self._by_uid[rec.uid]
        for mac in rec.macs:
            self._unindex_mac(mac, loc)

    def _reindex(self, cell: str, old: NodeRec, new: NodeRec) -> None:
        """Moves only what changed, so that a MAC conflict keeps its first holder."""
        loc = (cell, new.node_id)
        if old.uid != new.uid:
            if old.uid and self._by_uid.get(old.uid) == loc:
                del self._by_uid[old.uid]
            if new.uid:
                self._by_uid[new.uid] = loc
        if old.macs != new.macs:
            for mac in set(old.macs) - set(new.macs):
                self._unindex_mac(mac, loc)
            for mac in new.macs:
                self._index_mac(mac, loc)

    def _index_mac(self, mac: str, loc: Loc) -> None:
        held = self._by_mac.setdefault(mac, loc)
        if held != loc:
            dups = self._mac_dups.setdefault(mac, [])
            if loc not in dups:
                log.warning("MAC %s of cells/%s/nodes/%s is also held by %s", mac, *loc, held)
                dups.append(loc)

    def _unindex_mac(self, mac: str, loc: Loc) -> None:
        dups = self._mac_dups.get(mac)
        if self._by_mac.get(mac) == loc:
            if dups:
                self._by_mac[mac] = dups.pop(0)
            else:
                del self._by_mac[mac]
        elif dups and loc in dups:
            dups.remove(loc)
        if dups is not None and not dups:
            del self._mac_dups[mac]


class Inventory(InventoryIndex):
    """The index kept current from one WatchInventory stream per registered cell.

    Construct, then ``await start()`` (after or before the directory's ``start()``). A stream
    resumes from the last applied revision after a break, and from the stored revision after
    a restart of the top; a new endpoint or a new registration of a cell is probably a new leaf
    process, maybe on another database, so its stream starts from revision 0. A break marks
    the cell DOWN and is retried with jittered exponential backoff (``retry_initial`` doubling
    up to ``retry_max``). A stream that delivers nothing, not even a heartbeat, for
    ``idle_timeout`` seconds counts as broken; while a snapshot is awaited or being received
    the leaf gets ``snapshot_timeout`` instead, since reading a big cell takes a while.
    """

    def __init__(
        self,
        directory: CellDirectory,
        *,
        store: TopStore | None = None,
        idle_timeout: float = 8.0,
        snapshot_timeout: float = 60.0,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        flush_interval: float = 0.2,
    ) -> None:
        super().__init__()
        self.directory = directory
        self._store = store
        self._writer = InventoryWriter(store, interval=flush_interval) if store else None
        self._idle_timeout = idle_timeout
        self._snapshot_timeout = max(snapshot_timeout, idle_timeout)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._watchers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._full_resync: set[str] = set()
        self._followed: set[str] = set()
        self._started = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the stored copy, then follows every registered cell's stream."""
        if self._store is not None:
            stored = await asyncio.to_thread(self._store.load_inventory)
            for one in stored.values():
                self.load(one)
            log.info(
                "inventory cache: %d cells, %d nodes",
                len(stored),
                sum(len(c.nodes) for c in stored.values()),
            )
        self._started = True
        self.directory.on_change(self._on_cell_change)
        for cell in self.cells():
            self.directory.remember(cell)
        for cell in self.directory.names():
            self._on_cell_change(cell)
        if self._writer is not None:
            self._writer.start()

    async def stop(self) -> None:
        self._started = False
        tasks = [task for _, task in self._watchers.values()]
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            await self._writer.stop()

    async def flush(self) -> None:
        """Writes pending changes to the store now (tests and shutdown)."""
        if self._writer is not None:
            await self._writer.flush()

    # -- streams ----------------------------------------------------------------------------

    def _on_cell_change(self, cell: str) -> None:
        if not self._started:
            return
        watcher = self._watchers.get(cell)
        if not self.directory.known(cell):
            self._stop_watcher(cell)
            self._followed.discard(cell)
            self.forget(cell)
            if self._writer is not None:
                self._writer.forget(cell)
            return
        if not self.directory.registered(cell):
            self._stop_watcher(cell)
            return
        endpoint = self.directory.info(cell).endpoint
        if watcher is not None and watcher[0] == endpoint:
            return
        self._stop_watcher(cell)
        if cell in self._followed:
            # A new endpoint or a new registration is probably a new leaf process, maybe on
            # another database whose revisions mean something else: read it afresh.
            self._full_resync.add(cell)
        self._followed.add(cell)
        task = asyncio.get_running_loop().create_task(
            self._watch(cell), name=f"inventory stream {cell}"
        )
        self._watchers[cell] = (endpoint, task)

    def _stop_watcher(self, cell: str) -> None:
        watcher = self._watchers.pop(cell, None)
        if watcher is not None:
            watcher[1].cancel()
            self.abort_snapshot(cell)

    async def _watch(self, cell: str) -> None:
        delay = self._retry_initial
        while True:
            delivered: list[bool] = []
            try:
                await self._follow(cell, delivered)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # being stopped: not a broken stream
                self.abort_snapshot(cell)
                self.directory.mark_down(cell, _describe(exc))
                if isinstance(exc, ResyncNeeded):
                    self._full_resync.add(cell)
            if delivered:  # it worked for a while: the next break starts the backoff afresh
                delay = self._retry_initial
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, self._retry_max)

    async def _follow(self, cell: str, delivered: list[bool]) -> None:
        """Reads one stream until it breaks (it always does, by raising); appends to
        ``delivered`` once the stream has delivered an update."""
        channel = self.directory.channel(cell, allow_down=True)
        since = 0 if cell in self._full_resync else self.generation(cell)
        self._full_resync.discard(cell)
        stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        request = inventory_service_pb2.WatchInventoryRequest(since_revision=since)
        call = stub.WatchInventory(request)
        try:
            while True:
                # A leaf may take a while to read and send a big snapshot; heartbeats only
                # promise anything once it streams changes.
                patient = not delivered or self.assembling(cell)
                timeout = self._snapshot_timeout if patient else self._idle_timeout
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with the read, and the watcher would never stop.
                    async with asyncio.timeout(timeout):
                        update = await call.read()
                except TimeoutError:
                    raise _StreamBroken(f"no inventory update for {timeout:g} s") from None
                if update is grpc.aio.EOF:
                    raise _StreamBroken("the leaf ended its inventory stream")
                assert isinstance(update, inventory_service_pb2.InventoryUpdate)
                if update.cell != f"cells/{cell}":
                    raise _StreamBroken(f"the endpoint serves {update.cell!r}, not cells/{cell}")
                if not delivered and not update.reset and update.revision < since:
                    # The leaf's revisions went backwards: its database was replaced.
                    raise ResyncNeeded(f"revision {update.revision} < {since}")
                if not delivered:
                    delivered.append(True)
                self._apply(cell, update)
        finally:
            call.cancel()

    def _apply(self, cell: str, update: inventory_service_pb2.InventoryUpdate) -> None:
        before = self.generation(cell)
        done = self.apply(cell, update, time.time())
        self.directory.heartbeat(cell, version=update.version)
        if done is None or self._writer is None:
            return
        w = self._writer
        if done.reset:
            w.reset(cell)
        for rec in done.upserts:
            w.upsert(cell, rec.row())
        for node_id in done.deleted:
            w.delete(cell, node_id)
        if done.reset or done.upserts or done.deleted or update.revision != before:
            w.mark(cell, update.revision, time.time(), self.version(cell))


class _StreamBroken(Exception):
    """The stream ended, went silent or came from the wrong cell; the message says which."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"inventory stream failed: {exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


@dataclass
class InventoryParts:
    """The store, directory and inventory of a top cell, started together."""

    store: TopStore
    directory: CellDirectory
    inventory: Inventory

    async def stop(self) -> None:
        await self.inventory.stop()
        await self.directory.stop()
        await asyncio.to_thread(self.store.close)


async def start_inventory(
    registry: CellRegistry,
    db_url: str,
    *,
    directory_options: dict[str, float] | None = None,
    inventory_options: dict[str, float] | None = None,
) -> InventoryParts:
    """Opens the top's database and starts the directory and the inventory on ``registry``.

    The registry itself is neither started nor stopped here.
    """
    store = await open_store(db_url)
    directory = CellDirectory(registry, store=store, **(directory_options or {}))
    inventory = Inventory(directory, store=store, **(inventory_options or {}))
    await directory.start()
    await inventory.start()
    return InventoryParts(store, directory, inventory)
