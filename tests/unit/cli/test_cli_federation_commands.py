"""``cell``, ``capacity``, ``allocate`` and ``allocation``: requests sent, what is printed, and
exit statuses, against fake CellService, CapacityService and AllocationService stubs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from rackcells.cli.cells import render_cell, render_cell_list, state_label
from rackcells.cli.client import Session
from rackcells.cli.errors import UsageError
from rackcells.cli.main import build_parser, main
from rackcells.cli.names import allocation_name, cell_name
from rackcells.cli.output import format_age, format_span
from rackcells.v1 import allocation_service_pb2, capacity_service_pb2, cell_service_pb2

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
UP = cell_service_pb2.CELL_STATE_UP
Counts = capacity_service_pb2.CapacityCounts


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _cell(fake: Any, cell_id: str, **fields: object) -> cell_service_pb2.Cell:
    values: dict[str, object] = {
        "endpoint": f"10.0.0.{cell_id[-1]}:7001",
        "state": UP,
        "inventory_generation": 42,
        "capacity": Counts(total=10, available=6, allocated=1, deploying=2, active=1, failed=1),
        "version": "0.1.0",
        "last_heartbeat": _ts(NOW - timedelta(seconds=2)),
    }
    values.update(fields)
    cell: cell_service_pb2.Cell = fake.add(cell_id, **values)
    return cell


# -- names and formatting ----------------------------------------------------------------------


def test_cell_and_allocation_names() -> None:
    assert cell_name("rack-1") == cell_name("cells/rack-1") == "cells/rack-1"
    for bad in ("Rack_1", "cells/rack-1/nodes/n1", "cells/", ""):
        with pytest.raises(UsageError):
            cell_name(bad)
    full = "cells/rack-2/allocations/abc123"
    assert allocation_name(full, "rack-1") == full
    assert allocation_name("abc123", "rack-2") == full
    with pytest.raises(UsageError, match="needs a cell"):
        allocation_name("abc123", None)
    for bad in ("cells/rack-2/nodes/abc", "cells/rack-2/allocations/", "a/b", ""):
        with pytest.raises(UsageError):
            allocation_name(bad, "rack-1")


def test_ages_and_spans() -> None:
    assert format_span(42.9) == "42s" and format_span(185) == "3m" and format_span(-1) == "0s"
    assert format_span(7200) == "2h" and format_span(3 * 86400) == "3d"
    assert format_age(_ts(NOW - timedelta(seconds=2)), NOW) == "2s ago"
    # A heartbeat stamped by a host whose clock runs slightly ahead still reads as now.
    assert format_age(_ts(NOW + timedelta(seconds=1)), NOW) == "0s ago"
    assert format_age(_ts(NOW + timedelta(minutes=5)), NOW) == "in the future"
    assert format_age(timestamp_pb2.Timestamp(), NOW) == "-"


def test_state_labels() -> None:
    assert [state_label(s) for s in (1, 2, 3, 0, 99)] == ["up", "down", "disabled", "unknown", "99"]


# -- cell ---------------------------------------------------------------------------------------


def test_cell_positional_does_not_replace_the_global_cell_option() -> None:
    args = build_parser().parse_args(["--cell", "rack-9", "cell", "show", "rack-1"])
    assert (args.cell, args.target) == ("rack-9", "rack-1")
    args = build_parser().parse_args(["cell", "disable", "rack-1", "--reason", "x", "-o", "json"])
    assert (args.target, args.reason, args.output) == ("rack-1", "x", "json")


def test_cell_list_table(fake_cells: Any) -> None:
    _cell(fake_cells, "rack-1")
    _cell(
        fake_cells,
        "rack-2",
        state=cell_service_pb2.CELL_STATE_DOWN,
        last_heartbeat=_ts(NOW - timedelta(minutes=3, seconds=5)),
        version="",
    )
    header, *rows = render_cell_list(list(fake_cells.cells.values()), NOW).split("\n")
    assert header.split() == [
        "CELL",
        "STATE",
        "ENDPOINT",
        "NODES",
        "AVAILABLE",
        "DEPLOYING",
        "ACTIVE",
        "FAILED",
        "GENERATION",
        "HEARTBEAT",
        "VERSION",
    ]
    assert rows[0].split() == [
        "rack-1",
        "up",
        "10.0.0.1:7001",
        "10",
        "6",
        "2",
        "1",
        "1",
        "42",
        "2s",
        "ago",
        "0.1.0",
    ]
    assert rows[1].split()[:2] == ["rack-2", "down"] and rows[1].split()[-3:] == ["3m", "ago", "-"]


def test_cell_list_command_and_json(
    fake_cells: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    _cell(fake_cells, "rack-1", capacity=Counts(total=3))
    _cell(fake_cells, "rack-2", capacity=None)
    assert main(["cell", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CELL ") and "\nrack-1  up " in out
    assert main(["cell", "list", "-o", "json"]) == 0
    cell, empty = json.loads(capsys.readouterr().out)["cells"]
    assert cell["name"] == "cells/rack-1" and cell["state"] == "CELL_STATE_UP"
    # Zero counts and the off switch are spelled out, not left for the reader to assume.
    assert cell["capacity"]["available"] == 0 and cell["scheduling_disabled"] is False
    assert empty["capacity"]["total"] == 0


def test_cell_list_at_a_leaf_says_to_use_the_top(
    fake_cells: Any,
    patch_session: Callable[[], Session],
    make_rpc_error: Callable[..., grpc.RpcError],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_cells.errors["ListCells"] = lambda _: make_rpc_error(
        grpc.StatusCode.UNIMPLEMENTED, "Method not found!"
    )
    assert main(["cell", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "rackcells: 127.0.0.1:7001 does not serve CellService: "
        "cell commands need the top cell's endpoint\n"
    )


def test_cell_show(
    fake_cells: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    cell = _cell(fake_cells, "rack-1", scheduling_disabled=True, disabled_reason="fan swap")
    text = render_cell(cell, NOW)
    assert "scheduling:            disabled (fan swap)" in text
    assert "last heartbeat:        2025-03-04 05:06:05Z (2s ago)" in text
    assert "capacity:              10 nodes: 6 available, 1 allocated, 2 deploying" in text
    assert main(["cell", "show", "cells/rack-1"]) == 0
    assert fake_cells.requests("GetCell")[0].name == "cells/rack-1"
    assert "name:" in capsys.readouterr().out
    assert main(["cell", "show", "rack-7"]) == 1
    assert capsys.readouterr().err == "rackcells: NOT_FOUND: cell cells/rack-7 is not known\n"
    assert main(["cell", "show", "cells/rack-1/nodes/n1"]) == 2


def test_cell_disable_and_enable_send_the_mask(
    fake_cells: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    _cell(fake_cells, "rack-1")
    assert main(["cell", "disable", "rack-1", "--reason", "fan swap"]) == 0
    request = fake_cells.requests("UpdateCell")[-1]
    assert sorted(request.update_mask.paths) == ["disabled_reason", "scheduling_disabled"]
    assert request.cell.name == "cells/rack-1" and request.cell.scheduling_disabled
    assert capsys.readouterr().out == "cells/rack-1: disabled, scheduling disabled (fan swap)\n"

    # Without --reason, a reason given before is left alone.
    assert main(["cell", "disable", "rack-1"]) == 0
    assert list(fake_cells.requests("UpdateCell")[-1].update_mask.paths) == ["scheduling_disabled"]
    assert fake_cells.cells["cells/rack-1"].disabled_reason == "fan swap"
    capsys.readouterr()

    assert main(["cell", "enable", "rack-1", "-o", "json"]) == 0
    request = fake_cells.requests("UpdateCell")[-1]
    assert list(request.update_mask.paths) == ["scheduling_disabled"]
    assert not request.cell.scheduling_disabled
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "CELL_STATE_UP" and shown["disabled_reason"] == ""


# -- capacity -----------------------------------------------------------------------------------


def _capacity_response() -> capacity_service_pb2.GetCapacityResponse:
    age = duration_pb2.Duration(seconds=3)
    return capacity_service_pb2.GetCapacityResponse(
        totals=Counts(total=5, available=3, allocated=1, active=1),
        cells=[
            capacity_service_pb2.CellCapacity(
                cell="cells/rack-1",
                counts=Counts(total=3, available=2, active=1),
                generation=17,
                age=age,
                schedulable=True,
            ),
            capacity_service_pb2.CellCapacity(
                cell="cells/rack-2",
                counts=Counts(total=2, available=1, allocated=1, maintenance=1),
                generation=9,
                age=duration_pb2.Duration(seconds=125),
                schedulable=False,
            ),
        ],
        unreachable=["cells/rack-3"],
    )


def test_capacity_table_and_warning(
    fake_capacity: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_capacity.response = _capacity_response()
    patch_session().cell = None
    argv = ["capacity", "--resource-class", "gpu", "--trait", "CUSTOM_A", "--trait", "CUSTOM_B"]
    assert main([*argv, "--forbid-trait", "CUSTOM_C"]) == 0
    (request,) = fake_capacity.requests("GetCapacity")
    assert request.parent == "cells/-" and request.resource_class == "gpu"
    assert list(request.required_traits) == ["CUSTOM_A", "CUSTOM_B"]
    assert list(request.forbidden_traits) == ["CUSTOM_C"]
    captured = capsys.readouterr()
    first, blank, header, *rows = captured.out.rstrip("\n").split("\n")
    assert first == (
        "all cells (class gpu, with CUSTOM_A, CUSTOM_B, without CUSTOM_C; 2 cells): "
        "5 nodes: 3 available, 1 allocated, 0 deploying, 1 active, 0 failed, 0 in maintenance"
    )
    assert blank == ""
    assert header.split() == [
        "CELL",
        "TOTAL",
        "AVAILABLE",
        "ALLOCATED",
        "DEPLOYING",
        "ACTIVE",
        "FAILED",
        "MAINT",
        "GENERATION",
        "AGE",
        "SCHEDULABLE",
    ]
    assert rows[0].split() == ["rack-1", "3", "2", "0", "0", "1", "0", "0", "17", "3s", "yes"]
    assert rows[1].split() == ["rack-2", "2", "1", "1", "0", "0", "0", "1", "9", "2m", "no"]
    assert "rack-3" not in captured.out
    assert captured.err == (
        "rackcells: warning: 1 cell(s) have never reported and are not counted: cells/rack-3\n"
    )


def test_capacity_of_one_cell_as_json(
    fake_capacity: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_capacity.response = capacity_service_pb2.GetCapacityResponse(
        cells=[capacity_service_pb2.CellCapacity(cell="cells/rack-2")]
    )
    assert main(["capacity", "--cell", "rack-2", "-o", "json"]) == 0
    assert fake_capacity.requests("GetCapacity")[0].parent == "cells/rack-2"
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["available"] == 0 and data["unreachable"] == []
    assert data["cells"][0]["schedulable"] is False
    assert main(["capacity"]) == 0
    assert capsys.readouterr().out.startswith("cells/rack-1 (every class; 1 cell): 0 nodes: ")


# -- allocations --------------------------------------------------------------------------------


def test_allocate_sends_the_request_and_prints_allocation_and_node(
    fake_allocations: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_allocations.free = ["cells/rack-2/nodes/n7", "cells/rack-1/nodes/n1"]
    patch_session().cell = None
    argv = ["allocate", "--resource-class", "baremetal", "--trait", "CUSTOM_A"]
    assert main([*argv, "--forbid-trait", "CUSTOM_B", "--policy", "pack"]) == 0
    (request,) = fake_allocations.requests("CreateAllocation")
    assert request.parent == "cells/-"
    assert request.policy == allocation_service_pb2.ALLOCATION_POLICY_PACK
    assert request.allocation.resource_class == "baremetal"
    assert list(request.allocation.required_traits) == ["CUSTOM_A"]
    assert list(request.allocation.forbidden_traits) == ["CUSTOM_B"]
    assert capsys.readouterr().out == (
        "allocation:  cells/rack-2/allocations/a1\nnode:        cells/rack-2/nodes/n7\n"
    )
    assert (
        main(["allocate", "--resource-class", "baremetal", "--cell", "rack-1", "-o", "json"]) == 0
    )
    request = fake_allocations.requests("CreateAllocation")[-1]
    assert request.parent == "cells/rack-1"
    assert request.policy == allocation_service_pb2.ALLOCATION_POLICY_UNSPECIFIED
    shown = json.loads(capsys.readouterr().out)
    assert shown["node"] == "cells/rack-1/nodes/n1" and shown["name"].endswith("/a2")


def test_allocate_when_nothing_is_free_exits_1_with_one_line(
    fake_allocations: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["allocate", "--resource-class", "gpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "rackcells: RESOURCE_EXHAUSTED: no cell has an available node of class gpu\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["allocate"],
        ["allocate", "--resource-class", "x", "--policy", "random"],
        ["allocation"],
        ["allocation", "show"],
        ["cell"],
        ["cell", "show"],
        ["capacity", "extra"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_allocation_show_and_delete(
    fake_allocations: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_allocations.free = ["cells/rack-1/nodes/n1"]
    assert main(["allocate", "--resource-class", "baremetal", "--trait", "CUSTOM_A"]) == 0
    capsys.readouterr()
    assert main(["allocation", "show", "a1"]) == 0  # the bare id, in --cell rack-1
    assert fake_allocations.requests("GetAllocation")[0].name == "cells/rack-1/allocations/a1"
    out = capsys.readouterr().out
    assert "node:              cells/rack-1/nodes/n1" in out
    assert "required traits:   CUSTOM_A" in out and "forbidden traits:  -" in out

    assert main(["allocation", "delete", "cells/rack-1/allocations/a1"]) == 0
    assert capsys.readouterr().out == "deleted cells/rack-1/allocations/a1\n"
    assert fake_allocations.free == ["cells/rack-1/nodes/n1"]
    assert main(["allocation", "delete", "cells/rack-1/allocations/a1", "-o", "json"]) == 1
    assert capsys.readouterr().err == (
        "rackcells: NOT_FOUND: allocation cells/rack-1/allocations/a1 not found\n"
    )

    patch_session().cell = None
    assert main(["allocation", "show", "a1"]) == 2
    assert "needs a cell" in capsys.readouterr().err
