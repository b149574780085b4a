"""The leaf's NodeService: thin async handlers that hand blocking work to the flow modules.

Each handler validates nothing itself and holds no state beyond its collaborators; the flows
raise :mod:`common.errors` exceptions, which the shared interceptor maps to statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2

from leaf_cell.nodes import NodeStore
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

__all__ = ["NodeServicer"]

T = TypeVar("T")
Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class NodeServicer(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, store: NodeStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def CreateNode(
        self, request: node_service_pb2.CreateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        return await self._run(self._store.create, request)

    async def GetNode(
        self, request: node_service_pb2.GetNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        return await self._run(self._store.get, request.name)

    async def ListNodes(
        self, request: node_service_pb2.ListNodesRequest, context: Ctx
    ) -> node_service_pb2.ListNodesResponse:
        return await self._run(self._store.list_nodes, request)

    async def UpdateNode(
        self, request: node_service_pb2.UpdateNodeRequest, context: Ctx
    ) -> node_pb2.Node:
        return await self._run(self._store.update, request)

    async def DeleteNode(
        self, request: node_service_pb2.DeleteNodeRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._run(self._store.delete, request)
        return empty_pb2.Empty()
