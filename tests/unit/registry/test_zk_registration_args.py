"""A leaf's registration refuses bad settings before it talks to ZooKeeper."""

from __future__ import annotations

import pytest

from leaf_cell.registration import Registration

URL = "zk://127.0.0.1:2181/rackcells/cells"


def test_the_znode_path_is_the_cell_under_the_registry_path() -> None:
    reg = Registration(URL, "rack-1", "127.0.0.1:7001", "1.0")
    assert reg.path == "/rackcells/cells/rack-1"
    assert reg.client is None


@pytest.mark.parametrize(
    ("url", "cell", "endpoint", "problem"),
    [
        ("static:/etc/cells.yaml", "rack-1", "127.0.0.1:7001", "must start with zk://"),
        (URL, "Rack_1", "127.0.0.1:7001", "cell id"),
        (URL, "", "127.0.0.1:7001", "cell id is required"),
        (URL, "rack-1", "127.0.0.1", "endpoint to publish for cell 'rack-1'"),
        (URL, "rack-1", "127.0.0.1:0", "port '0'"),
    ],
)
def test_bad_settings_are_refused(url: str, cell: str, endpoint: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^registry") as info:
        Registration(url, cell, endpoint, "1.0")
    assert problem in str(info.value)


def test_stop_before_start_does_nothing() -> None:
    Registration(URL, "rack-1", "127.0.0.1:7001", "1.0").stop()
