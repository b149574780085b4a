"""The top cell's inventory follows the leaves' WatchInventory streams.

Fake leaves (real gRPC servers on 127.0.0.1) stream snapshots, changes and heartbeats; the top
answers CapacityService and CellService from what it derived, marks a silent or vanished leaf
DOWN, resumes streams from the last applied revision and rebuilds everything from the leaves
when its own database is wiped.
"""

from __future__ import annotations

from pathlib import Path

from top_inventory_kit import (
    FakeLeaf,
    FakeRegistry,
    eventually,
    run,
    start_top,
    summary,
)

from rackcells.v1 import cell_service_pb2

UP = cell_service_pb2.CELL_STATE_UP
DOWN = cell_service_pb2.CELL_STATE_DOWN


def db(tmp_path: Path, name: str = "top.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_upsert_on_a_leaf_shows_in_capacity_within_a_second(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1").start()
        leaf.add_nodes(10)
        top = await start_top(FakeRegistry({"rack-1": leaf.endpoint}), db(tmp_path))
        try:

            async def total(n: int) -> bool:
                return (await top.get_capacity()).totals.total == n

            await eventually(lambda: total(10), what="snapshot applied")
            leaf.change([summary("new-1", macs=["52:54:ff:00:00:01"])])
            await eventually(lambda: total(11), timeout=1.0, what="upsert visible")
            assert top.parts.inventory.cell_of_mac("52-54-FF-00-00-01") == "rack-1"
            cell = await top.get_cell("rack-1")
            assert cell.state == UP
            assert cell.inventory_generation == leaf.revision
            assert cell.capacity.total == 11 and cell.capacity.available == 11
            assert cell.version == "fake-1"
        finally:
            await top.stop()
            await leaf.stop()

    run(body())


def test_stopped_leaf_goes_down_keeps_stale_figures_and_resumes_when_back(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1").start()
        leaf.add_nodes(5)
        top = await start_top(FakeRegistry({"rack-1": leaf.endpoint}), db(tmp_path))
        try:
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 1)
            port = leaf.port
            await leaf.stop()

            async def state_is(state: int) -> bool:
                return (await top.get_cell("rack-1")).state == state

            await eventually(lambda: state_is(DOWN), what="DOWN after the leaf stopped")
            reply = await top.get_capacity()
            assert [c.cell for c in reply.cells] == ["cells/rack-1"]
            stale = reply.cells[0]
            assert not stale.schedulable and stale.counts.total == 5
            assert list(reply.unreachable) == []
            assert not top.parts.directory.is_reachable("rack-1")

            # Back on the same port with one more change: the stream resumes from revision 1.
            leaf.add_nodes(2, start=5)
            await leaf.start(port)
            await eventually(lambda: state_is(UP), what="UP after the leaf came back")
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 2)
            assert leaf.watch_requests[-1] == 1
            assert (await top.get_capacity()).totals.total == 7
        finally:
            await top.stop()
            await leaf.stop()

    run(body())


def test_cell_never_heard_from_is_unreachable_and_down(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1").start()
        leaf.add_nodes(3)
        registry = FakeRegistry({"rack-1": leaf.endpoint, "rack-2": "127.0.0.1:1"})
        top = await start_top(registry, db(tmp_path))
        try:
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 1)
            reply = await top.get_capacity()
            assert list(reply.unreachable) == ["cells/rack-2"]
            assert [c.cell for c in reply.cells] == ["cells/rack-1"]
            assert reply.totals.total == 3
            await eventually(lambda: top.parts.directory.state("rack-2") == DOWN)
            assert (await top.get_cell("rack-2")).state == DOWN
            one = await top.get_capacity("cells/rack-2")
            assert list(one.unreachable) == ["cells/rack-2"] and not one.cells
        finally:
            await top.stop()
            await leaf.stop()

    run(body())


def test_silent_stream_marks_the_cell_down_even_if_health_checks_pass(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1", heartbeat=60).start()
        leaf.add_nodes(2)
        top = await start_top(
            FakeRegistry({"rack-1": leaf.endpoint}),
            db(tmp_path),
            inventory={"idle_timeout": 0.5},
        )
        try:
            await eventually(lambda: top.parts.directory.state("rack-1") == UP)
            await eventually(lambda: top.parts.directory.state("rack-1") == DOWN)
            assert "no inventory update" in (top.parts.directory.down_reason("rack-1") or "")
        finally:
            await top.stop()
            await leaf.stop()

    run(body())


def test_failing_health_check_marks_a_static_cell_down(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1", heartbeat=0.2).start()
        top = await start_top(FakeRegistry({"rack-1": leaf.endpoint}), db(tmp_path))
        try:
            await eventually(lambda: top.parts.directory.state("rack-1") == UP)
            await leaf.set_serving(False)
            await eventually(lambda: top.parts.directory.state("rack-1") == DOWN)
            assert "NOT_SERVING" in (top.parts.directory.down_reason("rack-1") or "")
            await leaf.set_serving(True)
            await eventually(lambda: top.parts.directory.state("rack-1") == UP)
        finally:
            await top.stop()
            await leaf.stop()

    run(body())


async def _picture(top) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Everything the top derived, in comparable form."""
    inv = top.parts.inventory
    picture: dict[str, object] = {}
    for cell in top.parts.directory.names():
        picture[cell] = (
            inv.generation(cell),
            sorted(r.row() for r in inv.nodes(cell)),
        )
    for query in (
        {},
        {"resource_class": "gpu"},
        {"required_traits": ["CUSTOM_A"]},
        {"forbidden_traits": ["CUSTOM_A"]},
    ):
        reply = await top.get_capacity(**query)
        picture[str(query)] = (
            reply.totals,
            [(c.cell, c.counts, c.generation) for c in reply.cells],
        )
    return picture


def test_wiping_the_top_database_rebuilds_the_same_inventory(tmp_path: Path) -> None:
    async def body() -> None:
        leaves = [await FakeLeaf(f"rack-{i}", chunk=7).start() for i in (1, 2)]
        for no, leaf in enumerate(leaves):
            leaf.add_nodes(20, cell_no=no, traits=["CUSTOM_A"])
            leaf.add_nodes(10, start=20, cell_no=no, resource_class="gpu")
            leaf.change(deleted=["n3"])
            leaf.change([summary("n4", provision_state=7, macs=["aa:bb:cc:00:00:0" + str(no)])])
        registry = FakeRegistry({leaf.cell: leaf.endpoint for leaf in leaves})
        url = db(tmp_path)

        async def settled(top) -> None:  # type: ignore[no-untyped-def]
            for leaf in leaves:
                await eventually(
                    lambda leaf=leaf: top.parts.inventory.generation(leaf.cell) == leaf.revision
                )

        top = await start_top(registry, url)
        await settled(top)
        before = await _picture(top)
        await top.stop()

        # Restarted on the same database: figures at once, streams resume from the revision.
        top = await start_top(registry, url)
        assert await _picture(top) == before
        await settled(top)
        assert [leaf.watch_requests[-1] for leaf in leaves] == [4, 4]
        await top.stop()

        Path(url.removeprefix("sqlite:///")).unlink()
        top = await start_top(registry, url)
        try:
            await settled(top)
            assert [leaf.watch_requests[-1] for leaf in leaves] == [0, 0]
            assert await _picture(top) == before
        finally:
            await top.stop()
            for leaf in leaves:
                await leaf.stop()

    run(body())


def test_leaf_with_a_replaced_database_is_read_again_from_scratch(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1").start()
        for i in range(5):
            leaf.add_nodes(1, start=i)
        top = await start_top(FakeRegistry({"rack-1": leaf.endpoint}), db(tmp_path))
        try:
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 5)
            port = leaf.port
            await leaf.stop()
            fresh = FakeLeaf("rack-1")
            fresh.add_nodes(2, prefix="m", cell_no=9)  # revision 1 < 5: cannot be resumed
            await fresh.start(port)
            inv = top.parts.inventory
            await eventually(
                lambda: sorted(r.node_id for r in inv.nodes("rack-1")) == ["m0", "m1"],
                what="resynced from revision 0",
            )
            assert inv.cell_of_mac(leaf.nodes["n0"].macs[0]) is None
            await fresh.stop()
        finally:
            await top.stop()

    run(body())


def test_endpoint_change_moves_the_stream_to_the_new_leaf(tmp_path: Path) -> None:
    async def body() -> None:
        old = await FakeLeaf("rack-1").start()
        old.add_nodes(3)
        registry = FakeRegistry({"rack-1": old.endpoint})
        top = await start_top(registry, db(tmp_path))
        try:
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 1)
            new = FakeLeaf("rack-1")
            for _ in range(3):
                new.add_nodes(4, prefix="x")
            await new.start()
            registry.set({"rack-1": new.endpoint})
            await eventually(lambda: top.parts.inventory.generation("rack-1") == 3)
            assert (await top.get_cell("rack-1")).endpoint == new.endpoint
            assert (await top.get_capacity()).totals.total == 4
            await new.stop()
        finally:
            await top.stop()
            await old.stop()

    run(body())


def test_unregistered_cell_stays_down_then_is_forgotten(tmp_path: Path) -> None:
    async def body() -> None:
        leaf = await FakeLeaf("rack-1").start()
        leaf.add_nodes(2)
        registry = FakeRegistry({"rack-1": leaf.endpoint}, static=False)
        top = await start_top(registry, db(tmp_path), directory={"forget_after": 0.6})
        d, inv = top.parts.directory, top.parts.inventory
        mac = leaf.nodes["n0"].macs[0]
        try:
            await eventually(lambda: inv.generation("rack-1") == 1)
            registry.set({})
            assert d.state("rack-1") == DOWN and d.down_reason("rack-1") == "not registered"
            assert inv.cell_of_mac(mac) == "rack-1"
            await eventually(lambda: not d.known("rack-1"), what="forgotten")
            assert inv.cell_of_mac(mac) is None
            assert not (await top.cells.ListCells(cell_service_pb2.ListCellsRequest())).cells
            await inv.flush()
        finally:
            await top.stop()
        # Forgotten means gone from the stored copy too.
        top = await start_top(FakeRegistry({}, static=False), db(tmp_path))
        try:
            assert top.parts.directory.names() == []
        finally:
            await top.stop()
            await leaf.stop()

    run(body())
