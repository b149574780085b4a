"""The top cell's NodeService and ``google.longrunning.Operations``: route each call to its leaf.

Every resource name carries its cell (``cells/{cell}/nodes/{node}``,
``cells/{cell}/operations/{id}``), so a named call is routed by parsing the name, with no
database look-up, and forwarded to the owning leaf as the same method:

- with the caller's remaining deadline, so the leaf stops when the caller stops waiting;
- with the caller's metadata minus the keys that belong to one HTTP/2 hop (``grpc-*``,
  pseudo-headers, ``user-agent``, ``content-type``), so bearer tokens and the W3C
  ``traceparent`` reach the leaf;
- and the leaf's status comes back unchanged: code, message and the ``grpc-status-details-bin``
  trailer that carries ``ErrorInfo`` / ``BadRequest``. Only failures that happen on the way
  (the leaf cannot be reached) are reworded, to name the cell.

A client therefore sees the same answers through the top as directly at the leaf. The top adds
only what a single leaf cannot know: cross-cell MAC uniqueness on CreateNode, BatchCreateNodes
and UpdateNode, listings over ``cells/-`` (:mod:`top_cell.cross_list`), look-ups by uid or MAC
through the inventory index, and a merged WatchNodes over ``cells/-``. Before its MAC look-up it
runs the leaf's own request checks (:mod:`common.node_checks`), so that what it adds never
changes the answer to bad input.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, Protocol, TypeAlias, TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RackcellsError,
    Unavailable,
)
from common.keys import normalize_mac
from common.listing import parse_filter
from common.names import ALL_CELLS, label_problem, parse_cell, parse_node_name
from common.node_checks import (
    check_batch_create_request,
    check_create_request,
    check_update_request,
)
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc
from top_cell import cross_list
from top_cell.fanout import fanout_budget

__all__ = [
    "AddressIndex",
    "CellChannels",
    "NodeRouter",
    "OperationsRouter",
    "forward_metadata",
    "operation_cell",
    "relay_error",
]

log = logging.getLogger(__name__)

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Resp = TypeVar("Resp", bound=Message)
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]

NODE_SERVICE = "rackcells.v1.NodeService"
OPERATIONS_SERVICE = "google.longrunning.Operations"
_DETAILS_KEY = "grpc-status-details-bin"
# Keys that describe one HTTP/2 hop, not the caller's request; gRPC sets them again per hop.
_HOP_KEYS = frozenset(
    {
        "user-agent",
        "content-type",
        "te",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)


class CellChannels(Protocol):
    """What the router needs of :class:`top_cell.cells.CellDirectory`."""

    def names(self) -> list[str]: ...

    def channel(self, cell: str) -> grpc.aio.Channel:
        """The leaf's channel; raises NotFound for an unknown cell, Unavailable when DOWN."""
        ...

    def endpoint(self, cell: str) -> str | None:
        """HOST:PORT of a known cell that is not DOWN (what :mod:`top_cell.front` relays to)."""
        ...


class AddressIndex(Protocol):
    """What the router needs of :class:`top_cell.inventory.Inventory`: uid and MAC → cell."""

    def cell_of_uid(self, uid: str) -> str | None: ...

    def cell_of_mac(self, mac: str) -> str | None: ...


def forward_metadata(context: Ctx) -> Metadata:
    """The caller's metadata that should reach the leaf (auth, trace context, custom keys)."""
    kept: list[tuple[str, str | bytes]] = []
    for key, value in context.invocation_metadata() or ():
        lower = key.lower()
        if lower.startswith((":", "grpc-")) or lower in _HOP_KEYS:
            continue
        kept.append((key, value))
    return tuple(kept)


def _relayable_trailers(err: grpc.aio.AioRpcError) -> Metadata:
    kept: list[tuple[str, str | bytes]] = []
    for key, value in err.trailing_metadata() or ():
        lower = key.lower()
        if lower == _DETAILS_KEY or not (lower.startswith((":", "grpc-")) or lower in _HOP_KEYS):
            kept.append((key, value))
    return tuple(kept)


async def relay_error(context: Ctx, err: grpc.aio.AioRpcError, cell: str) -> NoReturn:
    """Ends the call with the leaf's status, unchanged; or, if the failure happened on the way
    to the leaf (no status details: the leaf never answered), with one that names the cell."""
    trailers = _relayable_trailers(err)
    answered = any(key.lower() == _DETAILS_KEY for key, _ in trailers)
    if not answered:
        meta = {"cell": f"cells/{cell}"}
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            raise Unavailable(
                f"cell {cell} is unavailable: {err.details() or 'no answer'}", metadata=meta
            )
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded(f"cell {cell} did not answer before the deadline", metadata=meta)
    await context.abort(err.code(), err.details() or "", trailing_metadata=trailers)


def operation_cell(name: str, field: str = "name") -> str:
    """The cell of ``cells/{cell}/operations/{id}``."""
    parts = name.split("/")
    if not name:
        raise InvalidArgument.field(field, "is required (cells/{cell}/operations/{id})")
    if len(parts) != 4 or parts[0] != "cells" or parts[2] != "operations" or not parts[3]:
        raise InvalidArgument.field(
            field, f"{name!r} is not of the form cells/{{cell}}/operations/{{id}}"
        )
    problem = label_problem(parts[1])
    if problem:
        raise InvalidArgument.field(field, f"cell id {problem}")
    return parts[1]


class _Forwarder:
    """Calls the same method on a leaf, as the caller, and relays its answer.

    One multicallable per channel and method, made on first use: making one per call costs
    as much as a good part of the hop. Channels a cell no longer uses drop out with them.
    """

    def __init__(self, cells: CellChannels, service: str) -> None:
        self._cells = cells
        self._service = service
        self._rpcs: weakref.WeakKeyDictionary[grpc.aio.Channel, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _rpc(self, cell: str, method: str, request: Message, parse: Any) -> Any:
        channel = self._cells.channel(cell)
        rpcs = self._rpcs.setdefault(channel, {})
        key = f"{method}:{'bytes' if parse is None else 'message'}"
        rpc = rpcs.get(key)
        if rpc is None:
            rpc = rpcs[key] = channel.unary_unary(
                f"/{self._service}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=parse,
            )
        return rpc

    async def unary(
        self, cell: str, method: str, request: Message, response_type: type[Resp], context: Ctx
    ) -> Resp:
        response: Resp = await self._call(
            cell, self._rpc(cell, method, request, response_type.FromString), request, context
        )
        return response

    async def relay(self, cell: str, method: str, request: Message, context: Ctx) -> bytes:
        """The leaf's answer as it came, unparsed: for calls the top only routes (reads),
        served back through :mod:`common.wire`."""
        rpc = self._rpc(cell, method, request, None)
        data: bytes = await self._call(cell, rpc, request, context)
        return data

    async def _call(self, cell: str, rpc: Any, request: Message, context: Ctx) -> Any:
        try:
            return await rpc(
                request, timeout=context.time_remaining(), metadata=forward_metadata(context)
            )
        except grpc.aio.AioRpcError as err:
            await relay_error(context, err, cell)


class NodeRouter(node_service_pb2_grpc.NodeServiceServicer):
    """NodeService of the top cell: named calls go to their leaf, ``cells/-`` calls to all."""

    def __init__(
        self,
        cells: CellChannels,
        *,
        index: AddressIndex | None,
        tokens: cross_list.PageTokens,
        fanout_timeout: float,
    ) -> None:
        self._cells = cells
        self._index = index
        self._tokens = tokens
        self._fanout_timeout = fanout_timeout
        self._fwd = _Forwarder(cells, NODE_SERVICE)

    # -- checks the top makes before forwarding -----------------------------------------------

    def _require_known(self, cell: str) -> None:
        """A leaf refuses a request for a cell it does not serve (NOT_FOUND) before it looks at
        the body; the top refuses a cell it does not know at the same point, so bad input for
        an unknown cell gets the same code either way. A known cell that is DOWN is left to the
        forwarder: the body can be checked without it."""
        if cell not in self._cells.names():
            raise NotFound(f"cell {cell} is not known", metadata={"cell": f"cells/{cell}"})

    def _check_macs_elsewhere(self, cell: str, macs: Sequence[str], field: str) -> None:
        """MACs are unique across the federation; a leaf can only check its own cell.

        ``macs`` are the normalised MACs of the request's ports, in port order, as returned by
        the checks of :mod:`common.node_checks`; those run first, so that a malformed request
        gets a leaf's INVALID_ARGUMENT rather than ALREADY_EXISTS from here."""
        if self._index is None:
            return
        for i, mac in enumerate(macs):
            owner = self._index.cell_of_mac(mac)
            if owner is not None and owner != cell:
                raise AlreadyExists(
                    f"MAC {mac} is already enrolled in cell {owner}",
                    metadata={"mac": mac, "cell": f"cells/{owner}", "field": f"{field}[{i}].mac"},
                )

    def _owner_by_address(self, filter_text: str) -> str | None:
        """The one cell a ``uid = "…"`` or ``mac = "…"`` filter can match, if the index knows."""
        if self._index is None:
            return None
        for cond in parse_filter(filter_text).conditions:
            if cond.op != "=" or not isinstance(cond.value, str):
                continue
            if cond.field == "uid":
                owner = self._index.cell_of_uid(cond.value)
            elif cond.field == "mac":
                owner = self._index.cell_of_mac(normalize_mac(cond.value) or cond.value)
            else:
                continue
            if owner is not None:
                return owner
        return None

    def _reachable(self, cell: str) -> bool:
        """Whether the cell is worth asking: known and not DOWN. A cell whose state is not
        known yet (a top just started) is asked; the fan-out timeout bounds what that costs."""
        try:
            self._cells.channel(cell)
        except RackcellsError:
            return False
        return True

    # -- NodeService ----------------------------------------------------------------------------

    async def CreateNode(
        self, request: node_service_pb2.CreateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        """Checked in a leaf's order (parent, cell, then node_id and node, all from
        :mod:`common.node_checks`) before the cross-cell MAC look-up; forwarded unchanged."""
        cell = parse_cell(request.parent, "parent")
        self._require_known(cell)
        checked = check_create_request(request)
        self._check_macs_elsewhere(cell, checked.macs, "node.ports")
        return await self._fwd.unary(cell, "CreateNode", request, node_pb2.Node, context)

    async def BatchCreateNodes(
        self, request: node_service_pb2.BatchCreateNodesRequest, context: Ctx
    ) -> node_service_pb2.BatchCreateNodesResponse:
        """As CreateNode, for every request of the batch, before anything is forwarded."""
        cell = parse_cell(request.parent, "parent")
        self._require_known(cell)
        for i, checked in enumerate(check_batch_create_request(request)):
            self._check_macs_elsewhere(cell, checked.macs, f"requests[{i}].node.ports")
        return await self._fwd.unary(
            cell, "BatchCreateNodes", request, node_service_pb2.BatchCreateNodesResponse, context
        )

    # The two reads relay the leaf's bytes (see _Forwarder.relay, registered with common.wire).
    async def GetNode(  # type: ignore[override]
        self, request: node_service_pb2.GetNodeRequest, context: Ctx
    ) -> bytes:
        cell = parse_node_name(request.name).cell
        return await self._fwd.relay(cell, "GetNode", request, context)

    async def ListNodes(  # type: ignore[override]
        self, request: node_service_pb2.ListNodesRequest, context: Ctx
    ) -> node_service_pb2.ListNodesResponse | bytes:
        """One cell: forwarded, the leaf's page token untouched. ``cells/-``: merged across
        cells (:mod:`top_cell.cross_list`), down or slow cells in ``unreachable`` whatever
        ``return_partial_success`` says; a ``uid = "…"`` or ``mac = "…"`` filter asks only the
        cell the inventory index names (every cell if the index does not know the value)."""
        cell = parse_cell(request.parent, "parent", allow_all=True)
        if cell != ALL_CELLS:
            return await self._fwd.relay(cell, "ListNodes", request, context)
        metadata = forward_metadata(context)

        def cells() -> list[str]:
            owner = self._owner_by_address(request.filter)
            return [owner] if owner is not None else self._cells.names()

        async def lister(
            leaf: str, leaf_request: node_service_pb2.ListNodesRequest, timeout: float
        ) -> node_service_pb2.ListNodesResponse:
            rpc = self._cells.channel(leaf).unary_unary(
                f"/{NODE_SERVICE}/ListNodes",
                request_serializer=node_service_pb2.ListNodesRequest.SerializeToString,
                response_deserializer=node_service_pb2.ListNodesResponse.FromString,
            )
            response: node_service_pb2.ListNodesResponse = await rpc(
                leaf_request, timeout=timeout, metadata=metadata
            )
            return response

        return await cross_list.list_across_cells(
            request,
            cells=cells,
            reachable=self._reachable,
            lister=lister,
            tokens=self._tokens,
            timeout=fanout_budget(context.time_remaining(), self._fanout_timeout),
        )

    async def UpdateNode(
        self, request: node_service_pb2.UpdateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        """Checked in a leaf's order (node.name, cell, update mask, then the fields it
        selects) before the cross-cell MAC look-up, which applies only when the mask selects
        ``ports``; forwarded unchanged."""
        cell = parse_node_name(request.node.name, "node.name").cell
        self._require_known(cell)
        checked = check_update_request(request)
        self._check_macs_elsewhere(cell, checked.macs, "node.ports")
        return await self._fwd.unary(cell, "UpdateNode", request, node_pb2.Node, context)

    async def DeleteNode(
        self, request: node_service_pb2.DeleteNodeRequest, context: Ctx
    ) -> empty_pb2.Empty:
        cell = parse_node_name(request.name).cell
        return await self._fwd.unary(cell, "DeleteNode", request, empty_pb2.Empty, context)

    async def SetPowerState(
        self, request: node_service_pb2.SetPowerStateRequest, context: Ctx
    ) -> node_pb2.Node:
        cell = parse_node_name(request.name).cell
        return await self._fwd.unary(cell, "SetPowerState", request, node_pb2.Node, context)

    async def SetBootDevice(
        self, request: node_service_pb2.SetBootDeviceRequest, context: Ctx
    ) -> node_pb2.Node:
        cell = parse_node_name(request.name).cell
        return await self._fwd.unary(cell, "SetBootDevice", request, node_pb2.Node, context)

    async def ChangeProvisionState(
        self, request: node_service_pb2.ChangeProvisionStateRequest, context: Ctx
    ) -> operations_pb2.Operation:
        cell = parse_node_name(request.name).cell
        return await self._fwd.unary(
            cell, "ChangeProvisionState", request, operations_pb2.Operation, context
        )

    async def WatchNodes(
        self, request: node_service_pb2.WatchNodesRequest, context: Ctx
    ) -> AsyncIterator[node_service_pb2.NodeEvent]:
        """One cell: the leaf's stream, relayed. ``cells/-``: the streams of every reachable
        cell (or of the cells named in ``names``), merged as events arrive.

        Revisions are per cell, so a merged watch cannot be resumed from one revision:
        ``since_revision`` must be 0 or -1 with ``cells/-``; to resume exactly, watch each cell
        (``cells/{cell}``) with its own last revision. Cells that are down when the watch starts
        are left out and named in the ``rackcells-unreachable`` initial metadata; cells that
        appear later are not added. If one cell's stream fails, the merged stream ends with that
        cell's status, so the client knows to start again.
        """
        cell = parse_cell(request.parent, "parent", allow_all=True)
        if cell != ALL_CELLS:
            cells = [cell]
            self._cells.channel(cell)  # unknown or DOWN: fail now, before the stream starts
        else:
            if request.since_revision > 0:
                raise InvalidArgument.field(
                    "since_revision",
                    "revisions are per cell: a watch of cells/- starts with 0 or -1; resume a "
                    "cell with a watch of cells/{cell}",
                )
            named = [parse_node_name(n, f"names[{i}]").cell for i, n in enumerate(request.names)]
            wanted = list(dict.fromkeys(named)) if named else self._cells.names()
            cells = [c for c in wanted if self._reachable(c)]
            missing = [f"cells/{c}" for c in wanted if c not in cells]
            if not cells:
                raise Unavailable(
                    "no cell can be watched: "
                    + (", ".join(missing) if missing else "no cells are registered")
                )
            if missing:
                await context.send_initial_metadata((("rackcells-unreachable", ",".join(missing)),))
        calls = {c: self._watch_call(c, request, context) for c in cells}
        if len(calls) == 1:
            ((only, call),) = calls.items()
            try:
                async for event in call:
                    yield event
            except grpc.aio.AioRpcError as err:
                await relay_error(context, err, only)
            finally:
                call.cancel()
            return
        async for event in _merged(calls, context):
            yield event

    def _watch_call(
        self, cell: str, request: node_service_pb2.WatchNodesRequest, context: Ctx
    ) -> WatchCall:
        rpc = self._cells.channel(cell).unary_stream(
            f"/{NODE_SERVICE}/WatchNodes",
            request_serializer=node_service_pb2.WatchNodesRequest.SerializeToString,
            response_deserializer=node_service_pb2.NodeEvent.FromString,
        )
        call: WatchCall = rpc(
            request, timeout=context.time_remaining(), metadata=forward_metadata(context)
        )
        return call


WatchCall: TypeAlias = grpc.aio.UnaryStreamCall[Any, node_service_pb2.NodeEvent]
_Item: TypeAlias = node_service_pb2.NodeEvent | grpc.aio.AioRpcError | None
# Events buffered between the leaves' streams and a slow watcher before the leaves are paused.
_WATCH_BUFFER = 1024


async def _pump(cell: str, call: WatchCall, queue: asyncio.Queue[tuple[str, _Item]]) -> None:
    try:
        async for event in call:
            await queue.put((cell, event))
        await queue.put((cell, None))
    except grpc.aio.AioRpcError as err:
        await queue.put((cell, err))
    finally:
        call.cancel()


async def _merged(
    calls: dict[str, WatchCall], context: Ctx
) -> AsyncIterator[node_service_pb2.NodeEvent]:
    """Events of several cells' streams in the order they arrive (interleaved across cells,
    each cell's own events in revision order)."""
    queue: asyncio.Queue[tuple[str, _Item]] = asyncio.Queue(maxsize=_WATCH_BUFFER)
    tasks = [
        asyncio.create_task(_pump(cell, call, queue), name=f"watch {cell}")
        for cell, call in calls.items()
    ]
    open_streams = len(tasks)
    try:
        while open_streams:
            cell, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, grpc.aio.AioRpcError):
                await relay_error(context, item, cell)
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OperationsRouter(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """``google.longrunning.Operations`` of the top cell: operations live in the leaf that runs
    them, and their names say which one.

    ListOperations needs one cell (``cells/{cell}/operations``): operations carry no sort key
    that could be merged across cells, so ``cells/-/operations`` is refused with
    INVALID_ARGUMENT rather than answered in an order that could not be paged.
    """

    def __init__(self, cells: CellChannels) -> None:
        self._fwd = _Forwarder(cells, OPERATIONS_SERVICE)

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        return await self._fwd.unary(
            operation_cell(request.name),
            "GetOperation",
            request,
            operations_pb2.Operation,
            context,
        )

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Ctx
    ) -> operations_pb2.ListOperationsResponse:
        parent = request.name.removesuffix("/operations")
        cell = parse_cell(parent, "name", allow_all=True)
        if cell == ALL_CELLS:
            raise InvalidArgument.field(
                "name", "operations are listed one cell at a time: cells/{cell}/operations"
            )
        return await self._fwd.unary(
            cell, "ListOperations", request, operations_pb2.ListOperationsResponse, context
        )

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        return await self._fwd.unary(
            operation_cell(request.name), "DeleteOperation", request, empty_pb2.Empty, context
        )

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        return await self._fwd.unary(
            operation_cell(request.name), "CancelOperation", request, empty_pb2.Empty, context
        )

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        return await self._fwd.unary(
            operation_cell(request.name),
            "WaitOperation",
            request,
            operations_pb2.Operation,
            context,
        )
