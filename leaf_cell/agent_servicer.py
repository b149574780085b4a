"""AgentService for the deploy agents in the nodes' ramdisks: thin handlers over the deploys."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from common.errors import FailedPrecondition
from leaf_cell.deploy import Deploys
from rackcells.v1 import agent_service_pb2, agent_service_pb2_grpc

__all__ = ["AgentServicer"]

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, deploys: Deploys | None) -> None:
        self._deploys = deploys

    def _running(self) -> Deploys:
        if self._deploys is None:
            raise FailedPrecondition("this leaf runs no deploys (no boot HTTP server configured)")
        return self._deploys

    async def LookupNode(
        self, request: agent_service_pb2.LookupNodeRequest, context: Ctx
    ) -> agent_service_pb2.LookupNodeResponse:
        return await self._running().lookup(request)

    async def ReportDeploy(
        self, request: agent_service_pb2.ReportDeployRequest, context: Ctx
    ) -> agent_service_pb2.ReportDeployResponse:
        await self._running().report(request)
        return agent_service_pb2.ReportDeployResponse()
