"""The leaf's NodeService: thin async handlers that hand the work to the flow modules.

Handlers hold no logic of their own: inventory edits go to :mod:`leaf_cell.nodes` in the
database pool, power and provisioning to :mod:`leaf_cell.power` and :mod:`leaf_cell.provision`
on the conductor. The flows raise :mod:`common.errors` exceptions, which the shared interceptor
maps to statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from common.errors import RackcellsError
from common.names import parse_node_name
from leaf_cell import power, provision
from leaf_cell.conductor import Conductor
from leaf_cell.deploy import Deploys
from leaf_cell.drivers.base import BmcAccess
from leaf_cell.events import EventBus, watch_nodes
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

__all__ = ["NodeServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class NodeServicer(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, conductor: Conductor, deploys: Deploys | None, bus: EventBus) -> None:
        self._c = conductor
        self._store = conductor.nodes
        self._deploys = deploys
        self._bus = bus

    async def CreateNode(
        self, request: node_service_pb2.CreateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        return await self._c.db(self._store.create, request)

    async def BatchCreateNodes(
        self, request: node_service_pb2.BatchCreateNodesRequest, context: Ctx
    ) -> node_service_pb2.BatchCreateNodesResponse:
        return await self._c.db(self._store.batch_create, request)

    # Reads answer in wire form (see leaf_cell.node_wire; registered with common.wire).
    async def GetNode(  # type: ignore[override]
        self, request: node_service_pb2.GetNodeRequest, context: Ctx
    ) -> bytes:
        return await self._c.db(self._store.get_wire, request.name)

    async def ListNodes(  # type: ignore[override]
        self, request: node_service_pb2.ListNodesRequest, context: Ctx
    ) -> bytes:
        return await self._c.db(self._store.list_wire, request)

    async def UpdateNode(
        self, request: node_service_pb2.UpdateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        touches_bmc = any(p.partition(".")[0] in ("bmc", "*") for p in request.update_mask.paths)
        before = await self._bmc_of(request.node.name) if touches_bmc else None
        node = await self._c.db(self._store.update, request)
        if before is not None:
            await self._c.forget_bmc(before)  # new credentials: no session may outlive them
        return node

    async def DeleteNode(
        self, request: node_service_pb2.DeleteNodeRequest, context: Ctx
    ) -> empty_pb2.Empty:
        before = await self._bmc_of(request.name)
        await self._c.db(self._store.delete, request)
        if before is not None:
            await self._c.forget_bmc(before)
        return empty_pb2.Empty()

    async def _bmc_of(self, name: str) -> BmcAccess | None:
        """The node's BMC before a change, or None when the name does not resolve (yet)."""
        try:
            node_id = parse_node_name(name).node
            return (await self._c.db(self._c.status.status, node_id)).bmc
        except RackcellsError:
            return None

    async def SetPowerState(
        self, request: node_service_pb2.SetPowerStateRequest, context: Ctx
    ) -> node_pb2.Node:
        return await power.set_power(self._c, request)

    async def SetBootDevice(
        self, request: node_service_pb2.SetBootDeviceRequest, context: Ctx
    ) -> node_pb2.Node:
        return await power.set_boot_device(self._c, request)

    async def ChangeProvisionState(
        self, request: node_service_pb2.ChangeProvisionStateRequest, context: Ctx
    ) -> operations_pb2.Operation:
        return await provision.change_provision_state(self._c, self._deploys, request)

    async def WatchNodes(
        self, request: node_service_pb2.WatchNodesRequest, context: Ctx
    ) -> AsyncIterator[node_service_pb2.NodeEvent]:
        async for event in watch_nodes(
            request, self._store.cell, self._store.engine, self._bus, self._c.db
        ):
            yield event
