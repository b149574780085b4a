"""The cell directory: membership, observed state, scheduling flags and channels.

No leaf is contacted: the registry is a fake with a settable membership and the directory's
health checks are off (the registry says it is not static).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.errors import NotFound, Unavailable
from rackcells.v1 import cell_service_pb2
from top_cell.cells import CellDirectory
from top_cell.inventory_db import open_store

UP = cell_service_pb2.CELL_STATE_UP
DOWN = cell_service_pb2.CELL_STATE_DOWN
DISABLED = cell_service_pb2.CELL_STATE_DISABLED
UNKNOWN = cell_service_pb2.CELL_STATE_UNSPECIFIED


@dataclass(frozen=True)
class Info:
    name: str
    endpoint: str
    version: str = ""


class Registry:
    def __init__(self, members: dict[str, str]) -> None:
        self.members = {n: Info(n, e, "v9") for n, e in members.items()}
        self.subscribers: list[Callable[[dict[str, Info]], None]] = []

    def cells(self) -> dict[str, Info]:
        return dict(self.members)

    def subscribe(self, callback: Callable[[dict[str, Info]], None]) -> None:
        self.subscribers.append(callback)
        callback(dict(self.members))

    @property
    def static(self) -> bool:
        return False

    def set(self, members: dict[str, str]) -> None:
        self.members = {n: Info(n, e) for n, e in members.items()}
        for callback in self.subscribers:
            callback(dict(self.members))


def test_state_follows_the_stream_signals() -> None:
    async def body() -> None:
        d = CellDirectory(Registry({"rack-1": "127.0.0.1:1"}))
        changes: list[str] = []
        d.on_change(changes.append)
        await d.start()
        try:
            assert d.names() == ["rack-1"] and d.state("rack-1") == UNKNOWN
            assert d.last_heartbeat("rack-1") is None
            d.heartbeat("rack-1", version="leaf-2")
            assert d.state("rack-1") == UP and d.is_reachable("rack-1")
            assert d.last_heartbeat("rack-1") is not None
            assert d.version("rack-1") == "v9"  # as registered wins over the stream's
            d.mark_down("rack-1", "inventory stream failed: UNAVAILABLE")
            assert d.state("rack-1") == DOWN and not d.is_reachable("rack-1")
            with pytest.raises(Unavailable, match="cell rack-1 is down: inventory stream"):
                d.channel("rack-1")
            assert d.channel("rack-1", allow_down=True) is d.channel("rack-1", allow_down=True)
            d.heartbeat("rack-1")
            assert d.state("rack-1") == UP
            # registered, up, down, up again: heartbeats of an UP cell are quiet
            assert changes == ["rack-1"] * 4
            with pytest.raises(NotFound, match="cell rack-9 is not known"):
                d.channel("rack-9")
        finally:
            await d.stop()

    asyncio.run(body())


def test_scheduling_flag_is_persisted_and_shows_as_disabled(tmp_path: Path) -> None:
    async def body() -> None:
        url = f"sqlite:///{tmp_path / 'top.db'}"
        store = await open_store(url)
        d = CellDirectory(Registry({"rack-1": "127.0.0.1:1"}), store=store)
        await d.start()
        d.heartbeat("rack-1")
        await d.set_scheduling("rack-1", True, "rack power work")
        assert d.state("rack-1") == DISABLED and d.is_reachable("rack-1")
        assert not d.schedulable("rack-1")
        d.mark_down("rack-1", "gone")
        assert d.state("rack-1") == DOWN  # DOWN wins over DISABLED
        await d.stop()
        again = CellDirectory(Registry({"rack-1": "127.0.0.1:1"}), store=store)
        await again.start()
        try:
            assert again.scheduling("rack-1") == (True, "rack power work")
            again.heartbeat("rack-1")
            assert again.state("rack-1") == DISABLED
        finally:
            await again.stop()
            store.close()

    asyncio.run(body())


def test_vanished_cell_is_down_then_forgotten_and_may_come_back() -> None:
    async def body() -> None:
        registry = Registry({"rack-1": "127.0.0.1:1", "rack-2": "127.0.0.1:2"})
        d = CellDirectory(registry, forget_after=0.2)
        await d.start()
        try:
            d.heartbeat("rack-2")
            registry.set({"rack-1": "127.0.0.1:1"})
            assert d.state("rack-2") == DOWN and d.down_reason("rack-2") == "not registered"
            assert not d.registered("rack-2") and d.known("rack-2")
            registry.set({"rack-1": "127.0.0.1:1", "rack-2": "127.0.0.1:3"})
            assert d.registered("rack-2") and d.info("rack-2").endpoint == "127.0.0.1:3"
            registry.set({"rack-1": "127.0.0.1:1"})
            for _ in range(100):
                if not d.known("rack-2"):
                    break
                await asyncio.sleep(0.02)
            assert d.names() == ["rack-1"]
        finally:
            await d.stop()

    asyncio.run(body())


def test_a_remembered_cell_counts_as_vanished_until_registered() -> None:
    async def body() -> None:
        registry = Registry({})
        d = CellDirectory(registry)
        await d.start()
        try:
            d.remember("rack-7")
            assert d.state("rack-7") == DOWN and d.info("rack-7").endpoint == ""
            with pytest.raises(Unavailable):
                d.channel("rack-7", allow_down=True)
            registry.set({"rack-7": "127.0.0.1:7"})
            assert d.registered("rack-7") and d.state("rack-7") == UNKNOWN
        finally:
            await d.stop()

    asyncio.run(body())


def test_a_new_endpoint_gets_a_new_channel() -> None:
    async def body() -> None:
        registry = Registry({"rack-1": "127.0.0.1:1"})
        d = CellDirectory(registry)
        await d.start()
        try:
            first = d.channel("rack-1")
            registry.set({"rack-1": "127.0.0.1:2"})
            second = d.channel("rack-1")
            assert second is not first and d.channel("rack-1") is second
        finally:
            await d.stop()

    asyncio.run(body())
