"""AllocationService through the top cell: policy order, retries on the next cell, atomicity.

The fake leaves claim atomically (search and claim with no await in between), as the real leaf
does in one conditional UPDATE; the top must neither lose nor duplicate a grant on top of that.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from top_inventory_kit import FakeLeaf, FakeRegistry, Top, eventually, run, start_top

from rackcells.v1 import allocation_service_pb2, cell_service_pb2

Policy = allocation_service_pb2.AllocationPolicy
SPREAD = Policy.ALLOCATION_POLICY_SPREAD
PACK = Policy.ALLOCATION_POLICY_PACK


def request(
    parent: str = "cells/-", policy: int = SPREAD, resource_class: str = "baremetal", **fields
) -> allocation_service_pb2.CreateAllocationRequest:  # type: ignore[no-untyped-def]
    return allocation_service_pb2.CreateAllocationRequest(
        parent=parent,
        allocation=allocation_service_pb2.Allocation(resource_class=resource_class, **fields),
        policy=policy,
    )


def cell_of(alloc: allocation_service_pb2.Allocation) -> str:
    return alloc.name.split("/")[1]


async def federation(tmp_path: Path, sizes: dict[str, int]) -> tuple[Top, list[FakeLeaf]]:
    leaves = []
    for no, (cell, size) in enumerate(sizes.items()):
        leaf = await FakeLeaf(cell).start()
        leaf.add_nodes(size, cell_no=no, traits=["CUSTOM_GPU"] if no % 2 else [])
        leaves.append(leaf)
    top = await start_top(
        FakeRegistry({leaf.cell: leaf.endpoint for leaf in leaves}),
        f"sqlite:///{tmp_path / 'top.db'}",
    )
    for leaf in leaves:
        await eventually(lambda leaf=leaf: top.parts.directory.schedulable(leaf.cell))
        await eventually(lambda leaf=leaf: top.parts.inventory.generation(leaf.cell) > 0)
    return top, leaves


async def shutdown(top: Top, leaves: list[FakeLeaf]) -> None:
    await top.stop()
    for leaf in leaves:
        await leaf.stop()


async def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


def test_spread_asks_the_fullest_cell_and_pack_the_emptiest(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 5, "rack-b": 3, "rack-c": 8})
        try:
            first = await top.allocations.CreateAllocation(request(policy=SPREAD))
            assert cell_of(first) == "rack-c"
            assert first.node.startswith("cells/rack-c/nodes/")
            # Counted at once: rack-c has 7 left, still the fullest.
            assert cell_of(await top.allocations.CreateAllocation(request())) == "rack-c"
            assert cell_of(await top.allocations.CreateAllocation(request(policy=PACK))) == "rack-b"
            # Unspecified policy is SPREAD.
            assert cell_of(await top.allocations.CreateAllocation(request(policy=0))) == "rack-c"
            # Traits narrow the candidates: only rack-b has CUSTOM_GPU.
            gpu = await top.allocations.CreateAllocation(request(required_traits=["CUSTOM_GPU"]))
            assert cell_of(gpu) == "rack-b"
            no_gpu = await top.allocations.CreateAllocation(
                request(policy=PACK, forbidden_traits=["CUSTOM_GPU"])
            )
            assert cell_of(no_gpu) == "rack-a"
        finally:
            await shutdown(top, leaves)

    run(body())


def test_a_cell_that_has_nothing_left_is_skipped_for_the_next(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 3, "rack-b": 4})
        b = leaves[1]
        try:
            for code in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNAVAILABLE,
            ):
                b.create_error = (code, "not now")
                granted = await top.allocations.CreateAllocation(request())
                assert cell_of(granted) == "rack-a"
            b.create_error = None
            # rack-a is exhausted now (3 granted); rack-b answers.
            assert cell_of(await top.allocations.CreateAllocation(request(policy=PACK))) == "rack-b"
        finally:
            await shutdown(top, leaves)

    run(body())


def test_other_leaf_errors_come_back_unchanged(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 2, "rack-b": 1})
        try:
            leaves[0].create_error = (grpc.StatusCode.PERMISSION_DENIED, "leaf says no")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.allocations.CreateAllocation(request())
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "leaf says no"
            assert leaves[1].create_calls == 0
        finally:
            await shutdown(top, leaves)

    run(body())


def test_nothing_available_anywhere_is_resource_exhausted(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 1})
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.allocations.CreateAllocation(request(resource_class="gpu-large"))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "no cell has an available node of class gpu-large" in info.value.details()
            assert leaves[0].create_calls == 0  # the inventory said so; no leaf was asked
        finally:
            await shutdown(top, leaves)

    run(body())


def test_500_concurrent_claims_for_100_nodes_grant_each_node_once(tmp_path: Path) -> None:
    async def body() -> None:
        sizes = {"rack-a": 40, "rack-b": 30, "rack-c": 20, "rack-d": 10}
        top, leaves = await federation(tmp_path, sizes)
        for leaf in leaves:
            leaf.claim_delay = 0.002  # let the claims interleave
        try:

            async def one(i: int) -> allocation_service_pb2.Allocation | grpc.StatusCode:
                try:
                    return await top.allocations.CreateAllocation(
                        request(policy=PACK if i % 2 else SPREAD), timeout=30
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

            results = await asyncio.gather(*(one(i) for i in range(500)))
            grants = [r for r in results if isinstance(r, allocation_service_pb2.Allocation)]
            errors = Counter(r for r in results if isinstance(r, grpc.StatusCode))
            assert len(grants) == 100
            assert errors == {grpc.StatusCode.RESOURCE_EXHAUSTED: 400}
            assert len({g.node for g in grants}) == 100
            assert len({g.name for g in grants}) == 100
            assert Counter(cell_of(g) for g in grants) == sizes
            for leaf in leaves:
                assert all(s.allocation for s in leaf.nodes.values())
            reply = await top.get_capacity()
            assert reply.totals.available == 0 and reply.totals.allocated == 100
        finally:
            await shutdown(top, leaves)

    run(body())


def test_disabled_cell_gets_no_allocations_but_named_calls_work(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 5, "rack-b": 2})
        try:
            alloc = await top.allocations.CreateAllocation(request(parent="cells/rack-a"))
            disabled = await top.cells.UpdateCell(
                cell_service_pb2.UpdateCellRequest(
                    cell=cell_service_pb2.Cell(
                        name="cells/rack-a", scheduling_disabled=True, disabled_reason="drain"
                    ),
                    update_mask=field_mask_pb2.FieldMask(
                        paths=["scheduling_disabled", "disabled_reason"]
                    ),
                )
            )
            assert disabled.state == cell_service_pb2.CELL_STATE_DISABLED
            assert disabled.disabled_reason == "drain"
            for _ in range(2):
                granted = await top.allocations.CreateAllocation(request())
                assert cell_of(granted) == "rack-b"
            code = await code_of(top.allocations.CreateAllocation(request()))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            code = await code_of(top.allocations.CreateAllocation(request(parent="cells/rack-a")))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            got = await top.allocations.GetAllocation(
                allocation_service_pb2.GetAllocationRequest(name=alloc.name)
            )
            assert got.node == alloc.node
            await top.allocations.DeleteAllocation(
                allocation_service_pb2.DeleteAllocationRequest(name=alloc.name)
            )
            reply = await top.get_capacity("cells/rack-a")
            assert not reply.cells[0].schedulable
        finally:
            await shutdown(top, leaves)

    run(body())


def test_named_parent_get_and_delete_are_forwarded(tmp_path: Path) -> None:
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 1, "rack-b": 3})
        try:
            alloc = await top.allocations.CreateAllocation(request(parent="cells/rack-a"))
            assert cell_of(alloc) == "rack-a"
            code = await code_of(top.allocations.CreateAllocation(request(parent="cells/rack-a")))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # the leaf's answer; no fallback
            get = top.allocations.GetAllocation
            assert (
                await get(allocation_service_pb2.GetAllocationRequest(name=alloc.name))
            ).node == alloc.node
            await top.allocations.DeleteAllocation(
                allocation_service_pb2.DeleteAllocationRequest(name=alloc.name)
            )

            async def freed() -> bool:
                return (await top.get_capacity("cells/rack-a")).totals.available == 1

            await eventually(freed, what="the stream reports the freed node")
            missing = allocation_service_pb2.GetAllocationRequest(name=alloc.name)
            assert await code_of(get(missing)) == grpc.StatusCode.NOT_FOUND
            unknown = allocation_service_pb2.GetAllocationRequest(
                name="cells/rack-z/allocations/a1"
            )
            assert await code_of(get(unknown)) == grpc.StatusCode.NOT_FOUND
        finally:
            await shutdown(top, leaves)

    run(body())


@pytest.mark.parametrize(
    ("req", "code", "field"),
    [
        (request(parent=""), grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        (request(parent="racks/x"), grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        (request(parent="cells/rack-z"), grpc.StatusCode.NOT_FOUND, ""),
        (request(resource_class=""), grpc.StatusCode.INVALID_ARGUMENT, "resource_class"),
        (
            request(required_traits=["lower"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "allocation.required_traits[0]",
        ),
        (
            allocation_service_pb2.CreateAllocationRequest(parent="cells/-"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "allocation",
        ),
        (request(policy=7), grpc.StatusCode.INVALID_ARGUMENT, "policy"),
    ],
)
def test_bad_create_requests_name_the_field(tmp_path: Path, req, code, field) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        top, leaves = await federation(tmp_path, {"rack-a": 1})
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await top.allocations.CreateAllocation(req)
            assert info.value.code() == code
            assert field in info.value.details()
            assert leaves[0].create_calls == 0
        finally:
            await shutdown(top, leaves)

    run(body())
