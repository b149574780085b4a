"""Range header parsing (RFC 7233, single ranges) and listen-address handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaf_cell.boot_http import BootHttpServer, _NotSatisfiable, _parse_range, _split_listen
from leaf_cell.image_cache import ImageCache

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=999-999", (999, 999)),
        ("Bytes = 5-6", (5, 6)),
    ],
)
def test_single_ranges(header: str, span: tuple[int, int]) -> None:
    assert _parse_range(header, SIZE) == span


@pytest.mark.parametrize(
    "header",
    [None, "bytes=0-1,5-6", "items=0-5", "bytes=5-1", "bytes=-", "bytes=a-b", "bytes 0-5", ""],
)
def test_what_is_ignored_means_the_whole_file(header: str | None) -> None:
    assert _parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=1000-", SIZE), ("bytes=-0", SIZE), ("bytes=0-", 0), ("bytes=-1", 0)],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(_NotSatisfiable):
        _parse_range(header, size)


@pytest.mark.parametrize(
    ("listen", "split"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), (":80", ("", 80))],
)
def test_split_listen(listen: str, split: tuple[str, int]) -> None:
    assert _split_listen(listen) == split


@pytest.mark.parametrize("listen", ["127.0.0.1", "host:port", ""])
def test_bad_listen_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        _split_listen(listen)


async def _no_scripts(mac: str) -> str | None:
    return None


def test_base_url_before_start(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, 1000)
    fixed = BootHttpServer("10.0.0.1:8080", cache, _no_scripts)
    assert fixed.base_url == "http://10.0.0.1:8080"
    assert fixed.image_url("ab" * 32) == "http://10.0.0.1:8080/images/" + "ab" * 32
    wildcard = BootHttpServer("0.0.0.0:8080", cache, _no_scripts, advertise_host="10.1.2.3")
    assert wildcard.base_url == "http://10.1.2.3:8080"
    assert BootHttpServer("[::1]:81", cache, _no_scripts).base_url == "http://[::1]:81"
    with pytest.raises(RuntimeError, match="not started"):
        _ = BootHttpServer("127.0.0.1:0", cache, _no_scripts).base_url
