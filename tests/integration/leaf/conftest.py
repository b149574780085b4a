"""Fixtures of the leaf NodeService suite: a started leaf on each database backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from leafkit import LeafClient, LeafProcess


@pytest.fixture
def leaf(db_url: str, leaf_runner, tmp_path: Path) -> Iterator[LeafClient]:
    """A leaf for cell rack-1, started in-process on an empty database of each backend."""
    key_file = tmp_path / "rack-1.key"
    server = leaf_runner.start(db_url, secret_key_file=str(key_file))
    client = LeafClient(server.port, db_url, key_file)
    yield client
    client.close()


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
