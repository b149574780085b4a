"""Tables, key/value blocks and the node views read well and stay aligned."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from rackcells.cli.node_views import (
    deploy_breakdown,
    list_row,
    node_summary,
    power_label,
    provision_label,
    render_node,
    render_node_list,
)
from rackcells.cli.output import (
    StatusLine,
    enum_label,
    format_time,
    render_fields,
    render_table,
    truncate,
)
from rackcells.v1 import node_pb2

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def secs(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def test_table_columns_align_and_lines_have_no_trailing_space() -> None:
    text = render_table(("A", "LONG HEADER"), [["xxxx", "1"], ["y", ""]])
    assert text.split("\n") == ["A     LONG HEADER", "xxxx  1", "y"]


def test_fields_align_and_continue_multiline_values() -> None:
    text = render_fields([("a", "1"), ("longer", "x\ny"), ("empty", "")])
    assert text.split("\n") == ["a:       1", "longer:  x", "         y", "empty:   -"]


def test_enum_labels_are_lower_case_with_hyphens() -> None:
    assert enum_label("PROVISION_STATE_WAIT_CALL_BACK", "PROVISION_STATE_") == "wait-call-back"
    assert provision_label(node_pb2.PROVISION_STATE_AVAILABLE) == "available"
    assert provision_label(node_pb2.PROVISION_STATE_UNSPECIFIED) == "-"
    assert power_label(node_pb2.POWER_STATE_ON) == "on"
    assert provision_label(99) == "99"


def test_time_shows_utc_and_age() -> None:
    assert format_time(ts(NOW - timedelta(minutes=3)), NOW) == "2025-01-02 03:01:05Z (3m ago)"
    assert format_time(timestamp_pb2.Timestamp(), NOW) == "-"


def test_truncate_keeps_one_line() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("a\nmuch longer error text", 10) == "a much lo…"


def sample_node() -> node_pb2.Node:
    return node_pb2.Node(
        name="cells/rack-1/nodes/n1",
        uid="uid-1",
        resource_class="baremetal",
        traits=["CUSTOM_A"],
        properties=node_pb2.NodeProperties(
            cpus=32, memory_mb=1024, local_gb=100, cpu_arch="x86_64"
        ),
        bmc=node_pb2.BmcInfo(
            driver="ipmi", address="10.0.0.1", port=623, username="admin", password_set=True
        ),
        ports=[
            node_pb2.Port(mac="52:54:00:aa:bb:01", pxe_enabled=True),
            node_pb2.Port(mac="52:54:00:aa:bb:02"),
        ],
        power_state=node_pb2.POWER_STATE_OFF,
        provision_state=node_pb2.PROVISION_STATE_DEPLOYING,
        target_provision_state=node_pb2.PROVISION_STATE_ACTIVE,
        last_error="BMC did not answer within 5 s while reading the power state of the chassis",
        extra={"b": "2", "a": "1"},
        lock=node_pb2.NodeLock(
            holder="conductor:rack-1:deploy",
            purpose="deploy",
            since=ts(NOW - timedelta(seconds=30)),
        ),
        create_time=ts(NOW - timedelta(days=2)),
        last_deploy=node_pb2.DeployTimings(
            start_time=ts(NOW - timedelta(seconds=100)),
            end_time=ts(NOW),
            phases=[
                node_pb2.PhaseTiming(phase="queued", duration=secs(10)),
                node_pb2.PhaseTiming(phase="image_write", duration=secs(75)),
            ],
        ),
        etag="etag-1",
    )


def test_list_row_columns() -> None:
    row = list_row(sample_node(), with_cell=True)
    assert row[:5] == ["rack-1/n1", "off", "deploying → active", "no", "baremetal"]
    assert row[5] == "52:54:00:aa:bb:01,52:54:00:aa:bb:02(nopxe)"
    assert len(row[6]) == 40 and row[6].endswith("…")
    assert list_row(sample_node(), with_cell=False)[0] == "n1"


def test_list_table_has_the_documented_headers() -> None:
    header = render_node_list([sample_node()], with_cell=False).split("\n")[0]
    assert header.split("  ")[0] == "NAME"
    for column in ("POWER", "PROVISION STATE", "MAINT", "RESOURCE CLASS", "MACS", "LAST ERROR"):
        assert column in header


def test_show_has_every_field_lock_etag_and_no_password() -> None:
    text = render_node(sample_node(), NOW)
    for expected in (
        "cells/rack-1/nodes/n1",
        "uid-1",
        "deploying",
        "CUSTOM_A",
        "cpus 32",
        "10.0.0.1:623",
        "password set",
        "52:54:00:aa:bb:02 (no pxe)",
        "a=1",
        "held by conductor:rack-1:deploy for deploy since 2025-01-02 03:03:35Z (30s ago)",
        "etag:",
        "etag-1",
        "last deploy:",
    ):
        assert expected in text, expected
    assert text.index("a=1") < text.index("b=2")


def test_deploy_breakdown_shares_of_wall_time() -> None:
    lines = deploy_breakdown(sample_node().last_deploy).split("\n")
    assert lines[0].split() == ["PHASE", "SECONDS", "SHARE"]
    assert lines[1].split() == ["queued", "10.0", "10%"]
    assert lines[2].split() == ["image_write", "75.0", "75%"]
    assert lines[3].split() == ["total", "100.0", "100%"]


def test_summary_line() -> None:
    text = node_summary(sample_node())
    assert text.startswith("cells/rack-1/nodes/n1: deploying → active, power off")


def test_status_line_is_silent_off_a_terminal() -> None:
    out = io.StringIO()
    line = StatusLine(False, out)
    line.show("enrolled 1/2")
    line.clear()
    assert out.getvalue() == ""
    line = StatusLine(True, out)
    line.show("enrolled 1/2")
    line.clear()
    assert "\renrolled 1/2" in out.getvalue()
