"""Fixtures for the conductor suite: a leaf on each backend whose nodes use the fake driver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from leaf_cell.drivers import load_driver
from leaf_cell.drivers.fake import FakeDriver
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
        return self.nodes.GetNode(node_service_pb2.GetNodeRequest(name=f"cells/rack-1/nodes/{node_id}"))

    def run(self, coro: Any) -> Any:
        return self.runner._loop.run(coro)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def fake() -> Iterator[FakeDriver]:
    driver = load_driver("fake")
    assert isinstance(driver, FakeDriver)
    driver.reset()
    yield driver
    driver.reset()


@pytest.fixture
def cell(db_url: str, leaf_runner: Any, fake: FakeDriver) -> Iterator[Cell]:
    server = leaf_runner.start(db_url, bmc_timeout=1.0)
    c = Cell(server, leaf_runner)
    yield c
    c.close()
