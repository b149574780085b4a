"""Fixtures for the deploy suite: a local image source, the fake driver, in-process leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploykit import DeployCell, FakeMachine, ImageSource, bmc_address, make_image, node_mac

from leaf_cell.drivers import load_driver
from leaf_cell.drivers.fake import FakeDriver

IMAGE_BYTES = (1 << 20) + 12345


@dataclass
class Image:
    """One image on a local HTTP source; ``source.downloads`` counts completed GETs."""

    source: ImageSource
    url: str
    checksum: str
    path: Path


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Image]:
    directory = tmp_path / "source"
    directory.mkdir()
    checksum = make_image(directory / "os.img", IMAGE_BYTES)
    source = ImageSource(directory)
    try:
        yield Image(source, f"{source.url}/os.img", checksum, directory / "os.img")
    finally:
        source.stop()


@pytest.fixture
def fake() -> Iterator[FakeDriver]:
    driver = load_driver("fake")
    assert isinstance(driver, FakeDriver)
    driver.reset()
    yield driver
    driver.reset()


@pytest.fixture
def start_cell(
    db_url: str, leaf_runner: Any, fake: FakeDriver
) -> Iterator[Callable[..., DeployCell]]:
    """``start_cell(**settings)``: an in-process leaf with a boot HTTP server on ``db_url``."""
    cells: list[DeployCell] = []

    def start(**settings: Any) -> DeployCell:
        settings.setdefault("http_listen", "127.0.0.1:0")
        settings.setdefault("bmc_timeout", 2.0)
        settings.setdefault("power_on_rate", 0.0)
        settings.setdefault("image_cache_dir", str(leaf_runner._tmp_path / f"images{len(cells)}"))
        if not settings["http_listen"]:
            del settings["http_listen"]
        cell = DeployCell(leaf_runner.start(db_url, **settings), leaf_runner)
        cells.append(cell)
        return cell

    yield start
    for cell in cells:
        cell.close()


@pytest.fixture
def cell(start_cell: Callable[..., DeployCell]) -> DeployCell:
    return start_cell()


@pytest.fixture
def machine(fake: FakeDriver) -> Iterator[Callable[..., FakeMachine]]:
    """``machine(cell, address, mac, late=False)``: a started :class:`FakeMachine`, stopped
    after the test."""
    started: list[FakeMachine] = []

    def start(cell: DeployCell, address: str, mac: str, late: bool = False) -> FakeMachine:
        m = FakeMachine(cell, fake, address, mac, late=late).start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def rack(fake: FakeDriver, machine: Callable[..., FakeMachine]) -> Callable[..., list[FakeMachine]]:
    """``rack(cell, count, prefix="d", boot=True)``: nodes PREFIX0..N-1 enrolled and available,
    each with a fake BMC (:func:`bmc_address`); with ``boot`` each also gets a started
    :class:`FakeMachine` that PXE-boots when the leaf powers it on."""

    def build(cell: DeployCell, count: int, prefix: str = "d", boot: bool = True) -> list[Any]:
        made = []
        for i in range(count):
            address, mac = bmc_address(i, prefix), node_mac(i, prefix)
            fake.add_bmc(address)
            cell.create(f"{prefix}{i}", address, mac)
            cell.make_available(f"{prefix}{i}")
            made.append(machine(cell, address, mac) if boot else None)
        return made

    return build
