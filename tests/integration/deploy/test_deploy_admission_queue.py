"""Deploys beyond deploy_concurrency wait in a FIFO queue whose positions the operations show."""

from __future__ import annotations

from deploykit import bmc_address, metadata, node_mac, wait_until

from rackcells.v1 import node_pb2


def _positions(cell, ops) -> list[int]:  # type: ignore[no-untyped-def]
    return [metadata(cell.get_op(op.name)).queue_position for op in ops]


def _pxe_order(fake) -> list[str]:  # type: ignore[no-untyped-def]
    """Addresses in the order their BMCs were told to PXE-boot (the order deploys ran)."""
    return [c.address for c in fake.calls if c.method == "set_boot_device" and c.argument == "pxe"]


def test_queued_deploys_show_positions_1_2_3_and_drain_in_fifo_order(
    start_cell, rack, machine, image, fake
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(deploy_concurrency=1)
    count = 4
    rack(cell, count, boot=False)
    ops = [cell.deploy(f"d{i}", image.url, image.checksum) for i in range(count)]

    # d0 holds the only slot (it waits for its machine to PXE-boot); the rest queue in order.
    cell.wait_state("d0", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    wait_until(lambda: _positions(cell, ops) == [0, 1, 2, 3], "queue positions 0, 1, 2, 3")
    for op in ops[1:]:
        meta = metadata(cell.get_op(op.name))
        assert meta.phase == "queued" and meta.node.startswith("cells/rack-1/nodes/d")
        assert cell.get(meta.node.rsplit("/", 1)[1]).provision_state == (
            node_pb2.PROVISION_STATE_DEPLOYING
        )
    assert cell.server.deploys.admission.running == 1
    assert cell.server.deploys.admission.queued == count - 1

    # Let the machines boot one at a time: each finished deploy admits the next in line and
    # everyone behind it moves up one place.
    for i in range(count):
        machine(cell, bmc_address(i), node_mac(i), late=True)
        assert not cell.wait(ops[i]).HasField("error")
        if i + 1 < count:
            cell.wait_state(f"d{i + 1}", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
            expected = [0] * (i + 2) + list(range(1, count - i - 1))
            wait_until(lambda e=expected: _positions(cell, ops) == e, f"positions {expected}")

    assert _pxe_order(fake) == [bmc_address(i) for i in range(count)]
    for i in range(count):
        node = cell.get(f"d{i}")
        assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
        assert not node.HasField("lock")
    assert all(metadata(cell.get_op(op.name)).queue_position == 0 for op in ops)
    assert image.source.downloads == 1


def test_deploys_within_the_concurrency_limit_run_at_once_and_share_one_download(
    start_cell, rack, machine, image
) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(deploy_concurrency=3)
    rack(cell, 3, boot=False)
    ops = [cell.deploy(f"d{i}", image.url, image.checksum) for i in range(3)]
    # All three wait for their machines at the same time: none of them is queued.
    for i in range(3):
        cell.wait_state(f"d{i}", node_pb2.PROVISION_STATE_WAIT_CALL_BACK)
    assert _positions(cell, ops) == [0, 0, 0]
    assert cell.server.deploys.admission.running == 3
    for i in range(3):
        machine(cell, bmc_address(i), node_mac(i), late=True)
    for op in ops:
        done = cell.wait(op)
        assert not done.HasField("error"), done.error
    assert {cell.get(f"d{i}").provision_state for i in range(3)} == {
        node_pb2.PROVISION_STATE_ACTIVE
    }
    assert image.source.downloads == 1
