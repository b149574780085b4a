"""Undeploy takes an active (or failed) node back to available, powered off and without its
instance; provide takes a manageable node to available, powered off."""

from __future__ import annotations

from deploykit import bmc_address
from google.rpc import code_pb2

from leaf_cell.drivers.base import PowerState
from rackcells.v1 import node_pb2, node_service_pb2


def test_undeploy_of_an_active_node_powers_it_off_and_makes_it_available(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    assert fake.bmc(bmc_address(0)).power is PowerState.ON

    op = cell.wait(cell.change("d0", node_service_pb2.PROVISION_ACTION_UNDEPLOY))
    assert not op.HasField("error"), op.error
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_AVAILABLE
    assert node.power_state == node_pb2.POWER_STATE_OFF
    assert fake.bmc(bmc_address(0)).power is PowerState.OFF
    assert node.instance_info == node_pb2.InstanceInfo()
    assert not node.HasField("lock") and node.last_error == ""


def test_undeploy_of_a_failed_deploy_makes_the_node_available(cell, rack, image, fake) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.wait(cell.deploy("d0", image.source.url + "/nope.img", image.checksum))
    assert op.HasField("error")
    op = cell.wait(cell.change("d0", node_service_pb2.PROVISION_ACTION_UNDEPLOY))
    assert not op.HasField("error"), op.error
    assert cell.get("d0").provision_state == node_pb2.PROVISION_STATE_AVAILABLE


def test_undeploy_whose_power_off_fails_leaves_the_node_in_error(cell, rack, image, fake) -> None:  # type: ignore[no-untyped-def]
    from leaf_cell.drivers.base import DriverErrorKind

    rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    fake.set_fault(bmc_address(0), 0, DriverErrorKind.TIMEOUT)
    op = cell.wait(cell.change("d0", node_service_pb2.PROVISION_ACTION_UNDEPLOY))
    assert op.error.code == code_pb2.UNAVAILABLE
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_ERROR
    assert "tear-down" in node.last_error and not node.HasField("lock")


def test_provide_of_a_manageable_node_powers_it_off_and_makes_it_available(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.66.1.1", power=PowerState.ON)
    cell.create("p0", "10.66.1.1", "52:54:00:66:01:01")
    assert not cell.wait(cell.change("p0", node_service_pb2.PROVISION_ACTION_MANAGE)).HasField(
        "error"
    )
    assert cell.get("p0").provision_state == node_pb2.PROVISION_STATE_MANAGEABLE

    op = cell.wait(cell.change("p0", node_service_pb2.PROVISION_ACTION_PROVIDE))
    assert not op.HasField("error"), op.error
    node = cell.get("p0")
    assert node.provision_state == node_pb2.PROVISION_STATE_AVAILABLE
    assert node.power_state == node_pb2.POWER_STATE_OFF
    assert fake.bmc("10.66.1.1").power is PowerState.OFF
    assert not node.HasField("lock")
