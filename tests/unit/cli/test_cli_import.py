"""node import checks the whole file first and reports created / exists / failed per node."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from rackcells.cli.client import Session
from rackcells.cli.main import main
from rackcells.cli.node_import import ImportFileError, enrol, load_import_file, parse_entries
from rackcells.cli.output import StatusLine

PASSWORD = "hunter2-very-secret"


def entry(i: int, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": f"r1-n{i:04d}",
        "resource_class": "baremetal",
        "traits": ["CUSTOM_RACK_R1"],
        "properties": {"cpus": 32, "memoryMb": 262144, "localGb": 960, "cpuArch": "x86_64"},
        "bmc": {
            "driver": "ipmi",
            "address": "127.0.0.1",
            "port": 16000 + i,
            "username": "admin",
            "password": PASSWORD,
        },
        "ports": [{"mac": f"52:54:00:aa:bb:{i:02x}", "pxeEnabled": True}],
        "extra": {"sim_index": str(i)},
    }
    obj.update(overrides)
    return obj


def test_parses_camel_and_snake_case_and_full_names() -> None:
    data = [entry(1), entry(2, name="cells/rack-2/nodes/r1-n0002", properties={"memory_mb": 1024})]
    entries = parse_entries(data, "rack-1")
    assert [str(e.ref) for e in entries] == [
        "cells/rack-1/nodes/r1-n0001",
        "cells/rack-2/nodes/r1-n0002",
    ]
    assert entries[0].node.properties.memory_mb == 262144
    assert entries[1].node.properties.memory_mb == 1024
    assert entries[0].node.name == ""  # the id travels as node_id
    assert entries[0].node.bmc.password == PASSWORD


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            lambda d: d[1]["properties"].update(cpu=1),
            r"FILE\[1\] \(r1-n0001\).*properties.*\"cpu\"",
        ),
        (
            lambda d: d[2].update(ports=[{"mac": "zz"}]),
            r"FILE\[2\] \(r1-n0002\): field ports\[0\]\.mac",
        ),
        (lambda d: d[0].pop("name"), r"FILE\[0\]\.name: is required"),
        (lambda d: d[2].update(name="Bad_Name"), r"FILE\[2\] \(Bad_Name\): field name"),
        (lambda d: d[2].update(name="r1-n0000"), r"FILE\[2\] \(r1-n0000\): field name: .* entry 0"),
        (
            lambda d: d[2].update(ports=[{"mac": "52-54-00-AA-BB-01"}]),
            r"FILE\[2\] \(r1-n0002\): field ports\[0\]\.mac: 52:54:00:aa:bb:01 is also in entry 1",
        ),
        (lambda d: d.__setitem__(1, "r1-n0001"), r"FILE\[1\]: expected a node object"),
    ],
)
def test_bad_entries_name_index_and_field(
    bad: Callable[[list[Any]], object], expected: str
) -> None:
    data = [entry(i) for i in range(3)]
    bad(data)
    with pytest.raises(ImportFileError, match=expected) as info:
        parse_entries(data, "rack-1")
    assert "nothing was enrolled" in info.value.message
    assert "\n" not in info.value.message


def test_parse_errors_never_echo_the_password() -> None:
    data = [entry(0, bmc={"password": PASSWORD, "passwd": PASSWORD})]
    with pytest.raises(ImportFileError) as info:
        parse_entries(data, "rack-1")
    assert PASSWORD not in info.value.message


def test_bare_names_need_a_cell() -> None:
    with pytest.raises(ImportFileError, match="needs a cell"):
        parse_entries([entry(0)], None)


def test_not_a_list() -> None:
    with pytest.raises(ImportFileError, match="expected a JSON list"):
        parse_entries({"nodes": []}, "rack-1")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        load_import_file(str(tmp_path / "missing.json"), "rack-1")
    broken = tmp_path / "broken.json"
    broken.write_text("[{]")
    with pytest.raises(ImportFileError, match=r"not valid JSON.*line 1"):
        load_import_file(str(broken), "rack-1")


def test_enrol_reports_created_exists_and_failed(
    session: Session, fake_nodes: Any, make_rpc_error: Callable[..., grpc.RpcError]
) -> None:
    fake_nodes.add("r1-n0001")
    fake_nodes.errors["CreateNode"] = lambda req: (
        make_rpc_error(
            grpc.StatusCode.ALREADY_EXISTS,
            "MAC 52:54:00:aa:bb:02 already belongs to node cells/rack-1/nodes/other",
            metadata={"mac": "52:54:00:aa:bb:02", "node": "cells/rack-1/nodes/other"},
        )
        if req.node_id == "r1-n0002"
        else None
    )
    entries = parse_entries([entry(i) for i in range(4)], "rack-1")
    report = enrol(session, entries, 3, StatusLine(False))
    assert report.created == ["cells/rack-1/nodes/r1-n0000", "cells/rack-1/nodes/r1-n0003"]
    assert report.exists == ["cells/rack-1/nodes/r1-n0001"]
    assert report.failed == [
        (
            "cells/rack-1/nodes/r1-n0002",
            "ALREADY_EXISTS: MAC 52:54:00:aa:bb:02 already belongs to node "
            "cells/rack-1/nodes/other",
        )
    ]
    assert not report.ok
    sent = [req for method, req in fake_nodes.calls if method == "CreateNode"]
    assert {req.parent for req in sent} == {"cells/rack-1"}


def test_already_exists_without_details_is_checked_with_get(
    session: Session, fake_nodes: Any, make_rpc_error: Callable[..., grpc.RpcError]
) -> None:
    fake_nodes.add("r1-n0000")
    fake_nodes.errors["CreateNode"] = lambda req: make_rpc_error(
        grpc.StatusCode.ALREADY_EXISTS, "enrolled concurrently"
    )
    report = enrol(session, parse_entries([entry(0), entry(1)], "rack-1"), 2, StatusLine(False))
    assert report.exists == ["cells/rack-1/nodes/r1-n0000"]
    assert [name for name, _ in report.failed] == ["cells/rack-1/nodes/r1-n0001"]


def test_unreachable_endpoint_stops_the_import(
    session: Session, fake_nodes: Any, transport_error: Callable[..., grpc.RpcError]
) -> None:
    fake_nodes.errors["CreateNode"] = lambda req: transport_error(
        grpc.StatusCode.UNAVAILABLE, "connection refused"
    )
    report = enrol(
        session, parse_entries([entry(i) for i in range(50)], "rack-1"), 1, StatusLine(False)
    )
    assert len(report.failed) == 1 and report.failed[0][1].startswith("cannot reach")
    assert len(report.skipped) == 49


def test_command_exit_status_and_summary(
    tmp_path: Path,
    fake_nodes: Any,
    patch_session: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps([entry(i) for i in range(3)]))
    assert main(["node", "import", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("created 3, already existed 0, failed 0")
    assert main(["node", "import", str(path), "-o", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["exists"]) == 3 and result["failed"] == []
    data = [entry(i) for i in range(3)]
    broken = copy.deepcopy(data)
    broken[2]["ports"][0]["mac"] = "nope"
    path.write_text(json.dumps(broken))
    calls = len(fake_nodes.calls)
    assert main(["node", "import", str(path)]) == 1
    assert len(fake_nodes.calls) == calls  # nothing was sent
    captured = capsys.readouterr()
    assert captured.out == "" and "[2] (r1-n0002): field ports[0].mac" in captured.err
    assert PASSWORD not in captured.err


def test_enrol_sends_batches_per_cell_and_retries_a_refused_batch_node_by_node(
    session: Session, fake_nodes: Any
) -> None:
    fake_nodes.add("r1-n0250")  # enrolled before: its batch is refused as a whole
    raw = [
        entry(i, ports=[{"mac": f"52:54:00:aa:{i >> 8:02x}:{i & 255:02x}", "pxeEnabled": True}])
        for i in range(450)
    ]
    report = enrol(session, parse_entries(raw, "rack-1"), 4, StatusLine(False))
    batches = [r for method, r in fake_nodes.calls if method == "BatchCreateNodes"]
    assert sorted(len(b.requests) for b in batches) == [50, 200, 200]
    assert all(b.parent == "cells/rack-1" for b in batches)
    singles = [r.node_id for method, r in fake_nodes.calls if method == "CreateNode"]
    assert sorted(singles) == [f"r1-n{i:04d}" for i in range(200, 400)]
    assert len(report.created) == 449 and not report.failed
    assert report.exists == ["cells/rack-1/nodes/r1-n0250"]
