"""Helpers of the API conformance suite: server processes, the ``Api`` under test, error details.

The suite runs every test body twice, through an :class:`Api` that talks either directly to a
leaf cell or to a top cell in front of that same leaf (and a second one). An ``Api`` offers the
public stubs and a few conveniences with hang guards built in; nothing here asserts on time.

Imported by the modules of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from serverkit import BIN, Proc, leaf_argv

from rackcells.v1 import (
    allocation_service_pb2_grpc,
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    cell_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
)

T = TypeVar("T")

RPC_GUARD = 30.0
"""Deadline of every call the suite makes: it only keeps a broken server from hanging the run."""
WAIT_GUARD = 60.0
"""How long a poll for an eventual state may go on before the suite gives up (a hang guard)."""

PS = node_pb2.ProvisionState
PA = node_service_pb2.ProvisionAction


# -- processes -------------------------------------------------------------------------------------


def start_leaf(cell: str, tmp: Path, *extra: str) -> Proc:
    return Proc(cell, leaf_argv(cell, tmp, *extra), tmp, "RACKCELLS_LEAF_")


def write_static_registry(path: Path, leaves: dict[str, str]) -> str:
    """Writes ``cells: [{name, endpoint}]`` and returns the ``--registry`` value."""
    cells = [{"name": name, "endpoint": endpoint} for name, endpoint in leaves.items()]
    path.write_text(yaml.safe_dump({"cells": cells}))
    return f"static:{path}"


def start_top(registry: str, tmp: Path, *extra: str, name: str = "top") -> Proc:
    return Proc(
        name,
        [
            str(BIN / "rackcells-top"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / name}.db",
            "--registry",
            registry,
            "--log-level",
            "WARNING",
            *extra,
        ],
        tmp,
        "RACKCELLS_TOP_",
    )


class BlackHoleBmc:
    """A UDP port on 127.0.0.1 that swallows every packet: an IPMI BMC that never answers.

    A call to it holds the node's lock until the leaf's ``--bmc-timeout`` runs out, which is
    how the suite gets a node that is locked, and one whose cleaning fails.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._swallow, name="black-hole-bmc", daemon=True)
        self._thread.start()

    def _swallow(self) -> None:
        while not self._stop.is_set():
            try:
                self._sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# -- polling and errors ----------------------------------------------------------------------------


def eventually(check: Callable[[], T], what: str, limit: float = WAIT_GUARD) -> T:
    """Retries ``check`` until it returns without AssertionError or RpcError. The limit is a hang
    guard: on expiry the last failure is raised, so the test fails saying what it waited for."""
    give_up = time.monotonic() + limit
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError) as exc:
            if time.monotonic() > give_up:
                raise AssertionError(f"gave up waiting for {what}: {exc}") from exc
            time.sleep(0.05)


def rpc_error(call: Callable[..., Any], request: Any, **kw: Any) -> grpc.RpcError:
    """The error ``call(request)`` ends with; fails the test if it succeeds."""
    kw.setdefault("timeout", RPC_GUARD)
    try:
        result = call(request, **kw)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"expected an error, got {type(result).__name__}: {result}")


def status_details(err: grpc.RpcError) -> list[Any]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    return list(status.details) if status is not None else []


def violation_fields(err: grpc.RpcError) -> list[str]:
    """The ``google.rpc.BadRequest`` field names of an error, in order."""
    found: list[str] = []
    for detail in status_details(err):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    for detail in status_details(err):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def describe(err: grpc.RpcError) -> tuple[grpc.StatusCode, list[str]]:
    """What the suite compares of an error: its code and its BadRequest field names."""
    return err.code(), violation_fields(err)


# -- names and nodes -------------------------------------------------------------------------------

_MAC_BASE = uuid.uuid4().int & 0xFFFFFF
_MAC_SEQ = itertools.count(1)


def new_mac() -> str:
    """A MAC no other node of this test session has (locally administered, random base)."""
    n = next(_MAC_SEQ)
    octets = [0x02, _MAC_BASE >> 16 & 255, _MAC_BASE >> 8 & 255, n >> 16 & 255, n >> 8 & 255]
    return ":".join(f"{o:02x}" for o in [*octets, n & 255])


def unique(prefix: str = "t") -> str:
    """A short id for one test's nodes and resource class (RFC 1123 friendly)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def fake_node(
    resource_class: str,
    *,
    traits: list[str] | None = None,
    macs: list[str] | None = None,
    maintenance: bool = False,
    extra: dict[str, str] | None = None,
) -> node_pb2.Node:
    """A node whose BMC is the leaf's in-memory fake driver: power and provide work at once."""
    return node_pb2.Node(
        resource_class=resource_class,
        traits=traits or [],
        properties=node_pb2.NodeProperties(cpus=8, memory_mb=16384, local_gb=100),
        bmc=node_pb2.BmcInfo(driver="fake", address="fake-bmc", username="admin", password="pw"),
        ports=[node_pb2.Port(mac=m, pxe_enabled=True) for m in (macs or [new_mac()])],
        maintenance=maintenance,
        extra=extra or {},
    )


# -- the API under test ----------------------------------------------------------------------------


@dataclass
class Api:
    """The public services as one client sees them: at a leaf (``leaf``) or at the top (``top``).

    ``cell`` is the leaf cell behind both. ``settle`` waits until the top's derived inventory
    has applied everything the leaf has committed (a no-op at the leaf); tests call it before
    asking what the top answers from that inventory (capacity, claims over ``cells/-``).
    """

    kind: str
    cell: str
    channel: grpc.Channel
    leaf_channel: grpc.Channel

    def __post_init__(self) -> None:
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)
        self.capacity = capacity_service_pb2_grpc.CapacityServiceStub(self.channel)
        self.allocations = allocation_service_pb2_grpc.AllocationServiceStub(self.channel)
        self.cells = cell_service_pb2_grpc.CellServiceStub(self.channel)
        self._leaf_capacity = capacity_service_pb2_grpc.CapacityServiceStub(self.leaf_channel)

    def __repr__(self) -> str:
        return f"Api({self.kind}, cells/{self.cell})"

    @property
    def parent(self) -> str:
        return f"cells/{self.cell}"

    def name(self, node_id: str) -> str:
        return f"cells/{self.cell}/nodes/{node_id}"

    # -- inventory consistency ---------------------------------------------------------------

    def leaf_generation(self) -> int:
        reply = self._leaf_capacity.GetCapacity(
            capacity_service_pb2.GetCapacityRequest(parent=self.parent), timeout=RPC_GUARD
        )
        return int(reply.cells[0].generation)

    def settle(self) -> None:
        if self.kind == "leaf":
            return
        wanted = self.leaf_generation()

        def caught_up() -> None:
            reply = self.capacity.GetCapacity(
                capacity_service_pb2.GetCapacityRequest(parent=self.parent), timeout=RPC_GUARD
            )
            assert reply.cells, f"the top has no figures for {self.parent} yet"
            assert reply.cells[0].generation >= wanted, (reply.cells[0].generation, wanted)

        eventually(caught_up, f"the top's inventory of {self.parent} to reach {wanted}")

    # -- conveniences (each call with a hang guard) ------------------------------------------

    def create(self, node_id: str, node: node_pb2.Node) -> node_pb2.Node:
        return self.nodes.CreateNode(
            node_service_pb2.CreateNodeRequest(parent=self.parent, node_id=node_id, node=node),
            timeout=RPC_GUARD,
        )

    def get(self, node_id: str) -> node_pb2.Node:
        return self.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=self.name(node_id)), timeout=RPC_GUARD
        )

    def pages(self, **request: Any) -> Iterator[node_service_pb2.ListNodesResponse]:
        request.setdefault("parent", self.parent)
        token = ""
        for _ in range(10_000):
            page = self.nodes.ListNodes(
                node_service_pb2.ListNodesRequest(page_token=token, **request), timeout=RPC_GUARD
            )
            yield page
            token = page.next_page_token
            if not token:
                return
        raise AssertionError("the listing never ended")

    def list_names(self, **request: Any) -> list[str]:
        return [n.name for page in self.pages(**request) for n in page.nodes]

    def change(self, node_id: str, action: int, **fields: Any) -> operations_pb2.Operation:
        return self.nodes.ChangeProvisionState(
            node_service_pb2.ChangeProvisionStateRequest(
                name=self.name(node_id), action=action, **fields
            ),
            timeout=RPC_GUARD,
        )

    def wait(self, op: operations_pb2.Operation) -> operations_pb2.Operation:
        """WaitOperation until it is done (the server caps one wait; loop within the guard)."""
        give_up = time.monotonic() + WAIT_GUARD
        while not op.done:
            if time.monotonic() > give_up:
                raise AssertionError(f"operation {op.name} did not finish")
            op = self.ops.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=op.name, timeout=duration_pb2.Duration(seconds=10)
                ),
                timeout=RPC_GUARD,
            )
        return op

    def run(self, node_id: str, action: int, **fields: Any) -> operations_pb2.Operation:
        return self.wait(self.change(node_id, action, **fields))

    def make_available(self, node_id: str) -> None:
        for action in (PA.PROVISION_ACTION_MANAGE, PA.PROVISION_ACTION_PROVIDE):
            op = self.run(node_id, action)
            assert not op.HasField("error"), op.error
        assert self.get(node_id).provision_state == PS.PROVISION_STATE_AVAILABLE


CELL = "conf-a"
"""The cell every conformance test talks about."""
OTHER_CELL = "conf-b"
"""The second leaf behind the top cell."""
BMC_TIMEOUT = 4.0
"""The leaves' --bmc-timeout: how long a call to a BMC that never answers holds a node's lock."""


@dataclass
class Federation:
    """The session's leaves and top cell, with one channel to each."""

    leaves: dict[str, Proc]
    top: Proc
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def api(self, kind: str, cell: str = CELL) -> Api:
        """The services of ``cell``, directly at its leaf (``leaf``) or through the top."""
        target = "top" if kind == "top" else cell
        return Api(kind, cell, self.channels[target], self.channels[cell])
