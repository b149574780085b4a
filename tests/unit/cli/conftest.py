"""Test doubles for the CLI: service stubs that record calls, and RpcErrors with details.

The fake errors carry a real ``grpc-status-details-bin`` trailer, so the CLI's error path runs
the same ``grpc_status`` decoding it runs against a server.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from rackcells.cli.client import Session
from rackcells.v1 import (
    allocation_service_pb2,
    capacity_service_pb2,
    cell_service_pb2,
    node_pb2,
    node_service_pb2,
)

WatchItem = node_service_pb2.NodeEvent | BaseException | None


class FakeRpcError(grpc.RpcError, grpc.Call):
    """A failed call as a stub raises it: code, details and trailing metadata."""

    def __init__(
        self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None
    ):
        super().__init__(message)
        self._code = code
        self._message = message
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        if self._status is None:
            return ()
        return (("grpc-status-details-bin", self._status.SerializeToString()),)

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


def rpc_error(
    code: grpc.StatusCode,
    message: str,
    *,
    violations: list[tuple[str, str]] | None = None,
    reason: str = "",
    metadata: dict[str, str] | None = None,
) -> FakeRpcError:
    """A server-side error with ErrorInfo (and BadRequest when ``violations`` are given)."""
    details = []
    info = error_details_pb2.ErrorInfo(reason=reason or code.name, domain="rackcells.io")
    info.metadata.update(metadata or {})
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return FakeRpcError(code, message, status)


class FakeNodes:
    """A NodeService stub double: a dict of nodes, a call log, and optional scripted errors."""

    def __init__(self, cell: str = "rack-1") -> None:
        self.cell = cell
        self.nodes: dict[str, node_pb2.Node] = {}
        self.calls: list[tuple[str, Any]] = []
        self.errors: dict[str, Callable[[Any], BaseException | None]] = {}
        self.next_operation: Any = None
        # One script per WatchNodes call: events to stream, optionally ending with an error.
        self.watch_streams: list[list[WatchItem]] = []
        self.watch_requests: list[node_service_pb2.WatchNodesRequest] = []

    def _log(self, method: str, request: Any) -> None:
        self.calls.append((method, request))
        check = self.errors.get(method)
        if check is not None:
            err = check(request)
            if err is not None:
                raise err

    def add(self, node_id: str, **fields: Any) -> node_pb2.Node:
        node = node_pb2.Node(name=f"cells/{self.cell}/nodes/{node_id}", etag="e1", **fields)
        self.nodes[node.name] = node
        return node

    def CreateNode(
        self, request: node_service_pb2.CreateNodeRequest, timeout: float | None = None
    ) -> node_pb2.Node:
        self._log("CreateNode", request)
        name = f"{request.parent}/nodes/{request.node_id}"
        if name in self.nodes:
            raise rpc_error(
                grpc.StatusCode.ALREADY_EXISTS,
                f"node {name} already exists",
                metadata={"node": name},
            )
        node = node_pb2.Node()
        node.CopyFrom(request.node)
        node.name = name
        node.bmc.ClearField("password")
        self.nodes[name] = node
        return node

    def BatchCreateNodes(
        self, request: node_service_pb2.BatchCreateNodesRequest, timeout: float | None = None
    ) -> node_service_pb2.BatchCreateNodesResponse:
        """All or nothing, as the server: each request meets CreateNode's scripted errors and
        existing names, and the first refusal refuses the batch."""
        self._log("BatchCreateNodes", request)
        before = dict(self.nodes)
        created = []
        try:
            for item in request.requests:
                check = self.errors.get("CreateNode")
                err = check(item) if check is not None else None
                if err is not None:
                    raise err
                item.parent = item.parent or request.parent
                try:
                    created.append(self.CreateNode(item))
                finally:
                    self.calls.pop()  # logged as part of the batch
        except BaseException:
            self.nodes = before
            raise
        return node_service_pb2.BatchCreateNodesResponse(nodes=created)

    def GetNode(
        self, request: node_service_pb2.GetNodeRequest, timeout: float | None = None
    ) -> node_pb2.Node:
        self._log("GetNode", request)
        if request.name not in self.nodes:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"node {request.name} not found")
        return self.nodes[request.name]

    def ListNodes(
        self, request: node_service_pb2.ListNodesRequest, timeout: float | None = None
    ) -> node_service_pb2.ListNodesResponse:
        self._log("ListNodes", request)
        names = sorted(self.nodes)
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = names[start : start + size]
        more = start + size < len(names)
        return node_service_pb2.ListNodesResponse(
            nodes=[self.nodes[n] for n in page],
            next_page_token=str(start + size) if more else "",
        )

    def UpdateNode(
        self, request: node_service_pb2.UpdateNodeRequest, timeout: float | None = None
    ) -> node_pb2.Node:
        self._log("UpdateNode", request)
        return self.nodes[request.node.name]

    def DeleteNode(
        self, request: node_service_pb2.DeleteNodeRequest, timeout: float | None = None
    ) -> Any:
        self._log("DeleteNode", request)
        self.nodes.pop(request.name)

    def SetPowerState(
        self, request: node_service_pb2.SetPowerStateRequest, timeout: float | None = None
    ) -> node_pb2.Node:
        self._log("SetPowerState", request)
        node = self.nodes[request.name]
        node.power_state = (
            node_pb2.POWER_STATE_ON
            if request.action == node_service_pb2.POWER_ACTION_ON
            else node_pb2.POWER_STATE_OFF
        )
        return node

    def SetBootDevice(
        self, request: node_service_pb2.SetBootDeviceRequest, timeout: float | None = None
    ) -> node_pb2.Node:
        self._log("SetBootDevice", request)
        return self.nodes[request.name]

    def ChangeProvisionState(self, request: Any, timeout: float | None = None) -> Any:
        self._log("ChangeProvisionState", request)
        return self.next_operation

    def WatchNodes(
        self, request: node_service_pb2.WatchNodesRequest, timeout: float | None = None
    ) -> FakeStream:
        """Plays the next script, then stays open until cancelled, as a server stream does.

        A script item that is an exception fails the stream; None ends it normally. Each event
        also moves the stored node to the event's provision state, so GetNode agrees with
        what the stream said.
        """
        self.watch_requests.append(request)
        return FakeStream(self, self.watch_streams.pop(0) if self.watch_streams else [])


class FakeStream:
    """A server stream as the stub returns it: an iterator of events that can be cancelled."""

    def __init__(self, nodes: FakeNodes, script: list[WatchItem]) -> None:
        self._nodes = nodes
        self._script = script
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[node_service_pb2.NodeEvent]:
        for item in self._script:
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            node = self._nodes.nodes.get(item.node)
            if node is not None and item.provision_state:
                node.provision_state = item.provision_state
            yield item
        self._cancelled.wait(10)
        raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")

    def cancel(self) -> bool:
        self._cancelled.set()
        return True


class Recorder:
    """The call log and scripted errors the federation stub doubles share."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.errors: dict[str, Callable[[Any], BaseException | None]] = {}

    def _log(self, method: str, request: Any) -> None:
        self.calls.append((method, request))
        check = self.errors.get(method)
        if check is not None:
            err = check(request)
            if err is not None:
                raise err

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]


class FakeCells(Recorder):
    """A CellService stub double over a dict of cells; UpdateCell applies the mask."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, cell_service_pb2.Cell] = {}

    def add(self, cell_id: str, **fields: Any) -> cell_service_pb2.Cell:
        cell = cell_service_pb2.Cell(name=f"cells/{cell_id}", **fields)
        self.cells[cell.name] = cell
        return cell

    def ListCells(
        self, request: cell_service_pb2.ListCellsRequest, timeout: float | None = None
    ) -> cell_service_pb2.ListCellsResponse:
        self._log("ListCells", request)
        return cell_service_pb2.ListCellsResponse(cells=[self.cells[n] for n in sorted(self.cells)])

    def GetCell(
        self, request: cell_service_pb2.GetCellRequest, timeout: float | None = None
    ) -> cell_service_pb2.Cell:
        self._log("GetCell", request)
        if request.name not in self.cells:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"cell {request.name} is not known")
        return self.cells[request.name]

    def UpdateCell(
        self, request: cell_service_pb2.UpdateCellRequest, timeout: float | None = None
    ) -> cell_service_pb2.Cell:
        self._log("UpdateCell", request)
        cell = self.cells[request.cell.name]
        paths = set(request.update_mask.paths)
        if "scheduling_disabled" in paths:
            cell.scheduling_disabled = request.cell.scheduling_disabled
            if not cell.scheduling_disabled:
                cell.disabled_reason = ""
        if "disabled_reason" in paths:
            cell.disabled_reason = request.cell.disabled_reason
        if cell.state in (cell_service_pb2.CELL_STATE_UP, cell_service_pb2.CELL_STATE_DISABLED):
            cell.state = (
                cell_service_pb2.CELL_STATE_DISABLED
                if cell.scheduling_disabled
                else cell_service_pb2.CELL_STATE_UP
            )
        return cell


class FakeCapacity(Recorder):
    """A CapacityService stub double that answers with ``response`` whatever is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.response = capacity_service_pb2.GetCapacityResponse()

    def GetCapacity(
        self, request: capacity_service_pb2.GetCapacityRequest, timeout: float | None = None
    ) -> capacity_service_pb2.GetCapacityResponse:
        self._log("GetCapacity", request)
        return self.response


class FakeAllocations(Recorder):
    """An AllocationService stub double: claims the next of ``free`` nodes of the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.free: list[str] = []
        self.allocations: dict[str, allocation_service_pb2.Allocation] = {}
        self._ids = 0

    def CreateAllocation(
        self, request: allocation_service_pb2.CreateAllocationRequest, timeout: float | None = None
    ) -> allocation_service_pb2.Allocation:
        self._log("CreateAllocation", request)
        cell = request.parent.removeprefix("cells/")
        for node in self.free:
            if cell in ("-", node.split("/")[1]):
                self.free.remove(node)
                break
        else:
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"no cell has an available node of class {request.allocation.resource_class}",
            )
        self._ids += 1
        alloc = allocation_service_pb2.Allocation()
        alloc.CopyFrom(request.allocation)
        alloc.name = f"cells/{node.split('/')[1]}/allocations/a{self._ids}"
        alloc.node = node
        self.allocations[alloc.name] = alloc
        return alloc

    def GetAllocation(
        self, request: allocation_service_pb2.GetAllocationRequest, timeout: float | None = None
    ) -> allocation_service_pb2.Allocation:
        self._log("GetAllocation", request)
        if request.name not in self.allocations:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"allocation {request.name} not found")
        return self.allocations[request.name]

    def DeleteAllocation(
        self, request: allocation_service_pb2.DeleteAllocationRequest, timeout: float | None = None
    ) -> Any:
        self._log("DeleteAllocation", request)
        if request.name not in self.allocations:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"allocation {request.name} not found")
        self.free.append(self.allocations.pop(request.name).node)


@pytest.fixture
def fake_nodes() -> FakeNodes:
    return FakeNodes()


@pytest.fixture
def fake_cells() -> FakeCells:
    return FakeCells()


@pytest.fixture
def fake_capacity() -> FakeCapacity:
    return FakeCapacity()


@pytest.fixture
def fake_allocations() -> FakeAllocations:
    return FakeAllocations()


@pytest.fixture
def session(
    fake_nodes: FakeNodes,
    fake_cells: FakeCells,
    fake_capacity: FakeCapacity,
    fake_allocations: FakeAllocations,
) -> Session:
    """A Session whose services are the fakes; no channel is ever opened."""
    return Session(
        endpoint="127.0.0.1:7001",
        cell="rack-1",
        _nodes=fake_nodes,  # type: ignore[arg-type]
        _cells=fake_cells,  # type: ignore[arg-type]
        _capacity=fake_capacity,  # type: ignore[arg-type]
        _allocations=fake_allocations,  # type: ignore[arg-type]
    )


@pytest.fixture
def make_rpc_error() -> Callable[..., FakeRpcError]:
    return rpc_error


@pytest.fixture
def transport_error() -> Callable[[grpc.StatusCode, str], FakeRpcError]:
    """An error raised before any server answered: no status details."""
    return FakeRpcError


@pytest.fixture
def patch_session(session: Session, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Session]:
    """Makes ``main()`` use the fake-backed session, keeping the flags it parsed."""

    def from_settings(
        cls: type[Session],
        endpoint: str | None,
        cell: str | None,
        timeout: float | None,
        output: Any,
    ) -> Session:
        return dataclasses.replace(
            session,
            cell=cell or session.cell,
            output=output or "table",
            timeout=timeout or session.timeout,
        )

    monkeypatch.setattr(Session, "from_settings", classmethod(from_settings))
    return lambda: session
