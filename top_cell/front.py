"""The top cell's front door: an HTTP/2 relay that sends named calls straight to their leaf.

Every call to the top arrives here first. A call that only needs routing (GetNode, a one-cell
ListNodes or WatchNodes, power, boot device, provision actions, delete, and the Operations
methods on one cell's operations) is relayed frame by frame to the owning leaf over one
multiplexed HTTP/2 connection per leaf: the caller's headers (deadline, metadata, trace context)
go out as they came, and the leaf's answer comes back as it was sent, status and details
included. Everything else, and every named call the front cannot vouch for (a malformed or
compressed request, an unknown or DOWN cell, a leaf it cannot connect to), goes to the top's own
gRPC server (:mod:`top_cell.router` and the other services) on a private Unix socket, which
answers exactly as before. The front therefore changes no answer; it only removes work from
the hot path.

Why a hand-made relay instead of a gRPC proxy: in Python, a gRPC server call and a gRPC client
call each cost about a millisecond of CPU here, in C-core threads waking each other and the
event loop. Relaying frames on the event loop costs a third of that, so a read through the top
costs little more than the same read at the leaf (``bench/federation.py`` (a) and
``bench/grpc_hop.py`` show both).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from google.longrunning import operations_pb2
from google.protobuf.message import DecodeError, Message

from common.errors import RackcellsError, Unavailable
from common.grpc_errors import status_of
from common.names import ALL_CELLS, parse_cell, parse_node_name
from common.server import parse_hostport
from rackcells.v1 import node_service_pb2
from top_cell.h2wire import CANCEL, REFUSED_STREAM, H2Connection, Headers, ProtocolError
from top_cell.router import NODE_SERVICE, OPERATIONS_SERVICE, operation_cell

__all__ = ["Front", "FrontSocket", "Routes", "cell_of_call", "private_socket"]

log = logging.getLogger(__name__)

INTERNAL = "internal"
"""The pool key of the top's own gRPC server."""
CONNECT_TIMEOUT = 5.0
MAX_ROUTING_BYTES = 64 * 1024
"""A call the front could relay straight names its cell in a small first message (a name, a
parent, a filter). One that has sent this much without completing it goes to the top's own
servicers instead: bytes held while deciding are not credited back, so waiting for more could
stall on the caller's flow-control window."""
USER_AGENT = b"rackcells-top"


class Routes(Protocol):
    """What the front needs of :class:`top_cell.cells.CellDirectory`."""

    def endpoint(self, cell: str) -> str | None:
        """HOST:PORT of a known cell that is not DOWN; None otherwise."""
        ...


def _node_cell(request: Any) -> str:
    return parse_node_name(request.name).cell


def _one_cell(parent: str) -> str | None:
    cell = parse_cell(parent, "parent", allow_all=True)
    return None if cell == ALL_CELLS else cell


def _parent_cell(request: Any) -> str | None:
    return _one_cell(request.parent)


def _operation_cell(request: Any) -> str:
    return operation_cell(request.name)


def _operations_cell(request: Any) -> str | None:
    return _one_cell(request.name.removesuffix("/operations"))


# path -> (request type, the one cell the call is for, or None for "not a plain relay")
_ROUTED: dict[bytes, tuple[type[Message], Callable[[Any], str | None]]] = {
    f"/{service}/{method}".encode(): route
    for service, routes in (
        (
            NODE_SERVICE,
            {
                "GetNode": (node_service_pb2.GetNodeRequest, _node_cell),
                "ListNodes": (node_service_pb2.ListNodesRequest, _parent_cell),
                "WatchNodes": (node_service_pb2.WatchNodesRequest, _parent_cell),
                "DeleteNode": (node_service_pb2.DeleteNodeRequest, _node_cell),
                "SetPowerState": (node_service_pb2.SetPowerStateRequest, _node_cell),
                "SetBootDevice": (node_service_pb2.SetBootDeviceRequest, _node_cell),
                "ChangeProvisionState": (
                    node_service_pb2.ChangeProvisionStateRequest,
                    _node_cell,
                ),
            },
        ),
        (
            OPERATIONS_SERVICE,
            {
                "GetOperation": (operations_pb2.GetOperationRequest, _operation_cell),
                "ListOperations": (operations_pb2.ListOperationsRequest, _operations_cell),
                "WaitOperation": (operations_pb2.WaitOperationRequest, _operation_cell),
                "CancelOperation": (operations_pb2.CancelOperationRequest, _operation_cell),
                "DeleteOperation": (operations_pb2.DeleteOperationRequest, _operation_cell),
            },
        ),
    )
    for method, route in routes.items()
}


def cell_of_call(path: bytes, body: bytes) -> str | None:
    """The cell a call only needs relaying to, from its path and its first gRPC message; None
    when the top's own servicers must see it (including any request they would refuse)."""
    route = _ROUTED.get(path)
    if route is None or len(body) < 5 or body[0] != 0:  # compressed: let gRPC deal with it
        return None
    size = int.from_bytes(body[1:5])
    if len(body) < 5 + size:
        return None
    request_type, cell_of = route
    try:
        return cell_of(request_type.FromString(body[5 : 5 + size]))
    except (RackcellsError, DecodeError):
        return None


def _percent(text: str) -> bytes:
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


def error_headers(err: RackcellsError, response_started: bool) -> Headers:
    """The trailers of a call the front ends itself, in gRPC's wire form."""
    status = status_of(err)
    details = base64.b64encode(status.SerializeToString()).rstrip(b"=")
    trailers: Headers = [
        (b"grpc-status", str(status.code).encode()),
        (b"grpc-message", _percent(status.message)),
        (b"grpc-status-details-bin", details),
    ]
    if response_started:
        return trailers
    return [(b":status", b"200"), (b"content-type", b"application/grpc"), *trailers]


class _Call:
    """One call: the caller's stream on a downstream connection, and (once routed) the
    stream on an upstream connection it is relayed to."""

    __slots__ = (
        "answered", "body", "cell", "client_ended", "down", "down_id", "headers", "over",
        "owed", "path", "target", "up", "up_id",
    )  # fmt: skip

    def __init__(self, down: Downstream, down_id: int, headers: Headers) -> None:
        self.down = down
        self.down_id = down_id
        self.headers = headers
        self.path = next((v for k, v in headers if k == b":path"), b"")
        self.body = bytearray()
        self.owed = 0  # receive window used by bytes held here, given back once they go on
        self.client_ended = False
        self.target: str | None = None
        self.cell = ""
        self.up: Upstream | None = None
        self.up_id = 0
        self.answered = False
        self.over = False

    # -- from the caller --------------------------------------------------------------------

    def from_client(self, data: bytes, flow: int, end: bool) -> None:
        self.client_ended = end
        if self.up is not None:
            down, down_id = self.down, self.down_id
            self.up.send_data(self.up_id, data, end, lambda _n: down.credit(down_id, flow))
            return
        self.body += data
        self.owed += flow
        if self.target is None:
            self.route()

    def route(self) -> None:
        """Picks where the call goes, as soon as that can be known."""
        front = self.down.front
        if self.path not in _ROUTED:
            self.target = INTERNAL
        else:
            cell = cell_of_call(self.path, bytes(self.body))
            endpoint = front.routes.endpoint(cell) if cell is not None else None
            if endpoint is not None:
                self.cell, self.target = cell or "", endpoint
                front.endpoints[self.cell] = endpoint
            elif cell is not None or self.client_ended or len(self.body) >= MAX_ROUTING_BYTES:
                self.target = INTERNAL
            elif len(self.body) >= 5 and len(self.body) >= 5 + int.from_bytes(self.body[1:5]):
                self.target = INTERNAL  # a whole first message, but not a plain relay
            else:
                return  # the first message is still arriving
        front.pool.submit(self.target, self)

    def begin(self, up: Upstream, up_id: int) -> None:
        """Sends what arrived so far on the upstream stream ``up_id``."""
        self.up, self.up_id = up, up_id
        headers = self.headers
        if self.target != INTERNAL:
            headers = [(k, USER_AGENT if k == b"user-agent" else v) for k, v in headers]
        up.send_headers(up_id, headers, self.client_ended and not self.body)
        body, owed, self.body, self.owed = bytes(self.body), self.owed, bytearray(), 0
        down, down_id = self.down, self.down_id
        if body:
            up.send_data(up_id, body, self.client_ended, lambda _n: down.credit(down_id, owed))
        else:
            down.credit(down_id, owed)

    def not_connected(self, why: str) -> None:
        """The target could not be reached and nothing was sent: the top's own servicers
        decide (they name the cell in an UNAVAILABLE of their own)."""
        if self.over:
            return
        if self.target == INTERNAL:
            self.fail(Unavailable(f"the top cell's router is unavailable: {why}"))
            return
        self.target = INTERNAL
        self.down.front.pool.submit(INTERNAL, self)

    def client_reset(self) -> None:
        if self.up is not None:
            self.up.reset(self.up_id, CANCEL)
        self.finish()

    # -- from the upstream ------------------------------------------------------------------

    def from_leaf_headers(self, headers: Headers, end: bool) -> None:
        self.answered = True
        self.down.send_headers(self.down_id, headers, end)
        if end:
            self.finish()

    def from_leaf_data(self, data: bytes, flow: int, end: bool) -> None:
        up, up_id = self.up, self.up_id
        assert up is not None
        self.down.send_data(self.down_id, data, end, lambda _n: up.credit(up_id, flow))
        if end:
            self.finish()

    def leaf_reset(self, code: int) -> None:
        self.down.reset(self.down_id, code)
        self.finish()

    def leaf_lost(self) -> None:
        where = f"cell {self.cell}" if self.cell else "the top cell's router"
        meta = {"cell": f"cells/{self.cell}"} if self.cell else {}
        why = f"{where} closed the connection before the call ended"
        self.fail(Unavailable(why, metadata=meta))

    def fail(self, err: RackcellsError) -> None:
        if self.over:
            return
        self.down.send_headers(self.down_id, error_headers(err, self.answered), True)
        if self.up is not None:
            self.up.reset(self.up_id, CANCEL)
        self.finish()

    def finish(self) -> None:
        if self.over:
            return
        self.over = True
        self.down.calls.pop(self.down_id, None)
        self.down.finish_stream(self.down_id)
        if self.up is not None:
            self.up.calls.pop(self.up_id, None)
            self.up.finish_stream(self.up_id)
            self.up.front.pool.idle(self.up)
        if self.owed:
            self.down.credit(self.down_id, self.owed)
            self.owed = 0


class _Side(H2Connection):
    """Either end of the relay: a connection whose streams each belong to one call."""

    def __init__(self, front: Front) -> None:
        super().__init__()
        self.front = front
        self.calls: dict[int, _Call] = {}

    def on_data(self, stream: int, data: bytes, flow: int, end: bool) -> None:
        call = self.calls.get(stream)
        if call is None:  # the call is over: the bytes only count against the connection
            self.credit(stream, flow)
        else:
            self.deliver(call, data, flow, end)

    def on_reset(self, stream: int, code: int) -> None:
        call = self.calls.get(stream)
        if call is not None:
            self.cancelled(call, code)

    def deliver(self, call: _Call, data: bytes, flow: int, end: bool) -> None:
        raise NotImplementedError

    def cancelled(self, call: _Call, code: int) -> None:
        raise NotImplementedError


class Downstream(_Side):
    """A caller's connection to the top."""

    def __init__(self, front: Front) -> None:
        super().__init__(front)
        self.last_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.front.downstreams.add(self)

    def on_headers(self, stream: int, headers: Headers, end: bool) -> None:
        call = self.calls.get(stream)
        if call is not None:  # trailers from the caller: pass them on with the end of stream
            if call.up is not None:
                call.up.send_headers(call.up_id, headers, end)
            return
        if stream <= self.last_id or not stream % 2:
            raise ProtocolError(f"stream {stream} reused or not a caller's stream")
        if self.front.closing:
            self.open_stream(stream)
            self.reset(stream, REFUSED_STREAM)
            return
        self.last_id = stream
        self.open_stream(stream)
        call = self.calls[stream] = _Call(self, stream, headers)
        call.client_ended = end
        if end:
            call.route()

    def deliver(self, call: _Call, data: bytes, flow: int, end: bool) -> None:
        call.from_client(data, flow, end)

    def cancelled(self, call: _Call, code: int) -> None:
        call.client_reset()

    def on_lost(self) -> None:
        self.front.downstreams.discard(self)
        for call in list(self.calls.values()):
            call.client_reset()


class Upstream(_Side):
    """The front's connection to a leaf (or to the top's own gRPC server)."""

    client_side = True

    def __init__(self, front: Front, target: str) -> None:
        super().__init__(front)
        self.target = target
        self.next_id = 1
        self.draining = False

    def start(self, call: _Call) -> None:
        stream = self.next_id
        self.next_id += 2
        if self.next_id > (1 << 31) - 16:
            self.draining = True  # out of stream ids: the next call opens a new connection
        self.open_stream(stream)
        self.calls[stream] = call
        call.begin(self, stream)

    def on_headers(self, stream: int, headers: Headers, end: bool) -> None:
        call = self.calls.get(stream)
        if call is not None:
            call.from_leaf_headers(headers, end)

    def deliver(self, call: _Call, data: bytes, flow: int, end: bool) -> None:
        call.from_leaf_data(data, flow, end)

    def cancelled(self, call: _Call, code: int) -> None:
        call.leaf_reset(code)

    def on_goaway(self, last_stream: int) -> None:
        self.draining = True
        self.front.pool.forget(self)
        for stream, call in list(self.calls.items()):
            if stream > last_stream:
                call.leaf_lost()
        self.front.pool.idle(self)

    def on_lost(self) -> None:
        self.front.pool.forget(self)
        for call in list(self.calls.values()):
            call.leaf_lost()


class _Pool:
    """One live connection per target, opened on first use; calls wait while it connects."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self._live: dict[str, Upstream] = {}
        self._waiting: dict[str, list[_Call]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, target: str, call: _Call) -> None:
        conn = self._live.get(target)
        if conn is not None and not conn.closed and not conn.draining:
            conn.start(call)
            return
        waiting = self._waiting.get(target)
        if waiting is None:
            waiting = self._waiting[target] = []
            task = asyncio.get_running_loop().create_task(self._connect(target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiting.append(call)

    async def _connect(self, target: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            if target == INTERNAL:
                opening = loop.create_unix_connection(
                    lambda: Upstream(self._front, target), self._front.internal_path
                )
            else:
                host, port = parse_hostport(target, "endpoint")
                opening = loop.create_connection(lambda: Upstream(self._front, target), host, port)
            _, conn = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            for call in self._waiting.pop(target, []):
                call.not_connected(str(exc) or type(exc).__name__)
            return
        self._live[target] = conn
        for call in self._waiting.pop(target, []):
            if not call.over:
                conn.start(call)

    def connection(self, target: str) -> Upstream | None:
        """The live connection to ``target``, if there is one."""
        return self._live.get(target)

    def forget(self, conn: Upstream) -> None:
        if self._live.get(conn.target) is conn:
            del self._live[conn.target]

    def idle(self, conn: Upstream) -> None:
        """Closes a connection that was left behind (GOAWAY, out of ids) once it is empty."""
        if conn.draining and not conn.calls:
            conn.close()

    def drop(self, target: str) -> None:
        """Closes the connection to a target that is gone or moved; its calls fail UNAVAILABLE."""
        conn = self._live.pop(target, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in list(self._live.values()):
            conn.close()
        self._live.clear()
        for task in self._tasks:
            task.cancel()


class Front:
    """The listening relay, its upstream pool and the private socket of the gRPC server."""

    def __init__(self, routes: Routes, internal_path: str) -> None:
        self.routes = routes
        self.internal_path = internal_path
        self.pool = _Pool(self)
        self.downstreams: set[Downstream] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self.endpoints: dict[str, str] = {}
        """Where each cell's calls were last relayed: what :meth:`cell_changed` compares."""

    async def listen(self, listen: str) -> int:
        host, port = parse_hostport(listen, "listen")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Downstream(self), host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def cell_changed(self, cell: str) -> None:
        """A cell went DOWN or moved: the connection to where it was is no longer trusted
        (a half-open TCP connection would otherwise swallow calls until their deadlines)."""
        now = self.routes.endpoint(cell)
        before = self.endpoints.pop(cell, None)
        if before is not None and before != now:
            self.pool.drop(before)

    async def close(self, grace: float) -> None:
        """Stops accepting, tells callers to go elsewhere (GOAWAY), lets calls in flight
        finish for up to ``grace`` seconds, then closes every connection."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for down in self.downstreams:
            down.goaway(down.last_id)
        deadline = asyncio.get_running_loop().time() + grace
        while any(d.calls for d in self.downstreams):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for down in list(self.downstreams):
            down.close()
        self.pool.close()


@dataclass
class FrontSocket:
    """The private Unix socket the top's gRPC server listens on behind the front."""

    directory: Path

    @property
    def path(self) -> str:
        return str(self.directory / "grpc.sock")

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        self.directory.rmdir()


def private_socket() -> FrontSocket:
    """A socket path in a new directory only this user can enter (mode 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="rackcells-top-"))
    os.chmod(directory, 0o700)
    return FrontSocket(directory)
