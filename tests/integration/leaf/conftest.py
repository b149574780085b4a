"""Fixtures of the leaf NodeService suite: a started leaf on each database backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from leafkit import LeafClient, LeafProcess


@pytest.fixture(scope="module")
def shared_leaf(module_db_url: str, module_leaf_runner) -> Iterator[LeafClient]:
    """One in-process leaf for cell rack-1 per test module and backend."""
    server = module_leaf_runner.start(module_db_url)
    client = LeafClient(server.port, module_db_url, Path(server.config.secret_key_file))
    yield client
    client.close()


@pytest.fixture
def leaf(shared_leaf: LeafClient) -> LeafClient:
    """The module's leaf with an empty inventory: every row of its tables is deleted first."""
    shared_leaf.wipe()
    return shared_leaf


@pytest.fixture
def leaf_process(tmp_path: Path) -> Iterator[Callable[..., LeafProcess]]:
    """Starts ``rackcells-leaf serve`` child processes; stops any still running afterwards."""
    started: list[LeafProcess] = []

    def _start(args: list[str], env: dict[str, str] | None = None) -> LeafProcess:
        proc = LeafProcess(args, tmp_path, env)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield _start
    for proc in started:
        proc.stop()
