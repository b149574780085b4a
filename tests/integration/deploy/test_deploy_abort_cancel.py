"""Stopping a deploy: ABORT while the node waits for its agent, CancelOperation on a deploy
that is running or still queued. The node ends in DEPLOY_FAILED, unlocked, and the operation
ends with an error; the admission queue loses only the cancelled deploy."""

from __future__ import annotations

import grpc
from deploykit import bmc_address, expect_error, metadata, node_mac, wait_until
from google.longrunning import operations_pb2
from google.rpc import code_pb2

from rackcells.v1 import node_pb2, node_service_pb2


def test_abort_while_waiting_for_the_agent_fails_the_deploy_as_aborted(cell, rack, image) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.deploy("d0", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)

    abort = cell.change("d0", node_service_pb2.PROVISION_ACTION_ABORT)
    assert abort.done and not abort.HasField("error"), abort
    assert metadata(abort).action == node_service_pb2.PROVISION_ACTION_ABORT

    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_DEPLOY_FAILED
    assert "aborted" in node.last_error
    assert not node.HasField("lock")
    op = cell.get_op(op.name)
    assert op.done and op.error.code == code_pb2.ABORTED and "aborted" in op.error.message
    assert cell.server.deploys.active("d0") is None
    assert cell.server.deploys.admission.running == 0


def test_abort_of_a_node_that_is_not_waiting_for_its_agent_is_refused(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.nodes.ChangeProvisionState,
        node_service_pb2.ChangeProvisionStateRequest(
            name="cells/rack-1/nodes/d0", action=node_service_pb2.PROVISION_ACTION_ABORT
        ),
    )
    assert "AVAILABLE" in err.details()
    assert cell.get("d0").provision_state == node_pb2.PROVISION_STATE_AVAILABLE


def test_cancel_of_a_queued_deploy_fails_only_that_deploy_and_frees_no_slot(
    start_cell, rack, machine, image
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(deploy_concurrency=1)
    rack(cell, 3, boot=False)
    first = cell.deploy("d0", image.url, image.checksum)
    queued = cell.deploy("d1", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(lambda: metadata(cell.get_op(queued.name)).queue_position == 1, "d1 queued")

    cell.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=queued.name))

    op = cell.get_op(queued.name)
    assert op.done and op.error.code == code_pb2.ABORTED and "cancelled" in op.error.message
    node = cell.get("d1")
    assert node.provision_state == node_pb2.PROVISION_STATE_DEPLOY_FAILED
    assert "cancelled" in node.last_error and not node.HasField("lock")
    assert [p.phase for p in node.last_deploy.phases] == []  # it never left the queue
    # d0 still holds the only slot: a new deploy queues behind it instead of running.
    assert cell.get("d0").provision_state == node_pb2.PROVISION_STATE_WAIT_CALL_BACK
    later = cell.deploy("d2", image.url, image.checksum)
    wait_until(lambda: metadata(cell.get_op(later.name)).queue_position == 1, "d2 queued")
    assert cell.server.deploys.admission.running == 1
    assert cell.get("d2").provision_state == node_pb2.PROVISION_STATE_DEPLOYING

    for i in (0, 2):
        machine(cell, bmc_address(i), node_mac(i), late=True)
    assert not cell.wait(first).HasField("error")
    assert not cell.wait(later).HasField("error")
    assert cell.get("d2").provision_state == node_pb2.PROVISION_STATE_ACTIVE
    # A finished operation cannot be cancelled.
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.ops.CancelOperation,
        operations_pb2.CancelOperationRequest(name=queued.name),
    )


def test_cancel_of_a_running_deploy_fails_it_and_admits_the_next(
    start_cell, rack, machine, image
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(deploy_concurrency=1)
    rack(cell, 2, boot=False)
    running = cell.deploy("d0", image.url, image.checksum)
    queued = cell.deploy("d1", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)

    cell.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=running.name))

    op = cell.get_op(running.name)
    assert op.done and op.error.code == code_pb2.ABORTED
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_DEPLOY_FAILED
    assert not node.HasField("lock")
    machine(cell, bmc_address(1), node_mac(1), late=True)
    assert not cell.wait(queued).HasField("error")
    assert cell.get("d1").provision_state == node_pb2.PROVISION_STATE_ACTIVE
