"""A stand-in for a leaf cell's deploy side, for testing the simulator and the agent alone.

It serves what a leaf serves to a booting rack, all on 127.0.0.1: the per-MAC iPXE scripts
(``GET /boot/{mac}``, 404 for MACs it does not know), images (``GET /images/{name}``) and
``AgentService`` over gRPC.  Tests arrange nodes with :meth:`FakeLeaf.deploy` and
:meth:`FakeLeaf.boot_from_disk` and read back what the agents did from :attr:`FakeLeaf.reports`.
It keeps no state machine: a node waits for an agent from ``deploy`` until its report.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from rackcells.v1 import agent_service_pb2 as pb
from rackcells.v1 import agent_service_pb2_grpc as pb_grpc

LOOPBACK = "127.0.0.1"


@dataclass
class _Node:
    name: str
    script: str
    plan: pb.DeployPlan | None = None
    waiting: bool = False


class FakeLeaf(pb_grpc.AgentServiceServicer):
    """Boot scripts, images and AgentService of one pretend cell."""

    def __init__(self, cell: str = "rack-1") -> None:
        self.cell = cell
        self.lock = threading.Lock()
        self.nodes: dict[str, _Node] = {}  # by lower-case MAC
        self.images: dict[str, bytes] = {}
        self.script_requests: list[str] = []
        self.lookups: list[list[str]] = []
        self.reports: list[pb.ReportDeployRequest] = []
        #: Status codes LookupNode answers with, one per call, before it answers normally.
        self.lookup_errors: list[grpc.StatusCode] = []
        #: Seconds the image server pauses after each MiB it sends (a slow network).
        self.throttle = 0.0
        self._http = ThreadingHTTPServer((LOOPBACK, 0), _Handler)
        self._http.daemon_threads = True
        self._http.leaf = self  # type: ignore[attr-defined]
        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_AgentServiceServicer_to_server(self, self._grpc)
        self._grpc_port = self._grpc.add_insecure_port(f"{LOOPBACK}:0")
        self._thread: threading.Thread | None = None

    @property
    def boot_url(self) -> str:
        return f"http://{LOOPBACK}:{self._http.server_address[1]}"

    @property
    def agent_endpoint(self) -> str:
        return f"{LOOPBACK}:{self._grpc_port}"

    def start(self) -> FakeLeaf:
        self._grpc.start()
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None).wait()
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()

    # -- arranging nodes ----------------------------------------------------------------

    def add_image(self, name: str, data: bytes) -> str:
        """Serve ``data`` as an image; returns its URL."""
        with self.lock:
            self.images[name] = data
        return f"{self.boot_url}/images/{name}"

    def deploy(
        self,
        node: str,
        mac: str,
        image: str,
        *,
        checksum: str | None = None,
        size: int | None = None,
        target_device: str = "/dev/sda",
        waiting: bool = True,
    ) -> pb.DeployPlan:
        """Serve ``mac`` the deploy script and wait for its agent; returns the plan.

        With ``waiting=False`` lookups get FAILED_PRECONDITION until :meth:`release`.
        """
        data = self.images[image]
        plan = pb.DeployPlan(
            deploy_id=secrets.token_hex(8),
            token=secrets.token_urlsafe(24),
            image_url=f"{self.boot_url}/images/{image}",
            image_checksum=checksum or "sha256:" + hashlib.sha256(data).hexdigest(),
            image_size=len(data) if size is None else size,
            target_device=target_device,
        )
        with self.lock:
            self.nodes[mac.lower()] = _Node(self._name(node), "deploy", plan, waiting)
        return plan

    def release(self, mac: str) -> None:
        """Let the agent of a ``deploy(..., waiting=False)`` node have its plan."""
        with self.lock:
            self.nodes[mac.lower()].waiting = True

    def boot_from_disk(self, node: str, mac: str) -> None:
        """Serve ``mac`` the boot-from-disk script; no agent is expected."""
        with self.lock:
            self.nodes[mac.lower()] = _Node(self._name(node), "disk")

    def script(self, mac: str) -> str | None:
        """The iPXE script for ``mac``, exactly as a leaf writes it, or None (404)."""
        with self.lock:
            node = self.nodes.get(mac.lower())
        if node is None:
            return None
        if node.script == "disk":
            return (
                f"#!ipxe\n# rackcells boot-from-disk {node.name}\n"
                "sanboot --no-describe --drive 0x80\n"
            )
        return (
            f"#!ipxe\n# rackcells deploy {node.name}\n"
            f"kernel {self.boot_url}/agent/vmlinuz "
            f"rackcells.agent_endpoint={self.agent_endpoint} BOOTIF=${{mac}}\n"
            f"initrd {self.boot_url}/agent/initramfs\n"
            "boot\n"
        )

    def _name(self, node: str) -> str:
        return node if node.startswith("cells/") else f"cells/{self.cell}/nodes/{node}"

    # -- AgentService ---------------------------------------------------------------------

    def LookupNode(
        self, request: pb.LookupNodeRequest, context: grpc.ServicerContext
    ) -> pb.LookupNodeResponse:
        with self.lock:
            self.lookups.append(list(request.macs))
            error = self.lookup_errors.pop(0) if self.lookup_errors else None
            node = next(
                (self.nodes[m.lower()] for m in request.macs if m.lower() in self.nodes), None
            )
        if error is not None:
            context.abort(error, f"injected {error.name}")
        if node is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no node has MACs {list(request.macs)}")
        assert node is not None
        if node.plan is None or not node.waiting:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{node.name} awaits no agent")
        return pb.LookupNodeResponse(node=node.name, plan=node.plan)

    def ReportDeploy(
        self, request: pb.ReportDeployRequest, context: grpc.ServicerContext
    ) -> pb.ReportDeployResponse:
        with self.lock:
            node = next((n for n in self.nodes.values() if n.name == request.node), None)
            plan = node.plan if node is not None else None
            if (
                node is None
                or plan is None
                or plan.deploy_id != request.deploy_id
                or not secrets.compare_digest(plan.token, request.token)
            ):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "no such deploy or bad token")
            assert node is not None
            node.plan = None
            self.reports.append(request)
        return pb.ReportDeployResponse()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        leaf: FakeLeaf = self.server.leaf  # type: ignore[attr-defined]
        parts = self.path.split("/")
        body: bytes | None = None
        content_type = "application/octet-stream"
        if len(parts) == 3 and parts[1] == "boot":
            with leaf.lock:
                leaf.script_requests.append(parts[2])
            script = leaf.script(parts[2])
            body = script.encode() if script is not None else None
            content_type = "text/plain"
        elif len(parts) == 3 and parts[1] == "images":
            with leaf.lock:
                body = leaf.images.get(parts[2])
        if body is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        view = memoryview(body)
        step = 1 << 20 if leaf.throttle else max(1, len(view))
        for offset in range(0, len(view), step):
            try:
                self.wfile.write(view[offset : offset + step])
            except OSError:  # the client went away (a machine lost power)
                self.close_connection = True
                return
            time.sleep(leaf.throttle)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a hundred agents downloading are not news."""


@contextmanager
def running_fake_leaf(cell: str = "rack-1") -> Iterator[FakeLeaf]:
    """``with running_fake_leaf() as leaf:`` -- started, then stopped."""
    leaf = FakeLeaf(cell).start()
    try:
        yield leaf
    finally:
        leaf.stop()
