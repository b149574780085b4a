"""The top cell's own database on SQLite and PostgreSQL: flags, the inventory cache, schema."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from top_cell.inventory_db import InventoryWriter, TopStore, open_store

ROW_A = ("a", "uid-a", "baremetal", ("CUSTOM_A", "CUSTOM_B"), 6, False, "", ("52:54:00:00:00:01",))
ROW_B = ("b", "uid-b", "gpu", (), 10, True, "cells/rack-1/allocations/1", ())


def test_flags_round_trip(db_url: str) -> None:
    async def body() -> None:
        store = await open_store(db_url)
        try:
            await asyncio.to_thread(store.save_flags, "rack-1", True, "firmware")
            await asyncio.to_thread(store.save_flags, "rack-1", True, "bios")
            await asyncio.to_thread(store.save_flags, "rack-2", False, "")
            flags = await asyncio.to_thread(store.load_flags)
            assert flags == {"rack-1": (True, "bios"), "rack-2": (False, "")}
        finally:
            store.close()

    asyncio.run(body())


def test_writer_coalesces_and_stores_whole_updates(db_url: str) -> None:
    async def body() -> None:
        store = await open_store(db_url)
        writer = InventoryWriter(store)
        try:
            writer.reset("rack-1")
            writer.upsert("rack-1", ROW_A)
            writer.upsert("rack-1", ("b", "uid-old", "baremetal", (), 6, False, "", ()))
            writer.mark("rack-1", 3, 100.0, "v1")
            writer.upsert("rack-1", ROW_B)  # the later summary wins
            writer.upsert("rack-2", ROW_A)
            writer.delete("rack-2", "a")
            writer.mark("rack-2", 9, 200.0, "v2")
            await writer.flush()
            stored = await asyncio.to_thread(store.load_inventory)
            assert sorted(stored) == ["rack-1", "rack-2"]
            assert (stored["rack-1"].revision, stored["rack-1"].as_of) == (3, 100.0)
            assert sorted(stored["rack-1"].nodes) == [ROW_A, ROW_B]
            assert stored["rack-2"].nodes == [] and stored["rack-2"].version == "v2"

            writer.reset("rack-1")
            writer.upsert("rack-1", ROW_B)
            writer.mark("rack-1", 4, 101.0, "v1")
            writer.forget("rack-2")
            await writer.flush()
            stored = await asyncio.to_thread(store.load_inventory)
            assert sorted(stored) == ["rack-1"]
            assert stored["rack-1"].nodes == [ROW_B] and stored["rack-1"].revision == 4
        finally:
            await writer.stop()
            store.close()

    asyncio.run(body())


def test_cache_of_another_schema_is_dropped_and_flags_are_kept(db_url: str) -> None:
    async def body() -> None:
        store = await open_store(db_url)
        writer = InventoryWriter(store)
        writer.upsert("rack-1", ROW_A)
        writer.mark("rack-1", 3, 100.0, "")
        await writer.flush()
        await asyncio.to_thread(store.save_flags, "rack-1", True, "drain")
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE top_meta SET value = '0' WHERE key = 'cache_schema'"))
        store.close()
        store = await open_store(db_url)
        try:
            assert await asyncio.to_thread(store.load_inventory) == {}
            assert await asyncio.to_thread(store.load_flags) == {"rack-1": (True, "drain")}
        finally:
            store.close()

    asyncio.run(body())


def test_tables_are_created_once(db_url: str) -> None:
    async def body() -> None:
        for _ in range(2):
            store: TopStore = await open_store(db_url)
            store.close()

    asyncio.run(body())
