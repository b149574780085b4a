"""ZooKeeper connection settings shared by the leaf (which registers) and the top (which watches).

Both cells name the registry with one setting, ``registry = zk://HOST:PORT[,HOST:PORT...]/PATH``:
the hosts of the ensemble and the znode under which every leaf keeps an ephemeral child named
after its cell. Both sides build their client here so that they agree on the session timeout,
which decides how long a killed leaf stays listed: ZooKeeper removes a dead client's ephemeral
znodes only when its session expires.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry

__all__ = [
    "RECONNECT_MAX_DELAY",
    "SESSION_TIMEOUT",
    "ZkTarget",
    "endpoint_problem",
    "make_client",
    "parse_zk_url",
]

SESSION_TIMEOUT = 4.0
"""Seconds: a leaf killed without closing its session vanishes from the registry after this
(plus up to one server tick). The server must allow it: its minSessionTimeout is 2 ticks."""

RECONNECT_MAX_DELAY = 1.0
"""Seconds between reconnection attempts at most, so that a restarted ZooKeeper is found again
well within the session timeout and sessions (with their ephemeral znodes) survive it."""

log = logging.getLogger(__name__)

_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ZkTarget:
    """Where the registry lives: ``hosts`` as kazoo takes them and the registry's znode path."""

    hosts: str
    path: str

    def __str__(self) -> str:
        return f"zk://{self.hosts}{self.path}"


def _bad(url: str, problem: str) -> ValueError:
    return ValueError(
        f"registry: {url!r} is not a ZooKeeper URL: {problem} "
        "(expected zk://HOST:PORT[,HOST:PORT...]/PATH, e.g. zk://127.0.0.1:2181/rackcells/cells)"
    )


def parse_zk_url(url: str) -> ZkTarget:
    """Parses ``zk://HOST:PORT[,HOST:PORT...]/PATH``; the port is required so that a typo never
    silently means 2181, and the path must name a znode below the root (``/`` would make every
    top-level znode of a shared ensemble look like a cell)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "zk":
        raise _bad(url, "it must start with zk://")
    hosts_part, slash, path_part = rest.partition("/")
    if not hosts_part:
        raise _bad(url, "no HOST:PORT")
    if not slash or not path_part:
        raise _bad(url, "no /PATH for the registry's znode")
    hosts = [item.strip() for item in hosts_part.split(",")]
    for item in hosts:
        problem = endpoint_problem(item)
        if problem:
            raise _bad(url, problem)
    path = "/" + path_part.rstrip("/")
    segments = path_part.rstrip("/").split("/")
    for segment in segments:
        if not _SEGMENT.match(segment) or segment in {".", ".."}:
            raise _bad(
                url,
                f"path segment {segment!r} is empty or has characters other than "
                "letters, digits, '_', '.' and '-'",
            )
    if segments[0] == "zookeeper":
        raise _bad(url, "/zookeeper is reserved by ZooKeeper")
    return ZkTarget(hosts=",".join(hosts), path=path)


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not a ``HOST:PORT`` a cell can be dialled at, or None if it is one.

    Both the leaf (before it publishes its endpoint) and the top (before it routes to a published
    or configured one) check with this, so that a bad endpoint is reported where it is written.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        return f"{endpoint!r} is not HOST:PORT"
    if not _HOST.match(host):
        return f"{endpoint!r}: {host!r} is not a host name or address"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"{endpoint!r}: port {port!r} is not a number from 1 to 65535"
    return None


def make_client(target: ZkTarget, *, timeout: float = 10.0) -> KazooClient:
    """A kazoo client for ``target``, not yet started.

    The session lasts :data:`SESSION_TIMEOUT` seconds without contact; the connection is retried
    forever (a leaf or top outlives a ZooKeeper outage and resyncs afterwards). ``timeout`` bounds
    how long one operation is retried across connection losses (``client.retry``) and is the
    time callers should give ``client.start``.
    """
    connection_retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=RECONNECT_MAX_DELAY)
    command_retry = KazooRetry(
        max_tries=-1, delay=0.1, backoff=2, max_delay=RECONNECT_MAX_DELAY, deadline=timeout
    )
    client = KazooClient(
        hosts=target.hosts,
        timeout=SESSION_TIMEOUT,
        connection_retry=connection_retry,
        command_retry=command_retry,
    )
    _forget_history_when_stranded(client)
    return client


def _forget_history_when_stranded(client: KazooClient) -> None:
    """Lets a client reconnect to a ZooKeeper that came back without its data.

    A server refuses a client that has seen a newer transaction (zxid) than the server has, so
    that the client never goes back in time. After ZooKeeper lost its data (a restart without a
    persistent volume) every client is refused forever and the federation stays split until
    each leaf and the top is restarted. Once a client has been disconnected for a whole session
    timeout its session is over anyway (or ZooKeeper was down too, and then kept everything), so
    it then forgets the last zxid it saw: the server expires the old session, kazoo opens a new
    one, and registration and watches resync. The price is that after a long partition a client
    may briefly read from a lagging server, which a registry that converges on watches tolerates.
    """
    lock = threading.Lock()
    pending: list[threading.Timer] = []

    def forget() -> None:
        if not client.connected and client.last_zxid:
            log.info(
                "ZooKeeper unreachable for %g s: forgetting the last zxid seen", SESSION_TIMEOUT
            )
            client.last_zxid = 0

    def on_state(state: str) -> None:
        with lock:
            for timer in pending:
                timer.cancel()
            pending.clear()
            if state == KazooState.SUSPENDED:
                timer = threading.Timer(SESSION_TIMEOUT, forget)
                timer.daemon = True
                timer.start()
                pending.append(timer)

    client.add_listener(on_state)
