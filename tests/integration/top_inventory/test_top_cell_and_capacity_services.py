"""CellService and CapacityService of the top cell, answered from the directory and inventory."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from top_inventory_kit import FakeLeaf, FakeRegistry, Top, eventually, run, start_top, summary

from rackcells.v1 import cell_service_pb2


async def two_cells(tmp_path: Path) -> tuple[Top, list[FakeLeaf]]:
    a = await FakeLeaf("rack-a").start()
    a.add_nodes(4, traits=["CUSTOM_A", "CUSTOM_B"])
    a.add_nodes(2, start=4, traits=["CUSTOM_A"], resource_class="gpu")
    a.change(
        [
            summary("d0", provision_state=7, macs=["aa:00:00:00:00:01"]),
            summary("d1", provision_state=8, maintenance=True),
            summary("f0", provision_state=9, traits=["CUSTOM_B"]),
            summary("x0", provision_state=10, allocation="cells/rack-a/allocations/z"),
        ]
    )
    b = await FakeLeaf("rack-b").start()
    b.add_nodes(3, cell_no=1, traits=["CUSTOM_B"])
    top = await start_top(
        FakeRegistry({"rack-a": a.endpoint, "rack-b": b.endpoint}),
        f"sqlite:///{tmp_path / 'top.db'}",
    )
    for leaf in (a, b):
        await eventually(
            lambda leaf=leaf: top.parts.inventory.generation(leaf.cell) == leaf.revision
        )
    return top, [a, b]


def counts(message) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return (
        message.total,
        message.available,
        message.allocated,
        message.deploying,
        message.active,
        message.failed,
        message.maintenance,
    )


def test_capacity_by_class_and_traits_per_cell_and_in_total(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await two_cells(tmp_path)
        try:
            reply = await top.get_capacity()
            assert counts(reply.totals) == (13, 9, 1, 2, 1, 1, 1)
            assert [c.cell for c in reply.cells] == ["cells/rack-a", "cells/rack-b"]
            a = reply.cells[0]
            assert counts(a.counts) == (10, 6, 1, 2, 1, 1, 1)
            assert a.generation == 3 and a.schedulable and a.age.seconds < 5
            gpu = await top.get_capacity(resource_class="gpu")
            assert counts(gpu.totals) == (2, 2, 0, 0, 0, 0, 0)
            both = await top.get_capacity(required_traits=["CUSTOM_A", "CUSTOM_B"])
            assert both.totals.total == 4
            only_b = await top.get_capacity(
                required_traits=["CUSTOM_B"], forbidden_traits=["CUSTOM_A"]
            )
            assert only_b.totals.total == 4  # f0 in rack-a, 3 in rack-b
            one = await top.get_capacity("cells/rack-b", required_traits=["CUSTOM_B"])
            assert [c.cell for c in one.cells] == ["cells/rack-b"]
            assert counts(one.totals) == (3, 3, 0, 0, 0, 0, 0)
        finally:
            await top.stop()
            for leaf in leaves:
                await leaf.stop()

    run(body())


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"parent": ""}, grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        ({"parent": "cells"}, grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        ({"parent": "cells/Rack"}, grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        ({"parent": "cells/rack-z"}, grpc.StatusCode.NOT_FOUND, ""),
        ({"resource_class": "bad class"}, grpc.StatusCode.INVALID_ARGUMENT, "resource_class"),
        ({"required_traits": ["ok", "X"]}, grpc.StatusCode.INVALID_ARGUMENT, "required_traits[0]"),
        ({"forbidden_traits": ["A-B"]}, grpc.StatusCode.INVALID_ARGUMENT, "forbidden_traits[0]"),
        (
            {"required_traits": ["A"], "forbidden_traits": ["A"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "forbidden_traits",
        ),
    ],
)
def test_bad_capacity_requests_name_the_field(tmp_path: Path, fields, code, field) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        top = await start_top(FakeRegistry({"rack-a": "127.0.0.1:1"}), f"sqlite:///{tmp_path}/t.db")
        try:
            fields.setdefault("parent", "cells/-")
            parent = fields.pop("parent")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.get_capacity(parent, **fields)
            assert info.value.code() == code
            status = rpc_status.from_call(info.value)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert status is not None
                bad = error_details_pb2.BadRequest()
                assert any(d.Unpack(bad) for d in status.details)
                assert [v.field for v in bad.field_violations] == [field]
        finally:
            await top.stop()

    run(body())


def test_list_and_get_cells(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await two_cells(tmp_path)
        try:
            reply = await top.cells.ListCells(cell_service_pb2.ListCellsRequest())
            assert [c.name for c in reply.cells] == ["cells/rack-a", "cells/rack-b"]
            a = reply.cells[0]
            assert a.endpoint == leaves[0].endpoint
            assert a.state == cell_service_pb2.CELL_STATE_UP
            assert a.inventory_generation == 3
            assert counts(a.capacity) == (10, 6, 1, 2, 1, 1, 1)
            assert a.last_heartbeat.seconds > 0
            assert not a.scheduling_disabled and a.version == "fake-1"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.cells.GetCell(cell_service_pb2.GetCellRequest(name="cells/rack-z"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.cells.GetCell(cell_service_pb2.GetCellRequest(name="rack-a"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await top.stop()
            for leaf in leaves:
                await leaf.stop()

    run(body())


def update(name: str, paths: list[str], **fields) -> cell_service_pb2.UpdateCellRequest:  # type: ignore[no-untyped-def]
    return cell_service_pb2.UpdateCellRequest(
        cell=cell_service_pb2.Cell(name=name, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def test_update_cell_checks_the_mask_and_the_flag_survives_a_restart(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-a").start()
        registry = FakeRegistry({"rack-a": leaf.endpoint})
        url = f"sqlite:///{tmp_path / 'top.db'}"
        top = await start_top(registry, url)
        try:
            for bad, field in (
                (update("cells/rack-a", ["endpoint"]), "update_mask"),
                (update("cells/rack-a", []), "update_mask"),
                (update("", ["scheduling_disabled"]), "cell.name"),
                (cell_service_pb2.UpdateCellRequest(), "cell"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await top.cells.UpdateCell(bad)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details().startswith(field)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.cells.UpdateCell(update("cells/rack-z", ["scheduling_disabled"]))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            await eventually(lambda: top.parts.directory.state("rack-a") == 1)
            cell = await top.cells.UpdateCell(
                update("cells/rack-a", ["*"], scheduling_disabled=True, disabled_reason="bios")
            )
            assert cell.state == cell_service_pb2.CELL_STATE_DISABLED
            assert (cell.scheduling_disabled, cell.disabled_reason) == (True, "bios")
            cell = await top.cells.UpdateCell(
                update("cells/rack-a", ["disabled_reason"], disabled_reason="firmware")
            )
            assert (cell.scheduling_disabled, cell.disabled_reason) == (True, "firmware")
        finally:
            await top.stop()
        top = await start_top(registry, url)
        try:
            await eventually(lambda: top.parts.directory.state("rack-a") != 0)
            cell = await top.get_cell("rack-a")
            assert cell.state == cell_service_pb2.CELL_STATE_DISABLED
            assert cell.disabled_reason == "firmware"
            cell = await top.cells.UpdateCell(
                update("cells/rack-a", ["scheduling_disabled"], scheduling_disabled=False)
            )
            assert cell.state == cell_service_pb2.CELL_STATE_UP
            assert (cell.scheduling_disabled, cell.disabled_reason) == (False, "")
        finally:
            await top.stop()
            await leaf.stop()

    run(body())
