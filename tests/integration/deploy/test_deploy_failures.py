"""Every way a deploy can fail ends the same way: the node in DEPLOY_FAILED with last_error
naming the phase, the operation finished with an error, and no lock left on the node. The deploy
agent's side of the AgentService is checked here too (the test plays the agent)."""

from __future__ import annotations

import hashlib

import grpc
from deploykit import bmc_address, expect_error, http_get, node_mac, wait_until
from google.rpc import code_pb2

from leaf_cell.drivers.base import PowerState
from rackcells.v1 import agent_service_pb2, node_pb2, node_service_pb2


def _powered_on(fake, address: str) -> bool:  # type: ignore[no-untyped-def]
    return fake.bmc(address).power is PowerState.ON


def test_wrong_image_checksum_fails_in_image_cache_and_a_corrected_deploy_succeeds(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    wrong = "sha256:" + hashlib.sha256(b"some other image").hexdigest()
    op = cell.wait(cell.deploy("d0", image.url, wrong))
    assert op.error.code == code_pb2.FAILED_PRECONDITION
    node = cell.assert_failed_cleanly("d0", op, "image_cache")
    assert "checksum" in node.last_error
    assert fake.bmc(bmc_address(0)).power is PowerState.OFF  # never powered on for a bad image

    op = cell.wait(cell.deploy("d0", image.url, image.checksum))
    assert not op.HasField("error"), op.error
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
    assert node.last_error == ""


def test_image_url_answering_404_fails_in_image_cache(cell, rack, image) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.wait(cell.deploy("d0", image.source.url + "/missing.img", image.checksum))
    node = cell.assert_failed_cleanly("d0", op, "image_cache")
    assert "404" in node.last_error


def test_node_that_never_fetches_its_boot_script_fails_in_pxe(
    start_cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(deploy_pxe_timeout=1.0)
    rack(cell, 1, boot=False)  # no machine behind the BMC: nothing fetches /boot/<mac>
    op = cell.wait(cell.deploy("d0", image.url, image.checksum))
    assert op.error.code == code_pb2.DEADLINE_EXCEEDED
    node = cell.assert_failed_cleanly("d0", op, "pxe")
    assert "boot script" in node.last_error
    assert fake.bmc(bmc_address(0)).power is PowerState.ON  # it was powered on to PXE-boot
    assert [p.phase for p in node.last_deploy.phases] == ["queued", "image_cache", "power_on"]


def test_agent_reporting_failure_fails_in_image_write(cell, rack, image, fake) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.deploy("d0", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(lambda: _powered_on(fake, bmc_address(0)), "power on")
    # Act as the deploy agent: one lookup for the plan, one report.
    found = cell.lookup(node_mac(0))
    assert found.node == "cells/rack-1/nodes/d0"
    assert found.plan.image_checksum == image.checksum
    assert found.plan.image_url.startswith(cell.http + "/images/")
    assert found.plan.image_size == image.path.stat().st_size
    cell.agent.ReportDeploy(
        agent_service_pb2.ReportDeployRequest(
            node=found.node,
            deploy_id=found.plan.deploy_id,
            token=found.plan.token,
            success=False,
            error="disk /dev/sda is on fire",
        )
    )
    op = cell.wait(op)
    node = cell.assert_failed_cleanly("d0", op, "image_write")
    assert "disk /dev/sda is on fire" in node.last_error
    # The report is final: a second one is refused.
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.agent.ReportDeploy,
        agent_service_pb2.ReportDeployRequest(
            node=found.node, deploy_id=found.plan.deploy_id, token=found.plan.token, success=True
        ),
    )


def test_agent_report_with_wrong_token_is_denied_and_the_deploy_continues(
    cell, rack, image, fake, machine
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.deploy("d0", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(lambda: _powered_on(fake, bmc_address(0)), "power on")
    found = cell.lookup(node_mac(0))
    err = expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        cell.agent.ReportDeploy,
        agent_service_pb2.ReportDeployRequest(
            node=found.node,
            deploy_id=found.plan.deploy_id,
            token="forged-" + found.plan.token[:8],
            success=True,
            written_checksum=image.checksum,
        ),
    )
    assert found.plan.token not in err.details()
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_WAIT_CALL_BACK
    assert not cell.get_op(op.name).done
    # A report for another deploy id is refused as well, without touching this deploy.
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.agent.ReportDeploy,
        agent_service_pb2.ReportDeployRequest(
            node=found.node, deploy_id="not-this-one", token=found.plan.token, success=True
        ),
    )
    # The genuine agent (a machine that boots now) still finishes the deploy.
    result = machine(cell, bmc_address(0), node_mac(0), late=True).join()
    assert result is not None and result.success, result
    op = cell.wait(op)
    assert not op.HasField("error"), op.error
    assert cell.get("d0").provision_state == node_pb2.PROVISION_STATE_ACTIVE


def test_lookup_of_unknown_mac_is_not_found(cell) -> None:  # type: ignore[no-untyped-def]
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        cell.agent.LookupNode,
        agent_service_pb2.LookupNodeRequest(macs=["02:00:00:00:00:99"]),
    )
    assert "02:00:00:00:00:99" in err.details()


def test_lookup_of_invalid_macs_is_invalid_argument(cell) -> None:  # type: ignore[no-untyped-def]
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        cell.agent.LookupNode,
        agent_service_pb2.LookupNodeRequest(macs=["not-a-mac"]),
    )
    assert "macs" in err.details()


def test_lookup_of_a_node_that_is_not_deploying_is_failed_precondition(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.agent.LookupNode,
        agent_service_pb2.LookupNodeRequest(macs=[node_mac(0)]),
    )
    assert "cells/rack-1/nodes/d0" in err.details()
    assert cell.get("d0").provision_state == node_pb2.PROVISION_STATE_AVAILABLE


def test_agent_reporting_a_different_checksum_fails_in_image_write_as_data_loss(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    op = cell.deploy("d0", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(lambda: _powered_on(fake, bmc_address(0)), "power on")
    found = cell.lookup(node_mac(0))
    written = "sha256:" + "7" * 64
    cell.agent.ReportDeploy(
        agent_service_pb2.ReportDeployRequest(
            node=found.node,
            deploy_id=found.plan.deploy_id,
            token=found.plan.token,
            success=True,
            bytes_written=found.plan.image_size,
            written_checksum=written,
        )
    )
    op = cell.wait(op)
    assert op.error.code == code_pb2.DATA_LOSS
    node = cell.assert_failed_cleanly("d0", op, "image_write")
    assert written in node.last_error


def test_plan_carries_the_root_device_and_an_image_url_on_the_leaf(cell, rack, image, fake) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    info = node_pb2.InstanceInfo(
        image_url=image.url, image_checksum=image.checksum, root_device="/dev/nvme0n1"
    )
    cell.change("d0", node_service_pb2.PROVISION_ACTION_DEPLOY, info)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    # MACs are matched whatever their spelling.
    found = cell.lookup(node_mac(0).upper().replace(":", "-"))
    assert found.plan.target_device == "/dev/nvme0n1"
    digest = image.checksum.removeprefix("sha256:")
    assert found.plan.image_url == f"{cell.http}/images/{digest}"
    status, _ = http_get(found.plan.image_url)
    assert status == 200
    assert cell.get("d0").instance_info.root_device == "/dev/nvme0n1"


def test_boot_script_is_deploy_only_while_the_node_waits_for_its_agent(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    status, script = cell.boot_script(node_mac(0))
    assert status == 200 and "boot-from-disk cells/rack-1/nodes/d0" in script
    status, _ = cell.boot_script("02:00:00:00:00:42")
    assert status == 404
    cell.deploy("d0", image.url, image.checksum)
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    status, script = cell.boot_script(node_mac(0))
    assert status == 200 and "rackcells deploy cells/rack-1/nodes/d0" in script
    assert f"rackcells.agent_endpoint={cell.endpoint}" in script
