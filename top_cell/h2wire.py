"""Just enough HTTP/2 (RFC 9113) to relay gRPC calls frame by frame: framing, SETTINGS, PING,
GOAWAY and flow control in both directions; header blocks are :mod:`top_cell.hpack_blocks`.

:class:`H2Connection` is one end of one TCP (or Unix) connection. It answers what the protocol
asks of it by itself (SETTINGS acknowledgements, PING replies, window bookkeeping) and hands
the rest to its subclass as whole header blocks, data chunks, resets and goaways.

What it deliberately leaves out, because a gRPC relay never needs it: server push (disabled in
the SETTINGS it sends) and priorities (ignored).

Flow control: this end advertises large windows (:data:`STREAM_WINDOW`, :data:`CONN_WINDOW`)
and gives credit back only once the bytes have been handed on (see ``on_sent`` in
:meth:`H2Connection.send_data`), so a slow reader on one side slows its writer on the other
instead of filling the relay's memory. Outgoing DATA respects the peer's windows and maximum
frame size and waits in a per-stream queue when they are exhausted.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import hpack

from top_cell.hpack_blocks import BlockDecoder, Headers, encode_headers

__all__ = [
    "CANCEL",
    "CONN_WINDOW",
    "PREFACE",
    "REFUSED_STREAM",
    "STREAM_WINDOW",
    "H2Connection",
    "Headers",
]

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x7, 0x8, 0x9

_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT = 0x1, 0x2, 0x3
_INITIAL_WINDOW, _MAX_FRAME = 0x4, 0x5

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
MAX_WINDOW = (1 << 31) - 1
STREAM_WINDOW = 1 << 20
"""Receive window this end advertises per stream."""
CONN_WINDOW = 16 << 20
"""Receive window this end keeps open per connection."""


# While a connection handles what it received, writes of every connection are held here and
# written once at the end (see H2Connection.data_received); the loop runs one callback at a time.
_corked: list[H2Connection] = []
_dirty: list[H2Connection] = []


class ProtocolError(Exception):
    """The peer broke HTTP/2; the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


@dataclass
class _Out:
    """What is waiting to go out on one stream, in order: DATA chunks (with the callback that
    gives credit back to wherever they came from) and header blocks."""

    window: int
    queue: deque[tuple[bytes, bool, bool, Callable[[int], None] | None]] = field(
        default_factory=deque
    )
    ended: bool = False


class H2Connection(asyncio.Protocol):
    """One end of an HTTP/2 connection; subclasses say who they are and what streams carry."""

    client_side = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_pending = not self.client_side
        self._decoder = BlockDecoder()
        self._continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._peer_window = DEFAULT_WINDOW
        self._peer_frame = DEFAULT_FRAME
        self._conn_send = DEFAULT_WINDOW
        self._out: dict[int, _Out] = {}
        self._blocked: set[int] = set()
        self._conn_credit = 0
        self._stream_credit: dict[int, int] = {}
        self.paused = False
        self._on_resume: list[Callable[[], None]] = []
        self._held: list[bytes] = []
        self.closed = False

    # -- subclass interface -----------------------------------------------------------------

    def on_headers(self, stream: int, headers: Headers, end: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream: int, data: bytes, flow: int, end: bool) -> None:
        """``flow`` is what the frame counted against the window (padding included); give it
        back with :meth:`credit` once the data has gone on."""
        raise NotImplementedError

    def on_reset(self, stream: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_stream: int) -> None:
        """The peer will process no stream above ``last_stream``."""

    def on_lost(self) -> None:
        """The connection is gone; every stream on it is over."""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses, so no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        settings = struct.pack(
            ">HIHIHI",
            _ENABLE_PUSH,
            0,
            _INITIAL_WINDOW,
            STREAM_WINDOW,
            _MAX_FRAME,
            DEFAULT_FRAME,
        )
        opening = PREFACE if self.client_side else b""
        opening += frame(SETTINGS, 0, 0, settings)
        opening += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONN_WINDOW - DEFAULT_WINDOW))
        self.transport.write(opening)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiting, self._on_resume = self._on_resume, []
        for callback in waiting:
            callback()

    def data_received(self, data: bytes) -> None:
        """Handles every whole frame received. What that makes any connection send is held
        until the end and written once per connection: one system call, not one per frame."""
        if _corked:
            self._receive(data)
            return
        _corked.append(self)
        try:
            self._receive(data)
        finally:
            del _corked[:]
            dirty = list(_dirty)
            _dirty.clear()
            for conn in dirty:
                conn._uncork()

    def _receive(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        if self._preface_pending:
            if len(buffer) < len(PREFACE):
                return
            if not buffer.startswith(PREFACE):
                self._fail(ProtocolError("not an HTTP/2 client preface"))
                return
            self._preface_pending = False
            start = len(PREFACE)
        end = len(buffer)
        try:
            while end - start >= 9:
                length = buffer[start] << 16 | buffer[start + 1] << 8 | buffer[start + 2]
                if length > DEFAULT_FRAME:
                    raise ProtocolError(f"frame of {length} bytes", 0x6)
                if end - start < 9 + length:
                    break
                kind, flags = buffer[start + 3], buffer[start + 4]
                stream = int.from_bytes(buffer[start + 5 : start + 9]) & 0x7FFFFFFF
                payload = bytes(buffer[start + 9 : start + 9 + length])
                start += 9 + length
                self._frame(kind, flags, stream, payload)
                if self.closed:
                    return
        except ProtocolError as exc:
            self._fail(exc)
            return
        del buffer[:start]

    # -- receiving --------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise ProtocolError("header block interrupted")
        if kind == DATA:
            if stream == 0:
                raise ProtocolError("DATA on stream 0")
            self.on_data(stream, _unpad(flags, payload), len(payload), bool(flags & END_STREAM))
        elif kind == HEADERS:
            block = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                block = block[5:]
            if flags & END_HEADERS:
                self._headers(stream, flags, block)
            else:
                self._continuing = (stream, flags, bytearray(block))
        elif kind == CONTINUATION:
            if self._continuing is None or self._continuing[0] != stream:
                raise ProtocolError("CONTINUATION without HEADERS")
            self._continuing[2].extend(payload)
            if flags & END_HEADERS:
                first, self._continuing = self._continuing, None
                self._headers(first[0], first[1], bytes(first[2]))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream, int.from_bytes(payload[:4]) & 0x7FFFFFFF)
        elif kind == RST_STREAM:
            self._forget(stream)
            self.on_reset(stream, int.from_bytes(payload[:4]))
        elif kind == GOAWAY:
            self.on_goaway(int.from_bytes(payload[:4]) & 0x7FFFFFFF)
        elif kind == PUSH_PROMISE:
            raise ProtocolError("push is disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 §5.5 asks.

    def _headers(self, stream: int, flags: int, block: bytes) -> None:
        try:
            decoded = self._decoder.decode(block)
        except hpack.HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}", COMPRESSION_ERROR) from None
        self.on_headers(stream, decoded, bool(flags & END_STREAM))

    def _settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == _INITIAL_WINDOW:
                if value > MAX_WINDOW:
                    raise ProtocolError("initial window too large", FLOW_CONTROL_ERROR)
                delta, self._peer_window = value - self._peer_window, value
                for out in self._out.values():
                    out.window += delta
            elif key == _MAX_FRAME:
                self._peer_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        for stream in list(self._out):
            self._flush(stream)

    def _window_update(self, stream: int, increment: int) -> None:
        if stream == 0:
            self._conn_send += increment
            for blocked in list(self._blocked):
                self._flush(blocked)
            return
        out = self._out.get(stream)
        if out is not None:
            out.window += increment
            self._flush(stream)

    def credit(self, stream: int, amount: int) -> None:
        """Gives ``amount`` bytes of receive window back to the peer, once they have gone on.
        Updates go out in batches: a quarter of a window at a time."""
        if amount <= 0 or self.closed:
            return
        updates = b""
        self._conn_credit += amount
        if self._conn_credit >= CONN_WINDOW // 4:
            updates += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._conn_credit))
            self._conn_credit = 0
        if stream in self._stream_credit:
            owed = self._stream_credit[stream] + amount
            if owed >= STREAM_WINDOW // 4:
                updates += frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", owed))
                owed = 0
            self._stream_credit[stream] = owed
        if updates:
            self._write(updates)

    # -- sending ----------------------------------------------------------------------------

    def open_stream(self, stream: int) -> None:
        """Starts the books of a stream: its send window and the credit owed on it."""
        self._out[stream] = _Out(self._peer_window)
        self._stream_credit[stream] = 0

    def send_headers(self, stream: int, headers: Headers, end: bool) -> None:
        out = self._out.get(stream)
        if out is None or out.ended:
            return
        out.queue.append((encode_headers(headers), end, True, None))
        out.ended = end
        self._flush(stream)

    def send_data(
        self, stream: int, data: bytes, end: bool, on_sent: Callable[[int], None] | None = None
    ) -> None:
        """Queues DATA; ``on_sent(len(data))`` runs once it is all written and the transport
        is not pushing back (with nothing written, at once)."""
        out = self._out.get(stream)
        if out is None or out.ended:
            return
        out.queue.append((data, end, False, on_sent))
        out.ended = end
        self._flush(stream)

    def reset(self, stream: int, code: int = CANCEL) -> None:
        if stream in self._out or stream in self._stream_credit:
            self._forget(stream)
            self._write(frame(RST_STREAM, 0, stream, struct.pack(">I", code)))

    def goaway(self, last_stream: int, code: int = NO_ERROR) -> None:
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code)))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _flush(self, stream: int) -> None:
        out = self._out.get(stream)
        if out is None:
            return
        chunks: list[bytes] = []
        done: list[tuple[Callable[[int], None], int]] = []
        queue = out.queue
        while queue:
            payload, end, is_headers, on_sent = queue[0]
            if is_headers:
                chunks.append(self._header_frames(stream, payload, end))
                queue.popleft()
                continue
            room = min(out.window, self._conn_send, self._peer_frame)
            if room <= 0 and payload:
                self._blocked.add(stream)
                break
            piece = payload[:room]
            out.window -= len(piece)
            self._conn_send -= len(piece)
            last = len(piece) == len(payload)
            chunks.append(frame(DATA, END_STREAM if end and last else 0, stream, piece))
            if last:
                queue.popleft()
                if on_sent is not None:
                    done.append((on_sent, len(payload)))
            else:
                queue[0] = (payload[len(piece) :], end, False, on_sent)
        else:
            self._blocked.discard(stream)
            if out.ended:
                del self._out[stream]
        if chunks:
            self._write(b"".join(chunks))
        for callback, amount in done:
            self.after_write(partial(callback, amount))

    def after_write(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` now, or when the transport stops pushing back."""
        if self.paused:
            self._on_resume.append(callback)
        else:
            callback()

    def _header_frames(self, stream: int, block: bytes, end: bool) -> bytes:
        size = self._peer_frame
        first, rest = block[:size], block[size:]
        flags = (END_STREAM if end else 0) | (0 if rest else END_HEADERS)
        frames = [frame(HEADERS, flags, stream, first)]
        while rest:
            piece, rest = rest[:size], rest[size:]
            frames.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream, piece))
        return b"".join(frames)

    def finish_stream(self, stream: int) -> None:
        """Both directions are over: drop the stream's books."""
        self._stream_credit.pop(stream, None)
        out = self._out.get(stream)
        if out is not None and not out.queue:
            del self._out[stream]

    def _forget(self, stream: int) -> None:
        """Drops a stream's books; DATA it will never send gives its credit back at once."""
        out = self._out.pop(stream, None)
        if out is not None:
            for payload, _end, _headers, on_sent in out.queue:
                if on_sent is not None:
                    on_sent(len(payload))
        self._blocked.discard(stream)
        self._stream_credit.pop(stream, None)

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if _corked:
            if not self._held:
                _dirty.append(self)
            self._held.append(data)
        else:
            self.transport.write(data)

    def _uncork(self) -> None:
        held, self._held = self._held, []
        if held and self.transport is not None and not self.closed:
            self.transport.write(b"".join(held))

    def _fail(self, exc: ProtocolError) -> None:
        log.warning("HTTP/2 peer error, closing the connection: %s", exc)
        self.closed = True
        if self.transport is not None:
            # written at once, not held with this round's other writes: nothing follows it
            held, self._held = b"".join(self._held), []
            goaway = frame(GOAWAY, 0, 0, struct.pack(">II", 0, exc.code))
            self.transport.write(held + goaway)
            self.transport.close()
