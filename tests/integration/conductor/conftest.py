"""Fixtures for the conductor suite: a leaf on each backend whose nodes use the fake driver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conductorkit import Cell

from leaf_cell.drivers import load_driver
from leaf_cell.drivers.fake import FakeDriver


@pytest.fixture
def fake() -> Iterator[FakeDriver]:
    driver = load_driver("fake")
    assert isinstance(driver, FakeDriver)
    driver.reset()
    yield driver
    driver.reset()


@pytest.fixture
def cell(db_url: str, leaf_runner: Any, fake: FakeDriver) -> Iterator[Cell]:
    server = leaf_runner.start(db_url, bmc_timeout=1.0)
    c = Cell(server, leaf_runner)
    yield c
    c.close()
