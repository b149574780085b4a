"""Test helpers for the image cache and boot HTTP server: a local image source and a client.

``ImageSource`` is a stdlib HTTP server on 127.0.0.1 in a thread. It serves byte strings
registered per path, counts requests per path, and can misbehave on purpose: answer with an
HTTP error, hold a response until the test releases it (for single-flight and timeout tests,
without sleeping), promise more bytes than it sends, or omit Content-Length.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Fetched",
    "ImageSource",
    "Route",
    "checksum_of",
    "http_get",
    "image_bytes",
    "listing",
    "place_image",
    "raw_request",
]

# Long enough never to matter; only guards a test that would otherwise hang forever.
_GATE_LIMIT = 60.0


def image_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes of ``size`` (distinct per seed)."""
    block = hashlib.sha256(f"image-{seed}".encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


def checksum_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def place_image(directory: Path, data: bytes) -> str:
    """Writes ``data`` into a cache directory as a verified image would be; returns the hex."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    (directory / digest).write_bytes(data)
    return digest


@dataclass
class Route:
    data: bytes = b""
    status: int = 200
    gate: threading.Event | None = None
    truncate: bool = False
    no_length: bool = False


@dataclass
class ImageSource:
    """Serves registered paths on 127.0.0.1:0; ``requests`` counts GETs per path."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with source.arrived:
                    source.requests[self.path] += 1
                    source.arrived.notify_all()
                route = source.routes.get(self.path)
                if route is None:
                    route = Route(data=b"no such file\n", status=404)
                if route.gate is not None:
                    route.gate.wait(_GATE_LIMIT)
                self.send_response(route.status)
                self.send_header("Content-Type", "application/octet-stream")
                if route.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    promised = len(route.data) * 2 if route.truncate else len(route.data)
                    self.send_header("Content-Length", str(promised))
                self.end_headers()
                try:
                    self.wfile.write(route.data)
                except OSError:
                    return
                if route.truncate:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def serve(self, path: str, data: bytes, **behaviour: object) -> str:
        """Registers ``data`` at ``path``; returns its full URL."""
        self.routes[path] = Route(data=data, **behaviour)  # type: ignore[arg-type]
        return self.base + path

    def wait_for_request(self, path: str, count: int = 1) -> None:
        """Blocks (in a thread) until ``path`` has been requested ``count`` times."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.requests[path] >= count, _GATE_LIMIT):
                raise AssertionError(f"{path} was never requested")

    def release_all(self) -> None:
        for route in self.routes.values():
            if route.gate is not None:
                route.gate.set()

    def stop(self) -> None:
        self.release_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    size: int
    sha256: str


def http_get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", keep: bool = True
) -> Fetched:
    """A blocking GET/HEAD with http.client: an independent client for the server under test.

    The body is hashed as it streams; ``keep=False`` discards it (large downloads).
    """
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=_GATE_LIMIT)
    try:
        conn.request(method, "/" + path, headers=headers or {})
        resp = conn.getresponse()
        digest = hashlib.sha256()
        kept = bytearray()
        size = 0
        while chunk := resp.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
            if keep:
                kept += chunk
        return Fetched(
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            bytes(kept),
            size,
            digest.hexdigest(),
        )
    finally:
        conn.close()


def raw_request(port: int, payload: bytes) -> bytes:
    """Sends raw bytes to 127.0.0.1:port and returns everything the server sends until it
    closes the connection (requests should ask for ``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=_GATE_LIMIT) as sock:
        sock.sendall(payload)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)


def listing(directory: Path) -> list[str]:
    """The names in a cache directory, hidden (partial) files included."""
    return sorted(os.listdir(directory))
