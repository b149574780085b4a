"""The simulator's HTTP/JSON control API (loopback only).

Tests and, later, the deploy path need to see what the "hardware" did (did the power really go
off? which device did it boot from?) and to break it on purpose.  A tiny stdlib HTTP server in a
thread of the parent process answers for every machine of every worker; the parent's
:class:`MachineDirectory` forwards each request to the worker that owns the machine.

Routes::

    GET  /                          rack summary and per-worker counters
    GET  /machines                  {"machines": [machine, ...]}
    GET  /machines/{name}           machine
    POST /machines/{name}/fault     body: {"clear"?, "unreachable"?, "slow"?, "loss"?,
                                           "bad_credentials"?}  -> machine
    POST /machines/{name}/power     body: {"on": true|false}    -> machine (out of band)

Errors come back as ``{"error": "..."}`` with 400, 404 or 503.  The server binds 127.0.0.1
only: it has no authentication and can power machines off.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

LOG = logging.getLogger(__name__)

CONTROL_ADDRESS = "127.0.0.1"
_MAX_BODY = 64 * 1024


class ControlError(Exception):
    """A request the directory refuses; carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MachineDirectory(Protocol):
    """What the control API needs from the process that knows the machines."""

    def summary(self) -> dict[str, Any]: ...

    def list_machines(self) -> list[dict[str, Any]]: ...

    def get_machine(self, name: str) -> dict[str, Any]: ...

    def set_fault(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def press_power(self, name: str, on: bool) -> dict[str, Any]: ...


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("control %s " + format, self.client_address[0], *args)

    def _dispatch(self, method: str) -> None:
        directory = self.server.directory
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            body = self._read_body() if method == "POST" else {}
            if method == "GET" and not parts:
                result: Any = directory.summary()
            elif method == "GET" and parts == ["machines"]:
                result = {"machines": directory.list_machines()}
            elif method == "GET" and len(parts) == 2 and parts[0] == "machines":
                result = directory.get_machine(parts[1])
            elif method == "POST" and len(parts) == 3 and parts[0] == "machines":
                result = self._post_machine(parts[1], parts[2], body)
            else:
                raise ControlError(HTTPStatus.NOT_FOUND, f"no route {method} {self.path}")
        except ControlError as err:
            self._reply(err.status, {"error": str(err)})
            return
        self._reply(HTTPStatus.OK, result)

    def _post_machine(self, name: str, action: str, body: dict[str, Any]) -> Any:
        directory = self.server.directory
        if action == "fault":
            return directory.set_fault(name, body)
        if action == "power":
            on = body.get("on")
            if not isinstance(on, bool):
                raise ControlError(HTTPStatus.BAD_REQUEST, 'body must be {"on": true|false}')
            return directory.press_power(name, on)
        raise ControlError(HTTPStatus.NOT_FOUND, f"no action {action!r}")

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ControlError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError as err:
            raise ControlError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise ControlError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ControlServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to loopback, serving one :class:`MachineDirectory`."""

    daemon_threads = True

    def __init__(self, port: int, directory: MachineDirectory) -> None:
        self.directory = directory
        super().__init__((CONTROL_ADDRESS, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="control-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
