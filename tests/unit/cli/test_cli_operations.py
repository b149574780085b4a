"""Provisioning actions wait for their operation: WaitOperation, or GetOperation polling."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2

from rackcells.cli.errors import CliError
from rackcells.cli.main import main
from rackcells.cli.operations import (
    OperationFailed,
    describe_progress,
    operation_node,
    wait_operation,
)
from rackcells.v1 import node_pb2, node_service_pb2

OP = "cells/rack-1/operations/op-1"
NODE = "cells/rack-1/nodes/n1"


def running(phase: str = "", percent: int = 0, queue: int = 0) -> operations_pb2.Operation:
    meta = any_pb2.Any()
    meta.Pack(
        node_service_pb2.ProvisionOperationMetadata(
            node=NODE,
            action=node_service_pb2.PROVISION_ACTION_DEPLOY,
            phase=phase,
            percent=percent,
            queue_position=queue,
        )
    )
    return operations_pb2.Operation(name=OP, metadata=meta)


def finished(state: int = node_pb2.PROVISION_STATE_ACTIVE) -> operations_pb2.Operation:
    response = any_pb2.Any()
    response.Pack(node_pb2.Node(name=NODE, provision_state=state))  # type: ignore[arg-type]
    return operations_pb2.Operation(name=OP, done=True, response=response)


def failed() -> operations_pb2.Operation:
    return operations_pb2.Operation(
        name=OP,
        done=True,
        error=status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message="agent never called back"),
    )


class FakeOperations:
    """Operations stub double: answers from a script; WaitOperation may be unimplemented."""

    def __init__(
        self,
        answers: list[operations_pb2.Operation],
        error: Any = None,
        wait_implemented: bool = True,
    ) -> None:
        self.answers = answers
        self.error = error
        self.wait_implemented = wait_implemented
        self.calls: list[str] = []

    def WaitOperation(self, request: operations_pb2.WaitOperationRequest, timeout: float) -> Any:
        self.calls.append("Wait")
        assert request.name == OP and request.timeout.ToTimedelta().total_seconds() > 0
        assert timeout > request.timeout.ToTimedelta().total_seconds()
        if not self.wait_implemented:
            raise self.error
        return self.answers.pop(0)

    def GetOperation(self, request: operations_pb2.GetOperationRequest, timeout: float) -> Any:
        self.calls.append("Get")
        return self.answers.pop(0)


def test_waits_with_wait_operation_and_reports_progress() -> None:
    ops = FakeOperations([running("image_write", 40), finished()])
    seen: list[str] = []
    result = wait_operation(
        ops,
        running(queue=2),
        wait_timeout=60,
        rpc_timeout=5,
        on_progress=lambda op: seen.append(describe_progress(op)),
        sleep=lambda s: None,
    )
    assert result.done and ops.calls == ["Wait", "Wait"]
    assert seen == ["n1: queued (position 2)", "n1: image_write 40%"]
    assert describe_progress(running(queue=3)) == "n1: queued (position 3)"


def test_falls_back_to_polling_when_wait_is_unimplemented(
    transport_error: Callable[..., grpc.RpcError],
) -> None:
    ops = FakeOperations(
        [running("verifying"), finished()],
        error=transport_error(grpc.StatusCode.UNIMPLEMENTED, "no"),
        wait_implemented=False,
    )
    sleeps: list[float] = []
    result = wait_operation(ops, running(), wait_timeout=60, rpc_timeout=5, sleep=sleeps.append)
    assert result.done and ops.calls == ["Wait", "Get", "Get"]
    assert sleeps == [0.5, 0.5]


def test_gives_up_after_wait_timeout() -> None:
    now = [0.0]

    class Slow(FakeOperations):
        def WaitOperation(self, request: Any, timeout: float) -> Any:
            now[0] += request.timeout.ToTimedelta().total_seconds()
            return running("image_write")

    with pytest.raises(CliError, match="still running after 12s"):
        wait_operation(Slow([]), running(), wait_timeout=12, rpc_timeout=5, clock=lambda: now[0])


def test_other_errors_propagate(transport_error: Callable[..., grpc.RpcError]) -> None:
    ops = FakeOperations(
        [], error=transport_error(grpc.StatusCode.NOT_FOUND, "gone"), wait_implemented=False
    )
    with pytest.raises(grpc.RpcError):
        wait_operation(ops, running(), wait_timeout=5, rpc_timeout=5)


def test_outcome() -> None:
    node = operation_node(finished())
    assert node is not None and node.name == NODE
    with pytest.raises(OperationFailed, match="DEADLINE_EXCEEDED: agent never called back"):
        operation_node(failed())
    assert operation_node(operations_pb2.Operation(name=OP, done=True)) is None


def test_deploy_command_sends_image_waits_and_prints_node(
    fake_nodes: Any, patch_session: Callable[[], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    fake_nodes.next_operation = running(queue=1)
    patch_session()._operations = FakeOperations([finished()])
    checksum = "sha256:" + "a" * 64
    assert (
        main(["node", "deploy", "n1", "--image", "http://img/x.raw", "--checksum", checksum]) == 0
    )
    ((_, request),) = [c for c in fake_nodes.calls if c[0] == "ChangeProvisionState"]
    assert request.action == node_service_pb2.PROVISION_ACTION_DEPLOY
    assert request.instance_info.image_url == "http://img/x.raw"
    assert request.instance_info.image_checksum == checksum
    assert capsys.readouterr().out.strip() == f"{NODE}: active, power -"


def test_failed_operation_exits_1(
    fake_nodes: Any, patch_session: Callable[[], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    fake_nodes.next_operation = running()
    patch_session()._operations = FakeOperations([failed()])
    assert main(["node", "provide", "n1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"rackcells: operation {OP} failed: DEADLINE_EXCEEDED: agent never called back"
    )


def test_ending_in_a_failed_state_exits_1_except_for_abort(
    fake_nodes: Any, patch_session: Callable[[], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    fake_nodes.next_operation = running()
    patch_session()._operations = FakeOperations([finished(node_pb2.PROVISION_STATE_DEPLOY_FAILED)])
    assert main(["node", "deploy", "n1"]) == 1
    assert "ended in deploy-failed" in capsys.readouterr().err
    patch_session()._operations = FakeOperations([finished(node_pb2.PROVISION_STATE_DEPLOY_FAILED)])
    assert main(["node", "abort", "n1"]) == 0


def test_no_wait_prints_the_operation(
    fake_nodes: Any, patch_session: Callable[[], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    fake_nodes.next_operation = running()
    assert main(["node", "manage", "n1", "--no-wait", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == OP
    assert main(["node", "manage", "n1", "--no-wait"]) == 0
    assert OP in capsys.readouterr().out
