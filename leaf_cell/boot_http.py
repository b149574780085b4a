"""The leaf's boot and image HTTP server: iPXE scripts, deploy ramdisk files and cached images.

A node PXE-boots into iPXE, which fetches ``/boot/{mac}`` for its per-node script; the script
chain-loads the deploy ramdisk from ``/agent/...``; the deploy agent then streams its image
from ``/images/{sha256}``, straight out of the cell's :class:`~leaf_cell.image_cache.ImageCache`.
All of that traffic stays inside the rack, on the provisioning network.

This is deliberately a small asyncio HTTP/1.1 server rather than a framework: it needs GET and
HEAD on four routes, but it must serve a whole rack's boot storm without buffering images in
memory. Files go out with ``loop.sendfile`` (zero-copy where the OS allows, chunked reads in a
thread otherwise), with the stream's flow control as backpressure. Single byte ranges
(RFC 7233) let an agent resume an interrupted download instead of starting over.

Every request is logged at DEBUG with peer, method, path, status, bytes and milliseconds: the
access log is how an operator proves that a node did (or did not) fetch its script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from common.keys import normalize_mac
from leaf_cell.image_cache import ImageCache

__all__ = ["BootHttpServer", "BootScriptFn"]

log = logging.getLogger(__name__)

BootScriptFn = Callable[[str], Awaitable[str | None]]
"""Normalized MAC (``aa:bb:cc:dd:ee:ff``) → iPXE script text, or None for an unknown MAC."""

_MAX_LINE = 8192
_MAX_HEADERS = 100
_IDLE_TIMEOUT = 30.0
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
_RANGE = re.compile(r"^(\d*)-(\d*)$")
_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
}


class _BadRequest(Exception):
    pass


class _NotSatisfiable(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told otherwise; a request body we would
        have to skip ends it too."""
        connection = self.headers.get("connection", "").lower()
        if "transfer-encoding" in self.headers or self.headers.get("content-length", "0") != "0":
            return False
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: BinaryIO | None = None
    offset: int = 0
    count: int = 0

    @classmethod
    def text(cls, status: int, text: str, *extra: tuple[str, str]) -> _Response:
        body = text.encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), *extra]
        return cls(status, [*headers, ("Content-Length", str(len(body)))], body)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A ``Range`` header → (first, last) inclusive byte positions, or None to send it all.

    Only single ``bytes`` ranges are honoured; anything else (other units, several ranges,
    bad syntax) is ignored, as RFC 7233 allows. Raises _NotSatisfiable when the range lies
    wholly past the end of a ``size``-byte representation.
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.match(spec.strip())
    if match is None or match.group(0) == "-":
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _NotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _NotSatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """Reads one request head; None when the client closed the connection between requests."""
    line = await reader.readline()
    for _ in range(4):  # RFC 7230 §3.5: tolerate stray empty lines before a request.
        if line not in (b"\r\n", b"\n"):
            break
        line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(f"unsupported protocol {version[:16]!r}")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n"):
            return _Request(method, target, version, headers)
        name, sep, value = raw.decode("latin-1").partition(":")
        if not raw.endswith(b"\n") or not sep or not name or name != name.strip():
            raise _BadRequest("malformed header")
        headers[name.lower()] = value.strip()
    raise _BadRequest("too many headers")


def _split_path(target: str) -> list[str] | None:
    """The decoded path segments of an origin-form (or absolute-form) target."""
    path = urllib.parse.urlsplit(target).path if "://" in target else target.partition("?")[0]
    if not path.startswith("/"):
        return None
    return [urllib.parse.unquote(segment) for segment in path[1:].split("/")]


class BootHttpServer:
    """Serves ``/boot/{mac}``, ``/images/{sha256}``, ``/agent/{file}`` and ``/healthz``.

    ``advertise_host`` is the host put into :attr:`base_url`; it defaults to the listen host,
    or to 127.0.0.1 for a wildcard listen address, which nodes cannot connect to (a cell
    listening on all addresses should advertise its provisioning-network address).
    """

    def __init__(
        self,
        listen: str,
        cache: ImageCache,
        boot_script: BootScriptFn,
        *,
        agent_dir: Path | None = None,
        advertise_host: str | None = None,
    ) -> None:
        self._host, self._port = _split_listen(listen)
        self._cache = cache
        self._boot_script = boot_script
        self._agent_dir = agent_dir
        wildcard = self._host in _WILDCARDS
        self._advertise = advertise_host or ("127.0.0.1" if wildcard else self._host)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> int:
        """Starts listening; returns the bound port (listen ``HOST:0`` picks a free one)."""
        if self._server is not None:
            raise RuntimeError("boot HTTP server already started")
        host = None if self._host in _WILDCARDS else self._host
        self._server = await asyncio.start_server(
            self._serve_connection, host, self._port, limit=_MAX_LINE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("boot HTTP server listening on %s", self.base_url)
        return self._port

    async def stop(self) -> None:
        """Stops listening and drops every open connection, mid-download or idle."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` as nodes should use it."""
        if self._port == 0:
            raise RuntimeError("boot HTTP server not started: its port is not known yet")
        host = self._advertise
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def image_url(self, sha256: str) -> str:
        """Where nodes fetch the cached image with this digest (bare hex or ``sha256:HEX``)."""
        return f"{self.base_url}/images/{sha256.strip().lower().removeprefix('sha256:')}"

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else "-"
        try:
            keep_alive = True
            while keep_alive:
                try:
                    async with asyncio.timeout(_IDLE_TIMEOUT):
                        request = await _read_request(reader)
                except (_BadRequest, ValueError) as exc:
                    response = _Response.text(400, f"{exc}\n")
                    await self._send(
                        writer, None, response, peer, keep_alive=False, started=time.perf_counter()
                    )
                    break
                if request is None:
                    break
                started = time.perf_counter()
                keep_alive = request.keep_alive
                response = await self._route(request)
                await self._send(
                    writer, request, response, peer, keep_alive=keep_alive, started=started
                )
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # idle keep-alive connection, or the client went away
        except Exception:
            log.exception("boot HTTP connection from %s failed", peer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)

    async def _route(self, request: _Request) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _Response.text(405, "only GET and HEAD\n", ("Allow", "GET, HEAD"))
        segments = _split_path(request.target)
        if segments is None:
            return _Response.text(400, "bad request target\n")
        match segments:
            case ["healthz"]:
                return _Response.text(200, "ok")
            case ["boot", mac_text]:
                return await self._boot(mac_text)
            case ["images", digest]:
                return self._image(digest, request)
            case ["agent", *parts] if parts:
                return self._agent_file(parts, request)
        return _Response.text(404, "not found\n")

    async def _boot(self, mac_text: str) -> _Response:
        mac = normalize_mac(mac_text)
        if mac is None:
            return _Response.text(400, f"{mac_text[:64]!r} is not a MAC address\n")
        try:
            script = await self._boot_script(mac)
        except Exception:
            log.exception("boot script for %s failed", mac)
            return _Response.text(500, "cannot build the boot script\n")
        if script is None:
            return _Response.text(404, f"unknown MAC {mac}\n")
        return _Response.text(200, script, ("Cache-Control", "no-store"))

    def _image(self, digest: str, request: _Request) -> _Response:
        image = self._cache.lookup(digest)
        if image is None:
            return _Response.text(404, "no such image in this cell's cache\n")
        # Opened in the same step as the lookup: once open, eviction cannot take it away.
        try:
            file = image.path.open("rb")
        except OSError:
            return _Response.text(404, "no such image in this cell's cache\n")
        return self._file_response(file, f'"sha256-{image.sha256}"', request)

    def _agent_file(self, parts: list[str], request: _Request) -> _Response:
        if self._agent_dir is None:
            return _Response.text(404, "no agent files configured\n")
        if any(p in ("", ".", "..") or "/" in p or "\\" in p or "\0" in p for p in parts):
            return _Response.text(400, "bad file name\n")
        try:
            file = self._agent_dir.joinpath(*parts).open("rb")
        except OSError:
            return _Response.text(404, "no such agent file\n")
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            file.close()
            return _Response.text(404, "no such agent file\n")
        return self._file_response(file, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', request)

    def _file_response(self, file: BinaryIO, etag: str, request: _Request) -> _Response:
        size = os.fstat(file.fileno()).st_size
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
        ]
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range != etag:
            range_header = None  # the client's partial copy is of something else: send it all
        try:
            span = _parse_range(range_header, size)
        except _NotSatisfiable:
            file.close()
            return _Response.text(
                416, "range not satisfiable\n", ("Content-Range", f"bytes */{size}")
            )
        if span is None:
            headers.append(("Content-Length", str(size)))
            return _Response(200, headers, file=file, offset=0, count=size)
        first, last = span
        headers += [
            ("Content-Range", f"bytes {first}-{last}/{size}"),
            ("Content-Length", str(last - first + 1)),
        ]
        return _Response(206, headers, file=file, offset=first, count=last - first + 1)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        request: _Request | None,
        response: _Response,
        peer: str,
        *,
        keep_alive: bool,
        started: float,
    ) -> None:
        """Writes the response (no body for HEAD) and logs the access line."""
        sent = 0
        try:
            head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}"]
            head += [f"{name}: {value}" for name, value in response.headers]
            head += [
                "Server: rackcells-leaf",
                f"Connection: {'keep-alive' if keep_alive else 'close'}",
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if request is not None and request.method == "HEAD":
                await writer.drain()
            elif response.file is not None:
                await writer.drain()
                if response.count:
                    sent = await asyncio.get_running_loop().sendfile(
                        writer.transport, response.file, response.offset, response.count
                    )
            else:
                writer.write(response.body)
                sent = len(response.body)
                await writer.drain()
        finally:
            if response.file is not None:
                response.file.close()
            log.debug(
                "%s %s %s %d %d bytes %.1f ms",
                peer,
                request.method if request else "-",
                request.target[:200] if request else "-",
                response.status,
                sent,
                (time.perf_counter() - started) * 1000,
            )
