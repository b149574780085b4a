"""Which leaf cells exist and where to reach them: the top cell's view of the federation.

Two sources, one interface (:class:`Registry`):

- :class:`ZkRegistry` watches the ephemeral znodes the leaves keep in ZooKeeper
  (``leaf_cell.registration``): a cell appears when its leaf starts and vanishes when it stops or
  its session expires, without the top polling anything. Membership therefore also says "alive",
  and the top need not health-check the leaves itself.
- :class:`StaticRegistry` is a fixed list from a YAML file, the default for a single machine
  without ZooKeeper. It says nothing about liveness (``static`` is True), so the top must
  health-check those leaves.

Subscribers are called on the asyncio event loop with the whole membership, never with a
delta: a subscriber that missed nothing and one that just subscribed see the same thing, and a
resync after a ZooKeeper outage is just another membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import yaml
from kazoo.protocol.states import KazooState
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from common.names import label_problem
from common.zk import endpoint_problem, make_client, parse_zk_url

__all__ = [
    "CellInfo",
    "Membership",
    "Registry",
    "RegistryError",
    "StaticRegistry",
    "ZkRegistry",
    "make_registry",
    "parse_static_cells",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellInfo:
    """A leaf cell as the registry knows it: its id and the gRPC endpoint to route to."""

    name: str
    endpoint: str
    version: str = ""


Membership = dict[str, CellInfo]
Subscriber = Callable[[Membership], None]


class RegistryError(RuntimeError):
    """The registry could not be started (ZooKeeper unreachable)."""


class Registry(Protocol):
    """The cells the top routes to. ``cells()`` and subscribers see the same membership."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def cells(self) -> Membership:
        """The current membership (a copy), keyed by cell id."""
        ...

    def subscribe(self, callback: Subscriber) -> None:
        """Calls ``callback`` now with the current membership and on the event loop with the
        full new membership whenever it changes. Call it on the event loop's thread."""
        ...

    @property
    def static(self) -> bool:
        """True when membership says nothing about liveness: the top health-checks the leaves."""
        ...


class _Subscribers:
    """Subscriber bookkeeping shared by both registries: a failing subscriber is logged and
    does not keep the others from hearing about the change."""

    def __init__(self) -> None:
        self._callbacks: list[Subscriber] = []
        self.published: Membership = {}

    def add(self, callback: Subscriber) -> None:
        self._callbacks.append(callback)
        self._call(callback, self.published)

    def publish(self, membership: Membership) -> None:
        if membership == self.published:
            return
        self.published = dict(membership)
        for callback in list(self._callbacks):
            self._call(callback, membership)

    @staticmethod
    def _call(callback: Subscriber, membership: Membership) -> None:
        try:
            callback(dict(membership))
        except Exception:
            log.exception("registry subscriber %r failed", callback)


# --- static ----------------------------------------------------------------------------------

_STATIC_KEYS = {"name", "endpoint", "version"}


def parse_static_cells(text: str, source: str) -> list[CellInfo]:
    """Parses ``cells: [{name: rack-1, endpoint: "127.0.0.1:7001"}, ...]``.

    Raises ValueError naming ``source`` and the offending entry (by index and name), so that an
    operator can find the line to fix.
    """

    def bad(problem: str) -> ValueError:
        return ValueError(f"registry {source}: {problem}")

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise bad(f"not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "cells" not in doc:
        raise bad("expected a mapping with a `cells` list, e.g. cells: [{name: rack-1, ...}]")
    unknown = set(doc) - {"cells"}
    if unknown:
        raise bad(f"unknown top-level keys {sorted(map(str, unknown))}; only `cells` is allowed")
    entries = doc["cells"] or []
    if not isinstance(entries, list):
        raise bad("`cells` must be a list of {name, endpoint} entries")
    cells: list[CellInfo] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"cells[{index}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be a mapping with `name` and `endpoint`, got {entry!r}")
        name = entry.get("name")
        if isinstance(name, str):
            where = f"{where} (name {name!r})"
        unknown = set(entry) - _STATIC_KEYS
        if unknown:
            raise bad(f"{where}: unknown keys {sorted(map(str, unknown))}")
        if not isinstance(name, str):
            raise bad(f"{where}: `name` is required and must be a string")
        problem = label_problem(name)
        if problem:
            raise bad(f"{where}: cell id {problem}")
        endpoint = entry.get("endpoint")
        if not isinstance(endpoint, str):
            raise bad(f"{where}: `endpoint` (HOST:PORT) is required and must be a string")
        problem = endpoint_problem(endpoint)
        if problem:
            raise bad(f"{where}: endpoint {problem}")
        version = entry.get("version", "")
        if not isinstance(version, str):
            raise bad(f"{where}: `version` must be a string")
        if name in seen:
            raise bad(f"{where}: duplicate cell id, already used by cells[{seen[name]}]")
        seen[name] = index
        cells.append(CellInfo(name=name, endpoint=endpoint, version=version))
    return cells


class StaticRegistry:
    """A fixed list of cells; membership never changes."""

    def __init__(self, cells: Iterable[CellInfo]) -> None:
        self._cells: Membership = {}
        for cell in cells:
            if cell.name in self._cells:
                raise ValueError(f"registry: duplicate cell id {cell.name!r}")
            self._cells[cell.name] = cell
        self._subscribers = _Subscribers()
        self._subscribers.publish(self._cells)

    @classmethod
    def from_yaml(cls, text: str, source: str = "static") -> StaticRegistry:
        return cls(parse_static_cells(text, source))

    @classmethod
    def from_file(cls, path: str | Path) -> StaticRegistry:
        """Reads the cell list from ``path``; ValueError if it is missing or malformed."""
        source = f"static:{path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"registry {source}: cannot read the file: {exc.strerror}") from exc
        return cls.from_yaml(text, source)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def cells(self) -> Membership:
        return dict(self._cells)

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.add(callback)

    @property
    def static(self) -> bool:
        return True


# --- ZooKeeper -------------------------------------------------------------------------------


def _decode(name: str, data: bytes | None) -> CellInfo | None:
    """The cell a child znode announces, or None (with a warning) if it announces nothing
    usable: one malformed znode must not hide the other cells or stop the watch."""
    problem = label_problem(name)
    if problem:
        log.warning("registry: ignoring znode %r: cell id %s", name, problem)
        return None
    try:
        doc = json.loads(data or b"")
    except (ValueError, UnicodeDecodeError):
        log.warning(
            "registry: ignoring cell %s: its data is not JSON: %r", name, (data or b"")[:200]
        )
        return None
    endpoint = doc.get("endpoint") if isinstance(doc, dict) else None
    if not isinstance(endpoint, str) or endpoint_problem(endpoint):
        log.warning("registry: ignoring cell %s: no valid endpoint (HOST:PORT) in %r", name, doc)
        return None
    if doc.get("cell", name) != name:
        log.warning("registry: znode %s claims to be cell %r; using %s", name, doc["cell"], name)
    version = doc.get("version")
    return CellInfo(
        name=name, endpoint=endpoint, version=version if isinstance(version, str) else ""
    )


class ZkRegistry:
    """Live membership from the ephemeral znodes under the ``registry`` URL's path.

    A ChildrenWatch on the path discovers names; a DataWatch per child reads each cell's
    announcement and sees it deleted or re-created. While ZooKeeper is unreachable the last
    membership is kept (the leaves are probably still serving); after reconnecting, kazoo's
    watches re-read everything and, if the session was lost, the children are watched afresh.
    kazoo calls the watches on its own threads; they only update state under a lock and hand
    the new membership to the event loop.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._target = parse_zk_url(url)
        self._timeout = timeout
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._children: set[str] = set()
        self._tokens: dict[str, object] = {}
        self._members: Membership = {}
        self._generation = 0
        self._session_lost = False
        self._stopped = False
        self._subscribers = _Subscribers()

    @property
    def url(self) -> str:
        return str(self._target)

    @property
    def static(self) -> bool:
        return False

    def cells(self) -> Membership:
        return dict(self._subscribers.published)

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.add(callback)

    async def start(self) -> None:
        """Connects, ensures the path exists and reads the membership before returning.

        Raises :class:`RegistryError` if ZooKeeper does not answer within ``timeout``.
        """
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        self._client = make_client(self._target, timeout=self._timeout)
        try:
            await asyncio.to_thread(self._connect)
        except BaseException:
            client, self._client = self._client, None
            await asyncio.to_thread(_close, client)
            raise
        self._publish()

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with self._lock:
            self._stopped = True
        client.remove_listener(self._on_state)
        await asyncio.to_thread(_close, client)

    # kazoo threads --------------------------------------------------------------------------

    def _connect(self) -> None:
        client = self._client
        try:
            client.start(timeout=self._timeout)
        except client.handler.timeout_exception as exc:
            raise RegistryError(
                f"registry: ZooKeeper at {self._target.hosts} did not answer within "
                f"{self._timeout:g} s"
            ) from exc
        client.add_listener(self._on_state)
        self._watch_children()

    def _on_state(self, state: str) -> None:
        """Runs on kazoo's connection thread: never wait for ZooKeeper here."""
        if state == KazooState.LOST:
            log.warning("registry: ZooKeeper session lost; keeping the last membership")
            self._session_lost = True
        elif state == KazooState.SUSPENDED:
            log.warning("registry: ZooKeeper connection lost; keeping the last membership")
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            threading.Thread(target=self._rewatch, name="registry-rewatch", daemon=True).start()

    def _rewatch(self) -> None:
        try:
            self._watch_children()
        except Exception:
            if not self._stopped:  # else stop() closed the client under us
                log.exception("registry: could not watch %s again", self._target.path)

    def _watch_children(self) -> None:
        """(Re)installs the ChildrenWatch; a newer generation silences the older watch, which
        kazoo would otherwise keep (or, if the path vanished with ZooKeeper's data, drop)."""
        client = self._client
        if client is None:
            return
        client.retry(client.ensure_path, self._target.path)
        with self._lock:
            if self._stopped:
                return
            self._generation += 1
            generation = self._generation
        ChildrenWatch(client, self._target.path, partial(self._on_children, generation))

    def _on_children(self, generation: int, children: list[str]) -> bool | None:
        with self._lock:
            if self._stopped or generation != self._generation:
                return False
            self._children = set(children)
            for gone in set(self._tokens) - self._children:
                del self._tokens[gone]
                self._members.pop(gone, None)
            new = {name: object() for name in self._children - set(self._tokens)}
            self._tokens.update(new)
        client = self._client
        for name, token in new.items():
            if client is not None:
                DataWatch(
                    client, f"{self._target.path}/{name}", partial(self._on_data, name, token)
                )
        self._changed()
        return None

    def _on_data(
        self, name: str, token: object, data: bytes | None, stat: Any, event: Any = None
    ) -> bool | None:
        with self._lock:
            if self._stopped or self._tokens.get(name) is not token:
                return False
            if stat is None:  # deleted; a re-created znode comes back through this watch
                self._members.pop(name, None)
                if name not in self._children:
                    del self._tokens[name]
                    stop = True
                else:
                    stop = False
            else:
                stop = False
                info = _decode(name, data)
                if info is None:
                    self._members.pop(name, None)
                else:
                    self._members[name] = info
        self._changed()
        return False if stop else None

    def _changed(self) -> None:
        loop = self._loop
        if loop is None or self._stopped:
            return
        # A closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._publish)

    # event loop ------------------------------------------------------------------------------

    def _publish(self) -> None:
        with self._lock:
            if self._stopped:
                return
            membership = dict(self._members)
        self._subscribers.publish(membership)


def _close(client: Any) -> None:
    try:
        client.stop()
    finally:
        client.close()


def make_registry(spec: str) -> Registry:
    """The registry named by the ``registry`` setting: ``static:FILE`` or ``zk://HOST:PORT/PATH``."""
    if spec.startswith("static:"):
        path = spec.removeprefix("static:")
        if not path:
            raise ValueError(
                "registry: static: needs a file name (static:/etc/rackcells/cells.yaml)"
            )
        return StaticRegistry.from_file(path)
    if spec.startswith("zk://"):
        return ZkRegistry(spec)
    raise ValueError(
        f"registry: {spec!r} is neither static:FILE (a YAML cell list) "
        "nor zk://HOST:PORT[,HOST:PORT...]/PATH (ZooKeeper)"
    )
