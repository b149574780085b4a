"""A deploy records where its time went: the node's last_deploy and OpenTelemetry spans."""

from __future__ import annotations

from deploykit import PHASES

from rackcells.v1 import node_pb2


def test_deploy_with_fake_bmc_reaches_active_and_records_seven_phases_in_order(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    [machine] = rack(cell, 1)
    op = cell.wait(cell.deploy("d0", image.url, image.checksum))
    assert not op.HasField("error"), op.error
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
    result = machine.join()
    assert result is not None and result.success
    assert machine.disk.checksum() == image.checksum
    phases = [(p.phase, p.duration.ToTimedelta().total_seconds()) for p in node.last_deploy.phases]
    assert [p for p, _ in phases] == list(PHASES)
    assert all(seconds >= 0 for _, seconds in phases)
    assert node.last_deploy.end_time.ToDatetime() >= node.last_deploy.start_time.ToDatetime()
