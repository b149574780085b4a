"""Manage, power and boot-device flows through the leaf's API, with locks and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.longrunning import operations_pb2
from google.rpc import code_pb2
from sqlalchemy import create_engine, select, update

from leaf_cell.db.models import EventRow, NodeRow
from leaf_cell.drivers.base import BootDevice, DriverErrorKind, PowerState
from rackcells.v1 import node_pb2, node_service_pb2


def _power(cell, node_id: str, action: int) -> node_pb2.Node:  # type: ignore[no-untyped-def]
    return cell.nodes.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=f"cells/rack-1/nodes/{node_id}", action=action)
    )


def test_manage_proves_the_credentials_and_records_power(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.1", password="pw", power=PowerState.ON)
    cell.create("n1", "10.0.0.1")
    op = cell.manage("n1")
    assert op.done and not op.HasField("error")
    assert op.name.startswith("cells/rack-1/operations/")
    node = node_pb2.Node()
    op.response.Unpack(node)
    assert node.provision_state == node_pb2.PROVISION_STATE_MANAGEABLE
    assert node.power_state == node_pb2.POWER_STATE_ON
    assert not node.HasField("lock")
    got = cell.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name))
    assert got.done and got.name == op.name


def test_manage_with_wrong_password_returns_to_enroll_with_last_error(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.2", password="right")
    cell.create("n2", "10.0.0.2", password="wrong")
    op = cell.manage("n2")
    assert op.error.code == code_pb2.FAILED_PRECONDITION
    node = cell.get("n2")
    assert node.provision_state == node_pb2.PROVISION_STATE_ENROLL
    assert "credentials" in node.last_error or "auth" in node.last_error.lower()
    assert "wrong" not in node.last_error and "wrong" not in op.error.message
    assert not node.HasField("lock")


def test_manage_is_refused_in_a_state_that_does_not_allow_it(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.3")
    cell.create("n3", "10.0.0.3")
    cell.manage("n3")
    with pytest.raises(grpc.RpcError) as err:
        cell.nodes.ChangeProvisionState(
            node_service_pb2.ChangeProvisionStateRequest(
                name="cells/rack-1/nodes/n3", action=node_service_pb2.PROVISION_ACTION_ABORT
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "abort" in err.value.details() and "MANAGEABLE" in err.value.details()
    assert cell.get("n3").provision_state == node_pb2.PROVISION_STATE_MANAGEABLE


def test_unspecified_action_is_invalid_and_changes_nothing(cell, fake) -> None:  # type: ignore[no-untyped-def]
    cell.create("n4", "10.0.0.4")
    before = cell.get("n4")
    for call, req, field in [
        (
            cell.nodes.ChangeProvisionState,
            node_service_pb2.ChangeProvisionStateRequest(name="cells/rack-1/nodes/n4"),
            "action",
        ),
        (
            cell.nodes.SetPowerState,
            node_service_pb2.SetPowerStateRequest(name="cells/rack-1/nodes/n4"),
            "action",
        ),
        (
            cell.nodes.SetBootDevice,
            node_service_pb2.SetBootDeviceRequest(name="cells/rack-1/nodes/n4"),
            "device",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field)
    assert cell.get("n4") == before


def test_power_on_and_off_reach_the_bmc_and_are_recorded(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.5")
    cell.create("n5", "10.0.0.5")
    node = _power(cell, "n5", node_service_pb2.POWER_ACTION_ON)
    assert node.power_state == node_pb2.POWER_STATE_ON
    assert fake.bmc("10.0.0.5").power is PowerState.ON
    node = _power(cell, "n5", node_service_pb2.POWER_ACTION_OFF)
    assert node.power_state == node_pb2.POWER_STATE_OFF
    assert fake.bmc("10.0.0.5").power is PowerState.OFF


def test_boot_device_reaches_the_bmc(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.6")
    cell.create("n6", "10.0.0.6")
    cell.nodes.SetBootDevice(
        node_service_pb2.SetBootDeviceRequest(
            name="cells/rack-1/nodes/n6", device=node_service_pb2.BOOT_DEVICE_PXE, persistent=True
        )
    )
    bmc = fake.bmc("10.0.0.6")
    assert bmc.boot_device is BootDevice.PXE and bmc.persistent


def test_a_locked_node_refuses_power_naming_holder_and_purpose(cell, fake, db_url) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.7")
    cell.create("n7", "10.0.0.7")
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            update(NodeRow.__table__)
            .where(NodeRow.__table__.c.node_id == "n7")
            .values(
                lock_holder="conductor/other",
                lock_purpose="deploy",
                lock_since=now,
                lock_expires=now + timedelta(minutes=5),
            )
        )
    with pytest.raises(grpc.RpcError) as err:
        _power(cell, "n7", node_service_pb2.POWER_ACTION_ON)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "conductor/other" in err.value.details() and "deploy" in err.value.details()
    assert fake.bmc("10.0.0.7").power is PowerState.OFF
    node = cell.get("n7")
    assert node.lock.holder == "conductor/other" and node.lock.purpose == "deploy"
    engine.dispose()


def test_an_expired_lease_does_not_block(cell, fake, db_url) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.8")
    cell.create("n8", "10.0.0.8")
    engine = create_engine(db_url)
    past = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            update(NodeRow.__table__)
            .where(NodeRow.__table__.c.node_id == "n8")
            .values(
                lock_holder="conductor/dead",
                lock_purpose="deploy",
                lock_since=past,
                lock_expires=past + timedelta(minutes=5),
            )
        )
    engine.dispose()
    assert (
        _power(cell, "n8", node_service_pb2.POWER_ACTION_ON).power_state == node_pb2.POWER_STATE_ON
    )
    assert not cell.get("n8").HasField("lock")


def test_unreachable_bmc_is_unavailable_and_marks_power_unknown(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.9")
    cell.create("n9", "10.0.0.9")
    fake.set_fault("10.0.0.9", 0, DriverErrorKind.TIMEOUT)
    with pytest.raises(grpc.RpcError) as err:
        _power(cell, "n9", node_service_pb2.POWER_ACTION_ON)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    node = cell.get("n9")
    assert node.power_state == node_pb2.POWER_STATE_UNKNOWN
    assert "10.0.0.9" in node.last_error
    assert not node.HasField("lock")


def test_unsupported_command_is_a_failed_precondition(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.10")
    cell.create("n10", "10.0.0.10")
    fake.set_fault("10.0.0.10", 0, DriverErrorKind.UNSUPPORTED)
    with pytest.raises(grpc.RpcError) as err:
        cell.nodes.SetBootDevice(
            node_service_pb2.SetBootDeviceRequest(
                name="cells/rack-1/nodes/n10", device=node_service_pb2.BOOT_DEVICE_DISK
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_power_actions_are_recorded_as_events(cell, fake, db_url) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.11")
    cell.create("n11", "10.0.0.11")
    _power(cell, "n11", node_service_pb2.POWER_ACTION_REBOOT)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        kinds = conn.execute(select(EventRow.kind).where(EventRow.node_id == "n11")).scalars().all()
    engine.dispose()
    assert "power" in kinds


def test_operations_list_and_delete(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.0.0.12")
    cell.create("n12", "10.0.0.12")
    op = cell.manage("n12")
    listed = cell.ops.ListOperations(
        operations_pb2.ListOperationsRequest(name="cells/rack-1/operations")
    )
    assert op.name in [o.name for o in listed.operations]
    cell.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name))
    with pytest.raises(grpc.RpcError) as err:
        cell.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        cell.ops.GetOperation(operations_pb2.GetOperationRequest(name="cells/rack-1/nodes/x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
