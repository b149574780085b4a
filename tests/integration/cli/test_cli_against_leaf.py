"""The ``rackcells`` CLI as a subprocess against a real leaf cell in another subprocess.

Checks what an operator sees: exit statuses, one-line errors naming the field or the node,
JSON that parses, and that the BMC password given on the command line's side channels never
comes back in any output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "Pw-never-shown-7c1f"
CELL = "rack-1"


@dataclass
class Leaf:
    endpoint: str
    tmp: Path


def _leaf_command(tmp: Path) -> list[str]:
    script = Path(sys.executable).parent / "rackcells-leaf"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "leaf_cell.main"]
    return [
        *base,
        "serve",
        "--cell",
        CELL,
        "--listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite:///{tmp / 'leaf.db'}",
        "--port-file",
        str(tmp / "port"),
    ]


@pytest.fixture(scope="module")
def leaf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaf]:
    tmp = tmp_path_factory.mktemp("leaf")
    log = (tmp / "leaf.log").open("w")
    # No power-sync sweep: the nodes here have no real BMCs, and a sweep would change etags
    # under the etag checks below. (A leaf without the setting ignores the variable.)
    env = {**os.environ, "RACKCELLS_LEAF_POWER_SYNC_INTERVAL": "0"}
    proc = subprocess.Popen(_leaf_command(tmp), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port_file = tmp / "port"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"leaf exited with {proc.returncode}: {(tmp / 'leaf.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("leaf did not write its port file within 60 s")
            time.sleep(0.05)
        yield Leaf(f"127.0.0.1:{int(port_file.read_text())}", tmp)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@dataclass
class Result:
    code: int
    out: str
    err: str


OUTPUTS: list[str] = []


def cli(leaf: Leaf, *argv: str, env: dict[str, str] | None = None) -> Result:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_")}
    environment["RACKCELLS_ENDPOINT"] = leaf.endpoint
    environment.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "rackcells.cli.main", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    OUTPUTS.extend((proc.stdout, proc.stderr))
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def one_line(text: str) -> str:
    assert text.count("\n") == 1, text
    return text.rstrip("\n")


@pytest.fixture(scope="module")
def password_file(leaf: Leaf) -> str:
    path = leaf.tmp / "bmc-password"
    path.write_text(PASSWORD + "\n")
    return str(path)


def test_create_show_list(leaf: Leaf, password_file: str) -> None:
    r = cli(
        leaf,
        "--cell",
        CELL,
        "node",
        "create",
        "n1",
        "--bmc-address",
        "10.0.0.1",
        "--bmc-username",
        "admin",
        "--bmc-password-file",
        password_file,
        "--mac",
        "52:54:00:10:00:01",
        "--mac",
        "52:54:00:10:00:02,nopxe",
        "--trait",
        "CUSTOM_RACK_R1",
        "--cpus",
        "32",
        "--memory-mb",
        "262144",
        "--local-gb",
        "960",
        "--cpu-arch",
        "x86_64",
        "--extra",
        "row=7",
    )
    assert r.code == 0, r.err
    assert r.out == "created cells/rack-1/nodes/n1\n"

    r = cli(leaf, "node", "show", "cells/rack-1/nodes/n1")
    assert r.code == 0, r.err
    for text in (
        "enroll",
        "CUSTOM_RACK_R1",
        "10.0.0.1",
        "password set",
        "row=7",
        "etag:",
        "52:54:00:10:00:02 (no pxe)",
        "cpus 32, memory 262144 MiB",
    ):
        assert text in r.out, text

    r = cli(leaf, "node", "show", "n1", "--cell", CELL, "-o", "json")
    shown = json.loads(r.out)
    assert shown["bmc"]["password_set"] is True and "password" not in shown["bmc"]
    assert shown["provision_state"] == "PROVISION_STATE_ENROLL"

    r = cli(leaf, "node", "list", "--cell", CELL)
    header, *rows = r.out.strip().split("\n")
    assert header.split()[:2] == ["NAME", "POWER"]
    assert any(row.startswith("n1 ") and "enroll" in row for row in rows)
    r = cli(leaf, "node", "list")  # no cell: cells/-, names carry the cell
    assert "rack-1/n1" in r.out

    r = cli(leaf, "-o", "json", "node", "list", "--cell", CELL)
    listed = json.loads(r.out)
    assert [n["name"] for n in listed["nodes"]] == ["cells/rack-1/nodes/n1"]
    assert listed["unreachable"] == []


def test_update_and_stale_etag(leaf: Leaf) -> None:
    r = cli(
        leaf,
        "--cell",
        CELL,
        "node",
        "create",
        "n2",
        "--bmc-driver",
        "fake",
        "--trait",
        "CUSTOM_A",
        "--extra",
        "keep=1",
        "--extra",
        "drop=1",
    )
    assert r.code == 0, r.err
    etag = json.loads(cli(leaf, "--cell", CELL, "-o", "json", "node", "show", "n2").out)["etag"]
    r = cli(
        leaf,
        "--cell",
        CELL,
        "node",
        "update",
        "n2",
        "--add-trait",
        "CUSTOM_B",
        "--remove-trait",
        "CUSTOM_A",
        "--set-extra",
        "new=2",
        "--unset-extra",
        "drop",
        "--maintenance",
        "on",
        "--reason",
        "fan noise",
        "--resource-class",
        "gpu",
    )
    assert r.code == 0, r.err
    node = json.loads(cli(leaf, "--cell", CELL, "-o", "json", "node", "show", "n2").out)
    assert node["traits"] == ["CUSTOM_B"]
    assert node["extra"] == {"keep": "1", "new": "2"}
    assert node["maintenance"] is True and node["maintenance_reason"] == "fan noise"
    assert node["resource_class"] == "gpu"

    r = cli(leaf, "--cell", CELL, "node", "update", "n2", "--cpus", "8", "--etag", etag)
    assert r.code == 1
    assert one_line(r.err).startswith("rackcells: ABORTED: ")

    r = cli(leaf, "--cell", CELL, "node", "delete", "n2", "--etag", etag)
    assert r.code == 1 and "ABORTED" in r.err
    r = cli(leaf, "--cell", CELL, "node", "delete", "n2")
    assert r.code == 0 and r.out == "deleted cells/rack-1/nodes/n2\n"
    r = cli(leaf, "--cell", CELL, "node", "show", "n2")
    assert one_line(r.err) == "rackcells: NOT_FOUND: node cells/rack-1/nodes/n2 not found"


def test_error_lines(leaf: Leaf, password_file: str) -> None:
    r = cli(
        leaf,
        "--cell",
        CELL,
        "node",
        "create",
        "bad-mac",
        "--bmc-address",
        "10.0.0.9",
        "--bmc-password-file",
        password_file,
        "--mac",
        "zz:zz",
    )
    assert r.code == 1 and r.out == ""
    line = one_line(r.err)
    assert line.startswith("rackcells: INVALID_ARGUMENT: ") and "node.ports[0].mac" in line

    r = cli(leaf, "--cell", CELL, "node", "show", "nope")
    assert r.code == 1
    assert one_line(r.err) == "rackcells: NOT_FOUND: node cells/rack-1/nodes/nope not found"

    r = cli(
        leaf,
        "--cell",
        CELL,
        "node",
        "create",
        "dup",
        "--bmc-address",
        "10.0.0.9",
        "--mac",
        "52:54:00:10:00:01",
    )
    assert r.code == 1
    line = one_line(r.err)
    assert line.startswith("rackcells: ALREADY_EXISTS: ") and "52:54:00:10:00:01" in line

    r = cli(leaf, "node", "show", "n1", env={"RACKCELLS_CELL": ""})
    assert r.code == 2 and "needs a cell" in one_line(r.err)


def test_unreachable_endpoint(leaf: Leaf) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = cli(leaf, "--endpoint", f"127.0.0.1:{port}", "--timeout", "5", "node", "list")
    assert r.code == 1
    assert one_line(r.err).startswith(f"rackcells: cannot reach 127.0.0.1:{port} (")


def _import_entries(count: int, first_mac: int) -> list[dict[str, object]]:
    return [
        {
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
            "ports": [{"mac": f"52:54:00:20:00:{first_mac + i:02x}", "pxeEnabled": True}],
            "extra": {"sim_index": str(i)},
        }
        for i in range(count)
    ]


def test_import(leaf: Leaf) -> None:
    path = leaf.tmp / "nodes.json"
    path.write_text(json.dumps(_import_entries(40, 0)))
    r = cli(leaf, "--cell", CELL, "node", "import", str(path), "--concurrency", "8")
    assert r.code == 0, r.err
    assert r.out.startswith("created 40, already existed 0, failed 0")

    r = cli(leaf, "--cell", CELL, "-o", "json", "node", "import", str(path))
    assert r.code == 0
    result = json.loads(r.out)
    assert len(result["exists"]) == 40 and result["created"] == [] and result["failed"] == []

    # A new node whose MAC belongs to an enrolled one fails; the others are fine.
    entries = _import_entries(2, 0)
    entries[1]["name"] = "r1-clash"
    path.write_text(json.dumps(entries))
    r = cli(leaf, "--cell", CELL, "node", "import", str(path))
    assert r.code == 1
    assert "already existed 1, failed 1" in r.out
    assert "failed cells/rack-1/nodes/r1-clash: ALREADY_EXISTS: " in r.out

    # A malformed file enrols nothing and names entry and field.
    entries = _import_entries(3, 0x80)
    entries[2]["ports"] = [{"mac": "not-a-mac"}]
    path.write_text(json.dumps(entries))
    r = cli(leaf, "--cell", CELL, "node", "import", str(path))
    assert r.code == 1 and r.out == ""
    assert "[2] (r1-n0002): field ports[0].mac" in one_line(r.err)
    r = cli(leaf, "--cell", CELL, "node", "show", "r1-n0000", "-o", "json")
    assert json.loads(r.out)["ports"][0]["mac"] == "52:54:00:20:00:00"  # untouched

    r = cli(
        leaf,
        "node",
        "list",
        "--cell",
        CELL,
        "--all",
        "-o",
        "json",
        "--filter",
        'traits:"CUSTOM_RACK_R1"',
        "--page-size",
        "7",
    )
    assert len(json.loads(r.out)["nodes"]) == 41  # 40 imported + n1


def test_password_never_appears_in_any_output(leaf: Leaf) -> None:
    assert OUTPUTS, "runs after the other tests of this module"
    for text in OUTPUTS:
        assert PASSWORD not in text
