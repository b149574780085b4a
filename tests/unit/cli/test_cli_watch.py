"""``node watch``: event lines, JSON lines, the live board, --until-stable, resuming streams."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from rackcells.cli import node_watch
from rackcells.cli.client import Session
from rackcells.cli.main import main
from rackcells.cli.node_watch import (
    EVENT_HEADERS,
    EventPump,
    NodeProgress,
    board_lines,
    event_line,
    event_row,
    progress_bar,
    progress_line,
)
from rackcells.v1 import node_pb2, node_service_pb2

N1 = "cells/rack-1/nodes/n1"
N2 = "cells/rack-1/nodes/n2"
AVAILABLE = node_pb2.PROVISION_STATE_AVAILABLE
DEPLOYING = node_pb2.PROVISION_STATE_DEPLOYING
ACTIVE = node_pb2.PROVISION_STATE_ACTIVE
DEPLOY_FAILED = node_pb2.PROVISION_STATE_DEPLOY_FAILED
CLEANING = node_pb2.PROVISION_STATE_CLEANING


def at(second: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime(2025, 1, 2, 3, 4, second, tzinfo=UTC))
    return out


def ev(
    revision: int,
    kind: str,
    state: int,
    *,
    node: str = N1,
    detail: str = "",
    phase: str = "",
    percent: int = 0,
) -> node_service_pb2.NodeEvent:
    return node_service_pb2.NodeEvent(
        revision=revision,
        node=node,
        time=at(revision % 60),
        kind=kind,
        detail=detail,
        provision_state=state,  # type: ignore[arg-type]
        phase=phase,
        percent=percent,
    )


def deploy_events(first: int = 11, node: str = N1) -> list[Any]:
    return [
        ev(first, "provision", DEPLOYING, node=node, detail="AVAILABLE -> DEPLOYING (deploy)"),
        ev(
            first + 1,
            "phase",
            DEPLOYING,
            node=node,
            detail="deploy",
            phase="image_write",
            percent=45,
        ),
        ev(first + 2, "deployed", ACTIVE, node=node, detail="d-1"),
    ]


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_watch, "RECONNECT_FIRST", 0.0)


# -- rendering ----------------------------------------------------------------------------------


def test_progress_line_of_a_busy_node() -> None:
    busy = NodeProgress(state=DEPLOYING, phase="image_write", percent=45)
    line = progress_line("r1-n0007", busy, 61)
    assert line == "r1-n0007  deploying  image_write  [#########-----------]  45%"
    assert len(line) == 61
    wide = progress_line("r1-n0007", busy, 200)
    assert "[" + "#" * 18 + "-" * 22 + "]  45%" in wide  # the bar stops growing at 40
    aligned = progress_line("n1", busy, 60, name_width=5, state_width=14, phase_width=12)
    assert aligned.startswith("n1     deploying       image_write   [")
    assert progress_line("n1", busy, 31) == "n1  deploying  image_write  45%"
    assert progress_line("n1", busy, 20) == "n1  deploying  imag…"
    assert progress_bar(100, 4) == "[####]" and progress_bar(-3, 2) == "[--]"


def test_progress_line_of_a_node_at_rest() -> None:
    assert progress_line("n1", NodeProgress(state=ACTIVE, phase="x", percent=100), 80) == (
        "n1  active"
    )
    failed = NodeProgress(state=DEPLOY_FAILED, error="image checksum\nmismatch")
    assert progress_line("n1", failed, 80) == "n1  deploy-failed: image checksum mismatch"
    assert progress_line("n1", failed, 25) == "n1  deploy-failed: image…"
    unknown = progress_line("n1", NodeProgress(), 80, name_width=4)
    assert unknown == "n1    -"


def test_progress_follows_events_and_resets_for_a_new_action() -> None:
    progress = NodeProgress(state=ACTIVE)
    progress.apply_event(ev(1, "provision", DEPLOYING), 1)
    progress.apply_event(ev(2, "phase", DEPLOYING, phase="image_write", percent=45), 2)
    progress.apply_event(ev(3, "power", DEPLOYING), 3)
    assert (progress.phase, progress.percent, progress.busy) == ("image_write", 45, True)
    progress.apply_event(ev(4, "deploy_failed", DEPLOY_FAILED, detail="no callback"), 4)
    assert (progress.busy, progress.error) == (False, "no callback")
    progress.apply_event(ev(5, "provision", CLEANING), 5)
    assert (progress.phase, progress.percent, progress.error) == ("", 0, "")


def test_board_fits_the_terminal_and_summarises_the_rest() -> None:
    rows = [(f"n{i}", NodeProgress(state=ACTIVE, seq=i)) for i in range(10)]
    rows[2] = ("n2", NodeProgress(state=DEPLOYING, phase="boot", percent=10, seq=0))
    lines = board_lines(rows, "", 40, 6)
    assert len(lines) == 5
    assert lines[0].startswith("n2  deploying  boot  [")
    assert [line.split()[0] for line in lines[1:4]] == ["n7", "n8", "n9"]
    assert lines[4] == "… and 6 more: 6 active"
    assert board_lines([], "watching …", 40, 6) == ["watching …"]
    sticky = board_lines(rows[2:3], "", 50, 6, state_width=14, phase_width=6)
    assert sticky == ["n2  deploying       boot    [#-------------]  10%"]


def test_event_row_and_line() -> None:
    event = ev(12, "phase", DEPLOYING, detail="deploy", phase="image_write", percent=45)
    cells = event_row(event, "n1")
    assert cells == [
        "12",
        "2025-01-02T03:04:12Z",
        "n1",
        "phase",
        "deploy",
        "deploying",
        "image_write",
        "45%",
    ]
    bare = event_row(node_service_pb2.NodeEvent(revision=1), "n1")
    assert bare == ["1", "-", "n1", "-", "-", "-", "-", "-"]
    assert event_line(EVENT_HEADERS).split() == list(EVENT_HEADERS)


# -- the command --------------------------------------------------------------------------------


def test_table_lines_until_stable(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    fake_nodes.watch_streams = [deploy_events()]
    assert main(["node", "watch", "n1", "--until-stable"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == list(EVENT_HEADERS)
    assert [line.split()[:4] for line in lines[1:]] == [
        ["11", "2025-01-02T03:04:11Z", "n1", "provision"],
        ["12", "2025-01-02T03:04:12Z", "n1", "phase"],
        ["13", "2025-01-02T03:04:13Z", "n1", "deployed"],
    ]
    assert lines[2].split()[4:] == ["deploy", "deploying", "image_write", "45%"]
    assert lines[1].split()[-3:] == ["deploying", "-", "-"]
    assert captured.err == ""
    (request,) = fake_nodes.watch_requests
    assert (request.parent, list(request.names), request.since_revision) == (
        "cells/rack-1",
        [N1],
        -1,
    )


def test_json_lines(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    fake_nodes.watch_streams = [deploy_events()]
    assert main(["node", "watch", "n1", "--until-stable", "-o", "json", "--since", "10"]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["revision"] for o in objects] == ["11", "12", "13"]
    assert objects[1] == {
        "revision": "12",
        "node": N1,
        "time": "2025-01-02T03:04:12Z",
        "kind": "phase",
        "detail": "deploy",
        "provision_state": "PROVISION_STATE_DEPLOYING",
        "phase": "image_write",
        "percent": 45,
    }
    assert fake_nodes.watch_requests[0].since_revision == 10


def test_until_stable_exits_1_when_a_node_fails(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    fake_nodes.add("n2", provision_state=DEPLOYING)
    fake_nodes.watch_streams = [
        [
            ev(20, "deployed", ACTIVE, node=N2),
            ev(21, "deploy_failed", DEPLOY_FAILED, detail="agent never called back"),
        ]
    ]
    fake_nodes.nodes[N1].last_error = "deploy failed: agent never called back"
    assert main(["node", "watch", "n1", "n2", "--until-stable"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "rackcells: 1 of 2 node(s) failed: n1 (deploy-failed: deploy failed: agent never "
        "called back)\n"
    )


def test_until_stable_returns_at_once_when_nodes_already_rest(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=AVAILABLE)
    fake_nodes.add("n2", provision_state=node_pb2.PROVISION_STATE_ENROLL)
    assert main(["node", "watch", "n1", "n2", "--until-stable"]) == 0
    assert fake_nodes.watch_requests == []
    fake_nodes.nodes[N1].provision_state = node_pb2.PROVISION_STATE_ERROR
    assert main(["node", "watch", "n1", "n2", "--until-stable"]) == 1
    assert "n1 (error)" in capsys.readouterr().err


def test_a_target_state_means_not_at_rest(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=AVAILABLE, target_provision_state=ACTIVE)
    fake_nodes.watch_streams = [deploy_events()]
    original = fake_nodes.GetNode

    def get_node(request: Any, timeout: float | None = None) -> Any:
        node = original(request, timeout)
        if node.provision_state == ACTIVE:
            node.target_provision_state = node_pb2.PROVISION_STATE_UNSPECIFIED
        return node

    fake_nodes.GetNode = get_node
    assert main(["node", "watch", "n1", "--until-stable"]) == 0
    assert len(fake_nodes.watch_requests) == 1
    assert capsys.readouterr().out.count("\n") == 4


def test_until_stable_needs_names(
    patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "watch", "--until-stable"]) == 2
    assert "--until-stable needs" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["-2", "x"])
def test_bad_since_is_a_usage_error(since: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["node", "watch", "--since", since])
    assert info.value.code == 2


def test_resumes_after_unavailable_from_the_last_revision(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    transport_error: Callable[..., grpc.RpcError],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    first, second, last = deploy_events()
    fake_nodes.watch_streams = [
        [first, second, transport_error(grpc.StatusCode.UNAVAILABLE, "Socket closed")],
        [second, last],  # the server repeats 12: it must not be shown twice
    ]
    assert main(["node", "watch", "n1", "--until-stable"]) == 0
    assert [r.since_revision for r in fake_nodes.watch_requests] == [-1, 12]
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == ["11", "12", "13"]
    assert "reconnecting in 0s, after revision 12" in captured.err
    assert "cannot reach 127.0.0.1:7001 (Socket closed)" in captured.err


def test_a_stream_that_never_worked_is_an_error(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    transport_error: Callable[..., grpc.RpcError],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_nodes.watch_streams = [[transport_error(grpc.StatusCode.UNAVAILABLE, "refused")]]
    assert main(["node", "watch"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "rackcells: cannot reach 127.0.0.1:7001 (refused)\n"
    assert len(fake_nodes.watch_requests) == 1


def test_other_stream_errors_end_the_watch(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    make_rpc_error: Callable[..., grpc.RpcError],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_nodes.watch_streams = [
        [
            ev(3, "power", ACTIVE, node="cells/rack-2/nodes/x"),
            make_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not yours"),
        ]
    ]
    patch_session().cell = None
    assert main(["node", "watch"]) == 1
    captured = capsys.readouterr()
    assert fake_nodes.watch_requests[0].parent == "cells/-"
    assert captured.out.splitlines()[1].split()[2] == "rack-2/x"
    assert captured.err == "rackcells: PERMISSION_DENIED: not yours\n"


def test_names_in_several_cells_get_a_stream_each(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=ACTIVE)
    other = node_pb2.Node(name="cells/rack-2/nodes/n9", provision_state=CLEANING)
    fake_nodes.nodes[other.name] = other
    fake_nodes.watch_streams = [
        [ev(40, "provision", AVAILABLE, node=other.name)],
        [ev(40, "provision", AVAILABLE, node=other.name)],
    ]
    assert main(["node", "watch", "n1", "cells/rack-2/nodes/n9", "n1", "--until-stable"]) == 0
    # The watch may end before both streams were opened; those opened are one per cell.
    requests = {(r.parent, tuple(r.names)) for r in fake_nodes.watch_requests}
    assert requests and requests <= {("cells/rack-1", (N1,)), ("cells/rack-2", (other.name,))}
    assert "rack-2/n9" in capsys.readouterr().out


def test_timeout_gives_up_with_one_line(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    assert main(["node", "watch", "n1", "--until-stable", "--timeout", "0.2"]) == 1
    assert capsys.readouterr().err == (
        "rackcells: gave up watching after 0.2s; still busy: n1 (deploying)\n"
    )


def test_ctrl_c_exits_130_quietly(
    fake_nodes: Any, patch_session: Callable[[], Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nodes.add("n1", provision_state=DEPLOYING)
    fake_nodes.watch_streams = [[ev(5, "provision", AVAILABLE)]]
    calls = []

    def interrupt(request: Any) -> BaseException | None:
        calls.append(request)
        return KeyboardInterrupt() if len(calls) > 1 else None

    fake_nodes.errors["GetNode"] = interrupt
    assert main(["node", "watch", "n1", "--until-stable"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 2


def test_live_board_on_a_terminal(
    fake_nodes: Any,
    patch_session: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("LINES", "20")
    fake_nodes.add("n1", provision_state=DEPLOYING)
    fake_nodes.add("n2", provision_state=ACTIVE)
    fake_nodes.watch_streams = [deploy_events()]
    patch_session().live = True
    assert main(["node", "watch", "n1", "n2", "--until-stable"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\x1b[?25l") and out.endswith("\x1b[?25h")
    assert "\x1b[2A" in out  # redrawn in place, two lines up
    final = out.rsplit("\x1b[2A", 1)[1]
    assert final == "n1  active\x1b[K\nn2  active\x1b[K\n\x1b[J\x1b[?25h"
    assert "n1  deploying  -  [" in out or "n1  deploying  image_write  [" in out


# -- the pump on its own ------------------------------------------------------------------------


def test_pump_resumes_after_the_lowest_revision_of_each_cell(
    fake_nodes: Any,
    transport_error: Callable[..., grpc.RpcError],
    make_rpc_error: Callable[..., grpc.RpcError],
) -> None:
    a, b = "cells/a/nodes/x", "cells/b/nodes/y"
    unavailable = transport_error(grpc.StatusCode.UNAVAILABLE, "gone")
    fake_nodes.watch_streams = [
        [ev(7, "power", ACTIVE, node=a), ev(3, "power", ACTIVE, node=b), unavailable],
        [ev(4, "power", ACTIVE, node=b), ev(7, "power", ACTIVE, node=a), None],
        [ev(8, "power", ACTIVE, node=a), make_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "x")],
    ]
    seen: list[Any] = []
    pump = EventPump(fake_nodes, "cells/-", [], 0, seen.append, endpoint="e")
    pump.run()
    # After UNAVAILABLE and after the server closed the stream alike.
    assert [r.since_revision for r in fake_nodes.watch_requests] == [0, 3, 4]
    events = [(s.node, s.revision) for s in seen if isinstance(s, node_service_pb2.NodeEvent)]
    assert events == [(a, 7), (b, 3), (b, 4), (a, 8)]
    notices = [str(s) for s in seen[:-1] if not isinstance(s, node_service_pb2.NodeEvent)]
    assert len(notices) == 2 and "the server closed the stream" in notices[1]
    assert seen[-1].error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert pump.resume_revision() == 4
