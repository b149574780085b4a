"""``google.longrunning.Operations`` for the leaf's operations: thin handlers over the store."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeAlias

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from common.errors import FailedPrecondition
from leaf_cell.conductor import Conductor
from leaf_cell.deploy import Deploys
from leaf_cell.provision import operation_reader

__all__ = ["OperationsServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# WaitOperation returns the operation as it is after this long even if it is still running
# (AIP-151 lets the server cap the wait); clients loop.
MAX_WAIT_SECONDS = 60.0


class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(self, conductor: Conductor, deploys: Deploys | None) -> None:
        self._c = conductor
        self._deploys = deploys
        self._ops = conductor.operations
        self._read = operation_reader(conductor)

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        return await self._c.db(self._ops.get, request.name, self._read)

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Ctx
    ) -> operations_pb2.ListOperationsResponse:
        return await self._c.db(self._ops.list, request, self._read)

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._c.db(self._ops.delete, request.name)
        return empty_pb2.Empty()

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        node_id, action, done = await self._c.db(self._ops.node_and_action, request.name)
        if done:
            raise FailedPrecondition(f"operation {request.name} has already finished")
        deploy = self._deploys.active(node_id) if self._deploys is not None else None
        if (
            action != "deploy"
            or deploy is None
            or deploy.op_id != self._ops.parse_name(request.name)
        ):
            raise FailedPrecondition(
                f"operation {request.name} ({action}) cannot be cancelled; it ends on its own "
                "within the BMC timeout"
            )
        assert self._deploys is not None
        await self._deploys.abort(node_id, "cancelled by the operator")
        return empty_pb2.Empty()

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        op_id = self._ops.parse_name(request.name)
        op = await self._c.db(self._ops.get, request.name, self._read)  # NOT_FOUND first
        if op.done:
            return op
        event = self._ops.event_for(op_id)
        try:
            op = await self._c.db(self._ops.get, request.name, self._read)
            if op.done:
                return op
            limit = MAX_WAIT_SECONDS
            if request.HasField("timeout"):
                limit = min(limit, request.timeout.ToTimedelta().total_seconds())
            remaining = context.time_remaining()
            if remaining is not None:
                limit = min(limit, max(0.0, remaining - 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=limit)
            return await self._c.db(self._ops.get, request.name, self._read)
        finally:
            self._ops.forget_event(op_id)
