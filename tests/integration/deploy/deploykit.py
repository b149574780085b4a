"""Helpers for the deploy suite (pytest puts this directory on sys.path).

:class:`DeployCell` wraps an in-process leaf with a boot HTTP server and clients for its three
services. :class:`FakeMachine` plays the part of a server behind the ``fake`` BMC driver: once
the leaf has powered it on set to PXE, it fetches its iPXE script from the leaf's boot server and
runs the real deploy agent (:func:`rackcells.agent.run_agent`) against an in-memory disk.
:class:`LeafProcess` runs ``rackcells-leaf serve`` as a subprocess that a test may SIGKILL.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from leaf_cell.drivers.base import BootDevice, PowerState
from leaf_cell.drivers.fake import FakeDriver
from rackcells.agent import AgentResult, run_agent
from rackcells.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
)

CELL = "rack-1"
PHASES = ("queued", "image_cache", "power_on", "pxe", "agent_lookup", "image_write", "reboot")
TRANSIENT = (
    node_pb2.PROVISION_STATE_VERIFYING,
    node_pb2.PROVISION_STATE_CLEANING,
    node_pb2.PROVISION_STATE_DEPLOYING,
    node_pb2.PROVISION_STATE_WAIT_CALL_BACK,
    node_pb2.PROVISION_STATE_DELETING,
)
HANG_GUARD = 60.0
"""Seconds after which a wait gives up: it only stops a hung test, nothing is timed."""


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    """Polls until ``predicate()`` is truthy and returns it; the timeout only guards hangs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def node_name(node_id: str) -> str:
    return f"cells/{CELL}/nodes/{node_id}"


def node_mac(i: int, prefix: str = "d") -> str:
    """The MAC of node PREFIXi as the ``rack`` fixture enrols it."""
    n = i + 100 * len(prefix)
    return f"52:54:00:de:{n >> 8 & 255:02x}:{n & 255:02x}"


def bmc_address(i: int, prefix: str = "d") -> str:
    """The fake BMC address of node PREFIXi as the ``rack`` fixture enrols it."""
    return f"10.77.{len(prefix)}.{i + 1}"


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        err.close()
        return err.code, body


def metadata(op: operations_pb2.Operation) -> node_service_pb2.ProvisionOperationMetadata:
    meta = node_service_pb2.ProvisionOperationMetadata()
    assert op.metadata.Unpack(meta), op
    return meta


def expect_error(code: grpc.StatusCode, call: Callable[[Any], Any], request: Any) -> grpc.RpcError:
    """Calls ``call(request)``, which must fail with ``code``; returns the error."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    err = info.value
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    return err


def violation_fields(err: grpc.RpcError) -> list[str]:
    """The fields of the ``google.rpc.BadRequest`` violations ``err`` carries."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    fields: list[str] = []
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


class Cell:
    """Clients for one leaf's NodeService, Operations and AgentService at ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(endpoint)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)
        self.agent = agent_service_pb2_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # -- nodes -------------------------------------------------------------------------------

    def create(
        self,
        node_id: str,
        address: str,
        mac: str,
        driver: str = "fake",
        port: int = 0,
        password: str = "pw",
    ) -> node_pb2.Node:
        return self.nodes.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent=f"cells/{CELL}",
                node_id=node_id,
                node=node_pb2.Node(
                    bmc=node_pb2.BmcInfo(
                        driver=driver,
                        address=address,
                        port=port,
                        username="admin",
                        password=password,
                    ),
                    ports=[node_pb2.Port(mac=mac, pxe_enabled=True)],
                ),
            )
        )

    def enrol(self, entry: dict[str, Any]) -> node_pb2.Node:
        """Creates a node from one entry of a simulator's inventory file."""
        node = json_format.ParseDict(
            {k: v for k, v in entry.items() if k != "name"}, node_pb2.Node()
        )
        return self.nodes.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent=f"cells/{CELL}", node_id=entry["name"], node=node
            )
        )

    def get(self, node_id: str) -> node_pb2.Node:
        return self.nodes.GetNode(node_service_pb2.GetNodeRequest(name=node_name(node_id)))

    def change(
        self,
        node_id: str,
        action: int,
        info: node_pb2.InstanceInfo | None = None,
    ) -> operations_pb2.Operation:
        req = node_service_pb2.ChangeProvisionStateRequest(name=node_name(node_id), action=action)
        if info is not None:
            req.instance_info.CopyFrom(info)
        return self.nodes.ChangeProvisionState(req)

    def deploy(self, node_id: str, url: str, checksum: str) -> operations_pb2.Operation:
        return self.change(
            node_id,
            node_service_pb2.PROVISION_ACTION_DEPLOY,
            node_pb2.InstanceInfo(image_url=url, image_checksum=checksum),
        )

    def wait(self, op: operations_pb2.Operation, timeout: float = HANG_GUARD) -> Any:
        """Waits for ``op`` to finish (the timeout only guards hangs)."""
        deadline = time.monotonic() + timeout
        while not op.done:
            if time.monotonic() > deadline:
                raise AssertionError(f"operation {op.name} never finished")
            op = self.ops.WaitOperation(
                operations_pb2.WaitOperationRequest(name=op.name), timeout=10
            )
        return op

    def get_op(self, name: str) -> operations_pb2.Operation:
        return self.ops.GetOperation(operations_pb2.GetOperationRequest(name=name))

    def make_available(self, node_id: str) -> None:
        for action in (
            node_service_pb2.PROVISION_ACTION_MANAGE,
            node_service_pb2.PROVISION_ACTION_PROVIDE,
        ):
            op = self.wait(self.change(node_id, action))
            assert not op.HasField("error"), op.error
        assert self.get(node_id).provision_state == node_pb2.PROVISION_STATE_AVAILABLE

    def wait_state(self, node_id: str, state: int, timeout: float = HANG_GUARD) -> node_pb2.Node:
        label = node_pb2.ProvisionState.Name(state)
        return wait_until(
            lambda: (n := self.get(node_id)).provision_state == state and n,
            f"{node_id} in {label}",
            timeout,
        )

    def operations(self) -> list[operations_pb2.Operation]:
        return list(
            self.ops.ListOperations(
                operations_pb2.ListOperationsRequest(name=f"cells/{CELL}/operations")
            ).operations
        )

    def assert_failed_cleanly(
        self, node_id: str, op: operations_pb2.Operation, phase: str, state: int | None = None
    ) -> node_pb2.Node:
        """The deploy ended in DEPLOY_FAILED naming ``phase``, its operation ended with an
        error, and the node's lock is gone."""
        state = node_pb2.PROVISION_STATE_DEPLOY_FAILED if state is None else state
        op = self.get_op(op.name)
        assert op.done and op.HasField("error") and op.error.code != 0, op
        assert f"phase {phase}" in op.error.message, op.error.message
        node = self.get(node_id)
        assert node.provision_state == state, node_pb2.ProvisionState.Name(node.provision_state)
        assert f"phase {phase}" in node.last_error, node.last_error
        assert not node.HasField("lock"), node.lock
        return node

    def lookup(self, mac: str) -> agent_service_pb2.LookupNodeResponse:
        return self.agent.LookupNode(agent_service_pb2.LookupNodeRequest(macs=[mac]))


class DeployCell(Cell):
    """An in-process leaf (``leaf_runner``) with a boot HTTP server."""

    def __init__(self, server: Any, runner: Any) -> None:
        super().__init__(f"127.0.0.1:{server.port}")
        self.server = server
        self.runner = runner

    @property
    def http(self) -> str:
        return str(self.server.http.base_url)

    def boot_script(self, mac: str) -> tuple[int, str]:
        return http_get(f"{self.http}/boot/{mac}")

    def run(self, coro: Any) -> Any:
        return self.runner._loop.run(coro)


class MemoryDisk:
    """What the agent writes to: a hash and a size, like the simulator's hash sink."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("an in-memory disk has no descriptor")

    def close(self) -> None:
        pass

    def checksum(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


@dataclass
class FakeMachine:
    """A server behind a fake BMC: PXE-boots when the leaf powers it on set to PXE.

    The thread waits until the fake BMC was switched on (or power-cycled) after the machine was
    started, with boot device PXE, then fetches ``/boot/<mac>`` from the leaf like iPXE would,
    and for a deploy script runs the deploy agent. A ``late`` machine is plugged in while its
    deploy is under way: the power-on it waits for may already have happened.
    """

    cell: DeployCell
    fake: FakeDriver
    address: str
    mac: str
    disk: MemoryDisk = field(default_factory=MemoryDisk)
    script: str = ""
    result: AgentResult | None = None
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    late: bool = False
    _thread: threading.Thread | None = None
    _power_ons: int = 0

    def start(self) -> FakeMachine:
        self._power_ons = self._bmc_power_ons() - (1 if self.late else 0)
        self._thread = threading.Thread(target=self._run, name=f"machine-{self.mac}", daemon=True)
        self._thread.start()
        return self

    def _bmc_power_ons(self) -> int:
        try:
            return self.fake.bmc(self.address).power_ons
        except KeyError:
            return 0

    def _pxe_booting(self) -> bool:
        try:
            bmc = self.fake.bmc(self.address)
        except KeyError:
            return False
        return (
            bmc.power_ons > self._power_ons
            and bmc.power is PowerState.ON
            and bmc.boot_device is BootDevice.PXE
        )

    def _run(self) -> None:
        try:
            while not self._pxe_booting():
                if self._stop.wait(0.02):
                    return
            status, self.script = self.cell.boot_script(self.mac)
            assert status == 200, (status, self.script)
            if "rackcells deploy" not in self.script:
                return
            self.result = run_agent(
                self.cell.endpoint,
                [self.mac],
                lambda _target: self.disk,
                lookup_timeout=20,
                rpc_timeout=10,
                cancel=self._stop,
            )
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = HANG_GUARD) -> AgentResult | None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"machine {self.mac} still running"
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HANG_GUARD)


# -- image source -------------------------------------------------------------------------------


def make_image(path: Path, size: int) -> str:
    """Writes ``size`` random bytes to ``path``; returns ``sha256:HEX``."""
    data = os.urandom(size)
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ImageSource:
    """Serves the files of ``directory`` on 127.0.0.1; counts completed downloads (200s)."""

    def __init__(self, directory: Path) -> None:
        source = self
        self.downloads = 0
        self.requests = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self) -> None:
                source.requests += 1
                found = self.translate_path(self.path)
                super().do_GET()
                if os.path.isfile(found):
                    source.downloads += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(HANG_GUARD)


class BootGate:
    """A boot server in front of the leaf's: while closed, every ``/boot/<mac>`` fetch fails
    (503), so a PXE-booting machine gives up and its deploy waits in the pxe phase for as long
    as the test wants; while open, fetches are relayed to ``upstream``."""

    def __init__(self) -> None:
        gate = self
        self.upstream = ""
        self.is_open = False
        self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if gate.is_open and gate.upstream and self.path.startswith("/boot/"):
                    status, body = http_get(gate.upstream + self.path)
                else:
                    gate.refused += 1
                    status, body = 503, "the gate is closed\n"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(HANG_GUARD)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- subprocesses -------------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class LeafProcess:
    """``rackcells-leaf serve`` as a subprocess on 127.0.0.1 (gRPC port from its port file)."""

    workdir: Path
    db: str
    args: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("leaf-*.log"))
        )

    def start(self) -> LeafProcess:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        port_file = self.workdir / "leaf.port"
        port_file.unlink(missing_ok=True)
        script = Path(sys.executable).parent / "rackcells-leaf"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "leaf_cell.main"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_LEAF_")}
        with (self.workdir / f"leaf-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *base,
                    "serve",
                    "--cell",
                    CELL,
                    "--listen",
                    "127.0.0.1:0",
                    "--db",
                    self.db,
                    "--port-file",
                    str(port_file),
                    "--secret-key-file",
                    str(self.workdir / "leaf.key"),
                    "--power-sync-interval",
                    "0",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + HANG_GUARD
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise AssertionError(f"leaf exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"leaf wrote no port file:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown code runs, as in a crash."""
        assert self.proc is not None and self.proc.poll() is None, "the leaf is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
