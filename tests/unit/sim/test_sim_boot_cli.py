"""The network-boot options of ``rackcells-sim rack``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackcells.sim.cli import parse_rack_options

BASE = ["rack", "--nodes", "2", "--bmc-port-base", "20000", "--inventory-out", "inv.json"]


def test_defaults_keep_pxe_without_a_boot_server() -> None:
    options = parse_rack_options(BASE)
    assert (options.boot_url, options.disk_dir) == (None, None)


def test_boot_url_and_disks(tmp_path: Path) -> None:
    options = parse_rack_options([*BASE, "--boot-url", "http://127.0.0.1:8080/"])
    assert (options.boot_url, options.disk_dir) == ("http://127.0.0.1:8080", None)
    options = parse_rack_options(
        [*BASE, "--boot-url", "http://127.0.0.1:8080", "--disk-dir", str(tmp_path / "d")]
    )
    assert options.disk_dir == tmp_path / "d"
    options = parse_rack_options([*BASE, "--boot-url", "http://h:1", "--disk-sink", "hash"])
    assert (options.disk_dir, options.disk_hash) == (None, True)
    options = parse_rack_options([*BASE, "--boot-url", "http://h:1", "--disk-sink", "count"])
    assert (options.disk_dir, options.disk_hash) == (None, False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--boot-url", "127.0.0.1:8080"], "--boot-url must be http"),
        (["--disk-dir", "d"], "need --boot-url"),
        (["--boot-url", "http://h:1", "--disk-dir", "d", "--disk-sink", "hash"], "not allowed"),
        (["--boot-url", "http://h:1", "--disk-sink", "file"], "invalid choice"),
    ],
)
def test_bad_combinations_are_usage_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_rack_options([*BASE, *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
