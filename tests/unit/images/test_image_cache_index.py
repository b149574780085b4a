"""ImageCache without a network: what it finds on disk at start, lookups, refused input."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from leaf_cell.image_cache import PARTIAL_PREFIX, ImageCache, ImageCacheError, parse_checksum


def put(directory: Path, data: bytes, mtime: float | None = None) -> str:
    """Places ``data`` as a verified image would be stored; returns its hex digest."""
    digest = hashlib.sha256(data).hexdigest()
    path = directory / digest
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return digest


def test_start_indexes_images_and_discards_partial_downloads(tmp_path: Path) -> None:
    a = put(tmp_path, b"a" * 100)
    b = put(tmp_path, b"b" * 50)
    (tmp_path / f"{PARTIAL_PREFIX}0123-abcd").write_bytes(b"half")
    (tmp_path / "README").write_text("operator's note")

    cache = ImageCache(tmp_path, 1000)

    assert sorted(os.listdir(tmp_path)) == sorted([a, b, "README"])
    image = cache.lookup(a)
    assert image is not None
    assert (image.sha256, image.size, image.path) == (a, 100, tmp_path / a)
    stats = cache.stats()
    assert (stats.images, stats.bytes_cached, stats.downloads) == (2, 150, 0)


def test_start_creates_a_missing_directory(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "new" / "cache", 1000)
    assert (tmp_path / "new" / "cache").is_dir()
    assert cache.stats().images == 0


def test_a_smaller_cap_at_start_evicts_the_least_recently_used(tmp_path: Path) -> None:
    old = put(tmp_path, b"o" * 100, mtime=1_000_000)
    new = put(tmp_path, b"n" * 100, mtime=2_000_000)

    cache = ImageCache(tmp_path, 150)

    assert cache.lookup(old) is None
    assert cache.lookup(new) is not None
    assert not (tmp_path / old).exists()
    assert cache.stats().evictions == 1


def test_use_order_survives_a_restart(tmp_path: Path) -> None:
    first = put(tmp_path, b"1" * 100, mtime=1_000_000)
    second = put(tmp_path, b"2" * 100, mtime=2_000_000)
    assert ImageCache(tmp_path, 1000).lookup(first) is not None  # first is now the newest

    cache = ImageCache(tmp_path, 150)

    assert cache.lookup(first) is not None
    assert cache.lookup(second) is None


@pytest.mark.parametrize("form", ["hex", "prefixed", "upper"])
def test_lookup_accepts_common_digest_forms(tmp_path: Path, form: str) -> None:
    digest = put(tmp_path, b"x")
    key = {"hex": digest, "prefixed": f"sha256:{digest}", "upper": digest.upper()}[form]
    image = ImageCache(tmp_path, 1000).lookup(key)
    assert image is not None
    assert image.sha256 == digest


@pytest.mark.parametrize("key", ["", "0" * 64, "../etc/passwd", "g" * 64, "0" * 63])
def test_lookup_of_anything_else_is_none(tmp_path: Path, key: str) -> None:
    put(tmp_path, b"x")
    assert ImageCache(tmp_path, 1000).lookup(key) is None


def test_hits_need_no_source(tmp_path: Path) -> None:
    data = b"cached already"
    digest = put(tmp_path, data)
    cache = ImageCache(tmp_path, 1000)
    # Port 9 on 127.0.0.1 would refuse: a hit must not try to connect at all.
    image = asyncio.run(cache.ensure("http://127.0.0.1:9/img", f"sha256:{digest}"))
    assert image.path.read_bytes() == data
    assert (cache.stats().hits, cache.stats().downloads) == (1, 0)


@pytest.mark.parametrize(
    ("url", "checksum", "problem"),
    [
        ("http://127.0.0.1:9/img", "md5:abc", "not 'sha256:'"),
        ("http://127.0.0.1:9/img", "sha256:1234", "not 'sha256:'"),
        ("file:///etc/passwd", "sha256:" + "0" * 64, "unsupported scheme"),
        ("ftp://127.0.0.1/img", "sha256:" + "0" * 64, "unsupported scheme"),
    ],
)
def test_bad_input_is_refused_before_any_download(
    tmp_path: Path, url: str, checksum: str, problem: str
) -> None:
    cache = ImageCache(tmp_path, 1000)
    with pytest.raises(ImageCacheError, match=problem) as err:
        asyncio.run(cache.ensure(url, checksum))
    assert url in str(err.value)
    assert cache.stats().failures == 0


def test_parse_checksum() -> None:
    assert parse_checksum("sha256:" + "AB" * 32) == "ab" * 32
    assert parse_checksum(" sha256:" + "ab" * 32 + " ") == "ab" * 32
    assert parse_checksum("ab" * 32) is None
    assert parse_checksum("sha512:" + "ab" * 64) is None


def test_settings_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        ImageCache(tmp_path, 0)
