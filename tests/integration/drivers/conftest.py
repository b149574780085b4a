"""Fixtures for the drivers against real IPMI endpoints: the rack simulator as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from leaf_cell.drivers.ipmi import IpmiDriver
from rackcells.sim.harness import RunningSim, start_rack

SimLauncher = Callable[..., RunningSim]


@pytest.fixture(scope="module")
def launch_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimLauncher]:
    """Factory ``launch_sim(nodes, *extra_cli_args, **start_rack_kwargs)``.

    Every simulator started is stopped by PID at the end of the module (tests may stop one
    earlier), and its worker processes must be gone as well.
    """
    started: list[RunningSim] = []

    def launch(nodes: int, *extra: str, **kwargs: Any) -> RunningSim:
        sim = start_rack(nodes, tmp_path_factory.mktemp("sim"), *extra, **kwargs)
        started.append(sim)
        return sim

    yield launch
    survivors: list[int] = []
    for sim in started:
        sim.stop()
        survivors += sim.reap_workers()
    if survivors:
        pytest.fail(f"simulator workers {survivors} outlived their parent")


@pytest.fixture
def driver() -> Iterator[IpmiDriver]:
    """A driver of its own per test, so its counters describe that test only."""
    drv = IpmiDriver()
    yield drv
    drv.close()
