"""The leaf's entry in the cell registry: an ephemeral znode ``PATH/<cell>`` in ZooKeeper.

The top cell learns where a leaf is, and that it is alive, only from this znode: it holds
``{"cell": ..., "endpoint": "HOST:PORT", "version": ...}`` and lives exactly as long as the leaf's
ZooKeeper session. A clean stop closes the session and the znode vanishes at once; a leaf that
dies without closing it vanishes when the session times out (:data:`common.zk.SESSION_TIMEOUT`).

A session can end while the leaf keeps running (a long network partition, ZooKeeper restarted
without its data): kazoo then opens a new session and this module re-creates the znode, so a
leaf never has to be restarted to be routable again. The znode is (re)published on every
(re)connection, in a thread of its own, because kazoo calls state listeners on its connection
thread, which must never wait for a ZooKeeper reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from common.names import label_problem
from common.zk import endpoint_problem, make_client, parse_zk_url

__all__ = ["Registration", "RegistrationError"]

log = logging.getLogger(__name__)

_REPLACE_ATTEMPTS = 10


class RegistrationError(RuntimeError):
    """The leaf could not register itself (ZooKeeper unreachable or refusing the znode)."""


class Registration:
    """Keeps an ephemeral znode PATH/<cell> with JSON {"endpoint": "HOST:PORT", "version": "...",
    "cell": "..."} while the leaf runs.

    ``url`` is the ``registry`` setting (``zk://HOST:PORT[,...]/PATH``). A znode of the same cell
    left by an earlier session (a previous run whose session has not yet expired) is replaced,
    with a warning, instead of making the new run wait for the old session to time out.
    """

    def __init__(
        self, url: str, cell: str, endpoint: str, version: str, *, timeout: float = 10.0
    ) -> None:
        self._target = parse_zk_url(url)
        problem = label_problem(cell)
        if problem:
            raise ValueError(f"registry: cell id {problem}")
        problem = endpoint_problem(endpoint)
        if problem:
            raise ValueError(f"registry: the endpoint to publish for cell {cell!r}: {problem}")
        self.cell = cell
        self.endpoint = endpoint
        self.version = version
        self.path = f"{self._target.path}/{cell}"
        self._timeout = timeout
        self._data = json.dumps(
            {"cell": cell, "endpoint": endpoint, "version": version}, sort_keys=True
        ).encode()
        self._client: Any = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def client(self) -> Any:
        """The kazoo client while started (for diagnostics and tests), else None."""
        return self._client

    def start(self) -> None:
        """Connects (waiting at most ``timeout`` seconds) and creates the znode.

        Raises :class:`RegistrationError` when ZooKeeper does not answer in time, so that a leaf
        misconfigured with a wrong registry fails at start instead of running unreachable.
        """
        if self._client is not None:
            return
        client = make_client(self._target, timeout=self._timeout)
        try:
            client.start(timeout=self._timeout)
        except client.handler.timeout_exception as exc:
            raise RegistrationError(
                f"registry: ZooKeeper at {self._target.hosts} did not answer within "
                f"{self._timeout:g} s; cell {self.cell!r} is not registered"
            ) from exc
        self._stopped = False
        self._client = client
        try:
            self._publish()
        except Exception as exc:
            self._client = None
            client.stop()
            client.close()
            raise RegistrationError(
                f"registry: could not create {self.path} in ZooKeeper at {self._target.hosts}: "
                f"{exc!r}"
            ) from exc
        client.add_listener(self._on_state)
        log.info("registered cell %s at %s as %s", self.cell, self.endpoint, self.path)

    def stop(self) -> None:
        """Deletes the znode and closes the session; the top sees the cell vanish at once.

        Never waits longer than ``timeout`` for an unreachable ZooKeeper: the znode then goes
        when the session expires.
        """
        client, self._client = self._client, None
        if client is None:
            return
        self._stopped = True  # an in-flight re-publish finds it; the session close undoes it
        client.remove_listener(self._on_state)
        if client.connected:
            try:
                _, stat = client.get_async(self.path).get(timeout=self._timeout)
                if stat.ephemeralOwner == client.client_id[0]:
                    client.delete_async(self.path, version=stat.version).get(timeout=self._timeout)
            except Exception as exc:  # the session close below removes the znode anyway
                log.debug("deleting %s: %r", self.path, exc)
        try:
            client.stop()
        finally:
            client.close()
        log.info("unregistered cell %s", self.cell)

    def _on_state(self, state: str) -> None:
        """kazoo's state listener: runs on kazoo's connection thread, so it only hands off."""
        if state == KazooState.CONNECTED:
            threading.Thread(
                target=self._republish, name=f"registration-{self.cell}", daemon=True
            ).start()
        elif state == KazooState.LOST:
            log.warning("ZooKeeper session of cell %s lost; re-registering on reconnect", self.cell)

    def _republish(self) -> None:
        try:
            self._publish()
        except Exception:
            if self._stopped:  # stop() closed the client under us: nothing to re-register
                return
            # The next reconnection tries again; until then the top does not route here.
            log.exception("could not re-register cell %s in ZooKeeper", self.cell)

    def _publish(self) -> None:
        """Makes the znode exist, hold our data and belong to our session (idempotent)."""
        with self._lock:
            client = self._client
            if self._stopped or client is None:
                return
            client.retry(client.ensure_path, self._target.path)
            client.retry(self._create_or_replace, client)

    def _create_or_replace(self, client: Any) -> None:
        for _ in range(_REPLACE_ATTEMPTS):
            try:
                client.create(self.path, self._data, ephemeral=True)
                return
            except NodeExistsError:
                pass
            try:
                data, stat = client.get(self.path)
            except NoNodeError:
                continue
            if stat.ephemeralOwner == client.client_id[0]:
                if data != self._data:
                    client.set(self.path, self._data, version=stat.version)
                return
            log.warning(
                "replacing %s left by ZooKeeper session 0x%x (it held %r)",
                self.path,
                stat.ephemeralOwner,
                data[:200],
            )
            with contextlib.suppress(NoNodeError, BadVersionError):
                client.delete(self.path, version=stat.version)
        raise RegistrationError(
            f"registry: {self.path} keeps being re-created by another session; "
            f"is a second leaf running as cell {self.cell!r}?"
        )
