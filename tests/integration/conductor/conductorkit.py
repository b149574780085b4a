"""Helpers for the conductor suite (pytest puts this directory on sys.path)."""

from __future__ import annotations

from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc


class Cell:
    """A started in-process leaf plus clients for its NodeService and Operations."""

    def __init__(self, server: Any, runner: Any) -> None:
        self.server = server
        self.runner = runner
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)

    def create(self, node_id: str, address: str, password: str = "pw") -> node_pb2.Node:
        return self.nodes.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent="cells/rack-1",
                node_id=node_id,
                node=node_pb2.Node(
                    bmc=node_pb2.BmcInfo(
                        driver="fake", address=address, username="admin", password=password
                    )
                ),
            )
        )

    def manage(self, node_id: str) -> operations_pb2.Operation:
        op = self.nodes.ChangeProvisionState(
            node_service_pb2.ChangeProvisionStateRequest(
                name=f"cells/rack-1/nodes/{node_id}",
                action=node_service_pb2.PROVISION_ACTION_MANAGE,
            )
        )
        for _ in range(50):
            if op.done:
                return op
            op = self.ops.WaitOperation(
                operations_pb2.WaitOperationRequest(name=op.name), timeout=10
            )
        raise AssertionError(f"operation {op.name} never finished")

    def get(self, node_id: str) -> node_pb2.Node:
        return self.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=f"cells/rack-1/nodes/{node_id}")
        )

    def run(self, coro: Any) -> Any:
        return self.runner._loop.run(coro)

    def close(self) -> None:
        self.channel.close()
