"""Flags of node create/update become the right Node and an update mask of only what changed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rackcells.cli.errors import UsageError
from rackcells.cli.main import build_parser
from rackcells.cli.node_fields import (
    ENV_BMC_PASSWORD,
    build_create_node,
    build_update,
    needs_current_node,
    normalize_mac,
    parse_key_value,
    parse_port,
    read_password,
)
from rackcells.v1 import node_pb2


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def current_node() -> node_pb2.Node:
    return node_pb2.Node(
        name="cells/rack-1/nodes/n1",
        traits=["CUSTOM_A", "CUSTOM_B"],
        extra={"k": "v", "gone": "x"},
        ports=[
            node_pb2.Port(mac="52:54:00:00:00:01", pxe_enabled=True),
            node_pb2.Port(mac="52:54:00:00:00:02", pxe_enabled=False),
        ],
        etag="etag-1",
    )


# -- small parsers -----------------------------------------------------------------------------


def test_parse_port_defaults_to_pxe_and_accepts_nopxe() -> None:
    assert parse_port("52:54:00:aa:bb:01") == node_pb2.Port(
        mac="52:54:00:aa:bb:01", pxe_enabled=True
    )
    assert parse_port("52:54:00:aa:bb:01,nopxe").pxe_enabled is False


def test_parse_port_rejects_unknown_options() -> None:
    with pytest.raises(UsageError, match="unknown option"):
        parse_port("52:54:00:aa:bb:01,fast")


def test_parse_key_value_keeps_equals_in_value() -> None:
    assert parse_key_value("a=b=c", "--extra") == ("a", "b=c")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_key_value("novalue", "--extra")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("52:54:00:AA:BB:01", "52:54:00:aa:bb:01"),
        ("52-54-00-aa-bb-01", "52:54:00:aa:bb:01"),
        ("5254.00aa.bb01", "52:54:00:aa:bb:01"),
        ("525400aabb01", "52:54:00:aa:bb:01"),
        ("zz", None),
        ("52:54:00-aa:bb:01", None),
    ],
)
def test_normalize_mac(text: str, expected: str | None) -> None:
    assert normalize_mac(text) == expected


def test_read_password_strips_only_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(" s3cret \n")
    assert read_password(str(path)) == " s3cret "


def test_read_password_errors_do_not_contain_the_file_content(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_password(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        read_password(str(empty))


# -- create ------------------------------------------------------------------------------------


def test_create_sets_only_given_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_BMC_PASSWORD, raising=False)
    args = parse(
        "node",
        "create",
        "n1",
        "--bmc-address",
        "10.0.0.1",
        "--bmc-port",
        "16001",
        "--mac",
        "52:54:00:aa:bb:01",
        "--mac",
        "52:54:00:aa:bb:02,nopxe",
        "--trait",
        "CUSTOM_A",
        "--cpus",
        "32",
        "--cpu-arch",
        "x86_64",
        "--extra",
        "k=v",
    )
    node = build_create_node(args)
    assert node.bmc.address == "10.0.0.1" and node.bmc.port == 16001
    assert node.bmc.driver == "" and node.bmc.password == ""
    assert [(p.mac, p.pxe_enabled) for p in node.ports] == [
        ("52:54:00:aa:bb:01", True),
        ("52:54:00:aa:bb:02", False),
    ]
    assert list(node.traits) == ["CUSTOM_A"]
    assert node.properties.cpus == 32 and node.properties.memory_mb == 0
    assert dict(node.extra) == {"k": "v"}
    assert node.resource_class == ""


def test_create_reads_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BMC_PASSWORD, "from-env")
    assert build_create_node(parse("node", "create", "n1")).bmc.password == "from-env"


def test_create_password_file_wins_over_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_BMC_PASSWORD, "from-env")
    (tmp_path / "pw").write_text("from-file\n")
    args = parse("node", "create", "n1", "--bmc-password-file", str(tmp_path / "pw"))
    assert build_create_node(args).bmc.password == "from-file"


@pytest.mark.parametrize("command", ["create", "update"])
@pytest.mark.parametrize("flag", [["--bmc-password", "s3cret-x"], ["--bmc-password=s3cret-x"]])
def test_a_plain_password_flag_is_refused_without_echoing_it(
    command: str, flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse("node", command, "n1", *flag)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "s3cret-x" not in err and ENV_BMC_PASSWORD in err


def test_abbreviated_options_are_not_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("node", "create", "n1", "--bmc-addr", "10.0.0.1")


# -- update ------------------------------------------------------------------------------------


def test_update_mask_names_only_changed_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BMC_PASSWORD, "ignored-on-update")
    args = parse(
        "node",
        "update",
        "n1",
        "--resource-class",
        "gpu",
        "--bmc-port",
        "1623",
        "--memory-mb",
        "1024",
    )
    assert not needs_current_node(args)
    update = build_update(args, "cells/rack-1/nodes/n1", None)
    assert update.paths == ["resource_class", "bmc.port", "properties.memory_mb"]
    assert update.node.name == "cells/rack-1/nodes/n1"
    assert update.node.resource_class == "gpu" and update.node.bmc.port == 1623
    assert update.node.bmc.password == "" and update.node.etag == ""


def test_update_password_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BMC_PASSWORD, "new-pw")
    update = build_update(parse("node", "update", "n1", "--bmc-password-from-env"), "x", None)
    assert update.paths == ["bmc.password"] and update.node.bmc.password == "new-pw"
    monkeypatch.delenv(ENV_BMC_PASSWORD)
    with pytest.raises(UsageError, match=ENV_BMC_PASSWORD):
        build_update(parse("node", "update", "n1", "--bmc-password-from-env"), "x", None)


def test_update_traits_is_read_modify_write_with_etag() -> None:
    args = parse(
        "node",
        "update",
        "n1",
        "--add-trait",
        "CUSTOM_C",
        "--add-trait",
        "CUSTOM_A",
        "--remove-trait",
        "CUSTOM_B",
    )
    assert needs_current_node(args)
    update = build_update(args, "cells/rack-1/nodes/n1", current_node())
    assert update.paths == ["traits"]
    assert list(update.node.traits) == ["CUSTOM_A", "CUSTOM_C"]
    assert update.node.etag == "etag-1"


def test_update_extra_sets_and_unsets() -> None:
    args = parse(
        "node",
        "update",
        "n1",
        "--set-extra",
        "k=new",
        "--set-extra",
        "n=1",
        "--unset-extra",
        "gone",
    )
    update = build_update(args, "cells/rack-1/nodes/n1", current_node())
    assert update.paths == ["extra"]
    assert dict(update.node.extra) == {"k": "new", "n": "1"}


def test_update_ports_add_and_remove_in_any_mac_form() -> None:
    args = parse(
        "node",
        "update",
        "n1",
        "--remove-mac",
        "52-54-00-00-00-02",
        "--add-mac",
        "52:54:00:00:00:03,nopxe",
    )
    update = build_update(args, "cells/rack-1/nodes/n1", current_node())
    assert update.paths == ["ports"]
    assert [(p.mac, p.pxe_enabled) for p in update.node.ports] == [
        ("52:54:00:00:00:01", True),
        ("52:54:00:00:00:03", False),
    ]


def test_unchanged_list_is_left_out_of_the_mask() -> None:
    args = parse("node", "update", "n1", "--add-trait", "CUSTOM_A")
    assert build_update(args, "cells/rack-1/nodes/n1", current_node()).paths == []


def test_explicit_etag_wins_over_the_one_read() -> None:
    args = parse("node", "update", "n1", "--add-trait", "CUSTOM_X", "--etag", "mine")
    assert build_update(args, "n", current_node()).node.etag == "mine"


def test_maintenance_and_reason() -> None:
    update = build_update(
        parse("node", "update", "n1", "--maintenance", "on", "--reason", "disk"), "n", None
    )
    assert update.paths == ["maintenance", "maintenance_reason"]
    assert update.node.maintenance is True and update.node.maintenance_reason == "disk"
    update = build_update(parse("node", "update", "n1", "--maintenance", "off"), "n", None)
    assert update.paths == ["maintenance"] and update.node.maintenance is False
    with pytest.raises(UsageError, match="--reason"):
        build_update(
            parse("node", "update", "n1", "--maintenance", "off", "--reason", "x"), "n", None
        )


def test_instance_info_paths() -> None:
    args = parse(
        "node", "update", "n1", "--image", "http://img/x.raw", "--checksum", "sha256:" + "0" * 64
    )
    update = build_update(args, "n", None)
    assert update.paths == ["instance_info.image_url", "instance_info.image_checksum"]
