"""The conformance suite's servers and its one parameter: where the client talks.

Two leaf cells (``conf-a``, ``conf-b``, SQLite) and a top cell with a static registry listing
both run as child processes, started once for the session. The ``api`` fixture hands each test
an :class:`~conformance_kit.Api` for cell ``conf-a``, once talking to that leaf directly
(``leaf``) and once to the top cell in front of it and ``conf-b`` (``top``): the same test body
must pass both ways, which is the whole point of the suite (DESIGN.md, Nova cells v1).

Leaves run with the power sweep off and a short BMC timeout (``BMC_TIMEOUT``), which bounds how
long a call to a BMC that never answers holds a node's lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conformance_kit import (
    BMC_TIMEOUT,
    CELL,
    OTHER_CELL,
    RPC_GUARD,
    Api,
    BlackHoleBmc,
    Federation,
    eventually,
    start_leaf,
    start_top,
    write_static_registry,
)
from serverkit import Proc

from rackcells.v1 import cell_service_pb2, cell_service_pb2_grpc


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp: Path = tmp_path_factory.mktemp("conformance")
    with contextlib.ExitStack() as stack:
        leaves: dict[str, Proc] = {}
        for cell in (CELL, OTHER_CELL):
            leaf = start_leaf(cell, tmp, "--bmc-timeout", str(BMC_TIMEOUT))
            stack.callback(leaf.stop)
            leaves[cell] = leaf
        for leaf in leaves.values():
            leaf.wait_ready()
        registry = write_static_registry(
            tmp / "cells.yaml", {cell: leaf.endpoint for cell, leaf in leaves.items()}
        )
        top = start_top(registry, tmp, "--fanout-timeout", "5")
        stack.callback(top.stop)
        top.wait_ready()
        fed = Federation(leaves, top)
        for name, proc in [*leaves.items(), ("top", top)]:
            fed.channels[name] = stack.enter_context(grpc.insecure_channel(proc.endpoint))
        cells = cell_service_pb2_grpc.CellServiceStub(fed.channels["top"])

        def all_up() -> None:
            reply = cells.ListCells(cell_service_pb2.ListCellsRequest(), timeout=RPC_GUARD)
            states = {c.name: c.state for c in reply.cells}
            up = cell_service_pb2.CELL_STATE_UP
            assert states == {f"cells/{CELL}": up, f"cells/{OTHER_CELL}": up}, states

        eventually(all_up, "both leaves to be UP at the top")
        yield fed


@pytest.fixture(params=["leaf", "top"])
def api(request: pytest.FixtureRequest, federation: Federation) -> Api:
    """The services of cell conf-a, directly at its leaf or through the top cell."""
    return federation.api(str(request.param))


@pytest.fixture(scope="session")
def black_hole_bmc() -> Iterator[BlackHoleBmc]:
    bmc = BlackHoleBmc()
    yield bmc
    bmc.close()


# Known differences between the top and a leaf, each a bug with a failing test, by test id.
# Strict: once fixed, the unexpected pass fails the suite, and the entry must be removed.
KNOWN_BUGS: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = KNOWN_BUGS.get(item.name)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
