"""Deploying an active node again writes the new image: the machine is power-cycled into PXE,
the new image is fetched into the cache, and the node's instance and timings are replaced."""

from __future__ import annotations

from deploykit import PHASES, bmc_address, make_image, node_mac

from leaf_cell.drivers.base import BootDevice
from rackcells.v1 import node_pb2


def test_redeploy_of_an_active_node_writes_the_new_image(cell, rack, machine, image, fake) -> None:  # type: ignore[no-untyped-def]
    [first] = rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    assert first.join().success
    before = cell.get("d0")
    power_ons = fake.bmc(bmc_address(0)).power_ons

    second_sum = make_image(image.path.parent / "os2.img", 300_000)
    again = machine(cell, bmc_address(0), node_mac(0))
    op = cell.wait(cell.deploy("d0", image.source.url + "/os2.img", second_sum))
    assert not op.HasField("error"), op.error
    result = again.join()
    assert result is not None and result.success
    assert again.disk.checksum() == second_sum and again.disk.size == 300_000

    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
    assert node.instance_info.image_checksum == second_sum
    assert [p.phase for p in node.last_deploy.phases] == list(PHASES)
    assert node.last_deploy.start_time.ToDatetime() > before.last_deploy.end_time.ToDatetime()
    bmc = fake.bmc(bmc_address(0))
    assert bmc.power_ons == power_ons + 2  # the power cycle into PXE, the reboot into the disk
    assert bmc.boot_device is BootDevice.DISK and bmc.persistent
    assert image.source.downloads == 2  # one per image
    # The operation's response is the node as it is now.
    response = node_pb2.Node()
    assert op.response.Unpack(response)
    assert response.provision_state == node_pb2.PROVISION_STATE_ACTIVE
