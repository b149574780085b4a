"""Global options, exit statuses and the commands' requests, with a fake NodeService."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from rackcells.cli.client import DEFAULT_ENDPOINT, Session
from rackcells.cli.main import build_parser, main
from rackcells.v1 import node_pb2, node_service_pb2


def test_global_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--cell", "rack-1", "-o", "json", "node", "list"])
    after = parser.parse_args(["node", "list", "--cell", "rack-1", "-o", "json"])
    for args in (before, after):
        assert (args.cell, args.output) == ("rack-1", "json")
    mixed = parser.parse_args(["--endpoint", "h:1", "node", "show", "n1", "--timeout", "3"])
    assert (mixed.endpoint, mixed.timeout) == ("h:1", 3.0)


def test_settings_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACKCELLS_ENDPOINT", "env:7")
    monkeypatch.setenv("RACKCELLS_CELL", "rack-9")
    env = Session.from_settings(None, None, None, None)
    assert (env.endpoint, env.cell, env.output) == ("env:7", "rack-9", "table")
    flags = Session.from_settings("flag:1", "rack-1", 2.0, "json")
    assert (flags.endpoint, flags.cell, flags.timeout, flags.json) == (
        "flag:1",
        "rack-1",
        2.0,
        True,
    )
    monkeypatch.delenv("RACKCELLS_ENDPOINT")
    assert Session.from_settings(None, None, None, None).endpoint == DEFAULT_ENDPOINT


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["node"],
        ["node", "frobnicate"],
        ["node", "list", "--limit", "0"],
        ["node", "list", "--all", "--limit", "3"],
        ["--timeout", "0", "node", "list"],
        ["-o", "yaml", "node", "list"],
        ["node", "power", "sideways", "n1"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_missing_cell_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RACKCELLS_CELL", raising=False)
    assert main(["node", "show", "n1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rackcells: node 'n1' needs a cell") and err.count("\n") == 1


def test_server_error_is_one_line_and_exit_1(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "show", "nope"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "rackcells: NOT_FOUND: node cells/rack-1/nodes/nope not found\n"


def test_create_sends_parent_and_id(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RACKCELLS_BMC_PASSWORD", "pw-from-env")
    assert (
        main(
            [
                "node",
                "create",
                "cells/rack-2/nodes/n7",
                "--bmc-address",
                "10.0.0.7",
                "--mac",
                "52:54:00:00:00:07",
            ]
        )
        == 0
    )
    ((_, request),) = fake_nodes.calls
    assert (request.parent, request.node_id) == ("cells/rack-2", "n7")
    assert request.node.bmc.password == "pw-from-env"
    out = capsys.readouterr().out
    assert out == "created cells/rack-2/nodes/n7\n" and "pw-from-env" not in out


def test_list_follows_pages_up_to_the_limit(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(25):
        fake_nodes.add(f"n{i:02d}")
    assert main(["node", "list", "--page-size", "10", "--limit", "22", "-o", "json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert len(result["nodes"]) == 22 and result["next_page_token"]
    sizes = [req.page_size for method, req in fake_nodes.calls if method == "ListNodes"]
    assert sizes == [10, 10, 2]
    assert "use --all" in captured.err
    fake_nodes.calls.clear()
    assert main(["node", "list", "--all", "--page-size", "10"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 26 and lines[1].startswith("n00 ")


def test_list_without_cell_asks_every_cell_and_warns_about_unreachable(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    original = fake_nodes.ListNodes

    def with_unreachable(request: Any, timeout: float | None = None) -> Any:
        response = original(request, timeout)
        response.unreachable.append("cells/rack-3")
        return response

    fake_nodes.ListNodes = with_unreachable
    patch_session().cell = None
    assert main(["node", "list"]) == 0
    captured = capsys.readouterr()
    assert fake_nodes.calls[0][1].parent == "cells/-"
    assert fake_nodes.calls[0][1].return_partial_success
    assert "rack-1/n1" in captured.out
    assert "cells/rack-3" in captured.err and "cells/rack-3" not in captured.out


def test_update_reads_then_writes_with_etag(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", traits=["CUSTOM_A"])
    assert main(["node", "update", "n1", "--add-trait", "CUSTOM_B", "--resource-class", "gpu"]) == 0
    methods = [m for m, _ in fake_nodes.calls]
    assert methods == ["GetNode", "UpdateNode"]
    request: node_service_pb2.UpdateNodeRequest = fake_nodes.calls[1][1]
    assert sorted(request.update_mask.paths) == ["resource_class", "traits"]
    assert list(request.node.traits) == ["CUSTOM_A", "CUSTOM_B"] and request.node.etag == "e1"
    assert capsys.readouterr().out == "updated cells/rack-1/nodes/n1: resource_class, traits\n"


def test_update_with_nothing_to_change(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "update", "n1"]) == 2
    assert "nothing to update" in capsys.readouterr().err


def test_concurrent_change_is_reported_as_aborted(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    make_rpc_error: Callable[..., grpc.RpcError],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_nodes.add("n1")
    fake_nodes.errors["UpdateNode"] = lambda req: make_rpc_error(
        grpc.StatusCode.ABORTED, "etag 'e1' does not match the current etag of n1; read it again"
    )
    assert main(["node", "update", "n1", "--set-extra", "a=b"]) == 1
    assert capsys.readouterr().err.startswith("rackcells: ABORTED: etag 'e1'")


def test_power_and_boot_device(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1")
    assert main(["node", "power", "on", "n1"]) == 0
    assert capsys.readouterr().out == "cells/rack-1/nodes/n1: power on\n"
    assert fake_nodes.calls[-1][1].action == node_service_pb2.POWER_ACTION_ON
    assert main(["node", "power", "soft-off", "n1"]) == 0
    assert fake_nodes.calls[-1][1].action == node_service_pb2.POWER_ACTION_SOFT_OFF
    capsys.readouterr()
    assert main(["node", "power", "status", "n1", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["power_state"] == "POWER_STATE_OFF"
    assert main(["node", "boot-device", "n1", "pxe", "--persistent"]) == 0
    request = fake_nodes.calls[-1][1]
    assert (request.device, request.persistent) == (node_service_pb2.BOOT_DEVICE_PXE, True)


def test_delete_and_show_json(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", properties=node_pb2.NodeProperties(memory_mb=1024))
    assert main(["node", "show", "n1", "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["properties"] == {"memory_mb": "1024"} and shown["etag"] == "e1"
    assert main(["node", "delete", "n1", "--etag", "e1"]) == 0
    assert fake_nodes.calls[-1][1].etag == "e1"
    assert capsys.readouterr().out == "deleted cells/rack-1/nodes/n1\n"
