"""ImageCache against a real HTTP source: single flight, verification, eviction, restarts."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
from imagekit import ImageSource, checksum_of, image_bytes, listing

from leaf_cell.image_cache import PARTIAL_PREFIX, CachedImage, ImageCache, ImageCacheError

SIZE = 100_000


def test_twenty_concurrent_ensures_download_once(tmp_path: Path, source: ImageSource) -> None:
    data = image_bytes(SIZE)
    gate = threading.Event()
    url = source.serve("/img", data, gate=gate)
    cache = ImageCache(tmp_path, 10 * SIZE)

    async def main() -> list[CachedImage]:
        calls = [asyncio.create_task(cache.ensure(url, checksum_of(data))) for _ in range(20)]
        # The source holds its answer until every caller is waiting on the download.
        await asyncio.to_thread(source.wait_for_request, "/img")
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*calls)

    images = asyncio.run(main())
    assert source.requests["/img"] == 1
    assert len(set(images)) == 1
    image = images[0]
    assert image.path.read_bytes() == data
    assert image.size == SIZE
    assert image.sha256 == checksum_of(data).removeprefix("sha256:")
    stats = cache.stats()
    assert (stats.downloads, stats.images, stats.bytes_cached) == (1, 1, SIZE)


def test_same_checksum_under_two_urls_is_one_download(tmp_path: Path, source: ImageSource) -> None:
    data = image_bytes(SIZE)
    gate = threading.Event()
    first = source.serve("/a", data, gate=gate)
    second = source.serve("/b", data)
    cache = ImageCache(tmp_path, 10 * SIZE)

    async def main() -> tuple[CachedImage, CachedImage]:
        a = asyncio.create_task(cache.ensure(first, checksum_of(data)))
        b = asyncio.create_task(cache.ensure(second, checksum_of(data)))
        await asyncio.to_thread(source.wait_for_request, "/a")
        gate.set()
        return await a, await b

    a, b = asyncio.run(main())
    assert a == b
    assert source.requests["/b"] == 0


def test_a_hit_does_not_download(tmp_path: Path, source: ImageSource) -> None:
    data = image_bytes(SIZE)
    url = source.serve("/img", data)
    cache = ImageCache(tmp_path, 10 * SIZE)

    async def main() -> None:
        await cache.ensure(url, checksum_of(data))
        await cache.ensure(url, checksum_of(data).upper().replace("SHA256:", "sha256:"))

    asyncio.run(main())
    assert source.requests["/img"] == 1
    assert (cache.stats().downloads, cache.stats().hits) == (1, 1)


def test_a_waiter_that_gives_up_does_not_cancel_the_download(
    tmp_path: Path, source: ImageSource
) -> None:
    data = image_bytes(SIZE)
    gate = threading.Event()
    url = source.serve("/img", data, gate=gate)
    cache = ImageCache(tmp_path, 10 * SIZE)

    async def main() -> CachedImage:
        quitter = asyncio.create_task(cache.ensure(url, checksum_of(data)))
        stayer = asyncio.create_task(cache.ensure(url, checksum_of(data)))
        await asyncio.to_thread(source.wait_for_request, "/img")
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        gate.set()
        return await stayer

    image = asyncio.run(main())
    assert image.path.read_bytes() == data
    assert source.requests["/img"] == 1


def test_checksum_mismatch_names_both_and_leaves_nothing(
    tmp_path: Path, source: ImageSource
) -> None:
    served = image_bytes(SIZE, seed=1)
    wanted = image_bytes(SIZE, seed=2)
    url = source.serve("/img", served)
    cache = ImageCache(tmp_path, 10 * SIZE)

    async def main() -> list[BaseException | CachedImage]:
        return await asyncio.gather(
            *(cache.ensure(url, checksum_of(wanted)) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert source.requests["/img"] == 1
    assert all(isinstance(r, ImageCacheError) for r in results)
    message = str(results[0])
    assert url in message
    assert "mismatch" in message
    assert checksum_of(wanted) in message
    assert checksum_of(served) in message
    assert listing(tmp_path) == []
    assert cache.stats().images == 0
    assert cache.stats().failures == 1

    # Once the source serves the right bytes, the next call fetches again and succeeds.
    source.serve("/img", wanted)
    image = asyncio.run(cache.ensure(url, checksum_of(wanted)))
    assert image.path.read_bytes() == wanted
    assert source.requests["/img"] == 2
    assert listing(tmp_path) == [image.sha256]


def test_http_error_names_the_status(tmp_path: Path, source: ImageSource) -> None:
    cache = ImageCache(tmp_path, 10 * SIZE)
    url = source.base + "/missing"
    with pytest.raises(ImageCacheError, match="HTTP 404") as err:
        asyncio.run(cache.ensure(url, checksum_of(b"x")))
    assert url in str(err.value)
    assert listing(tmp_path) == []


def test_unreachable_source_is_an_image_cache_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/img"
    cache = ImageCache(tmp_path, 10 * SIZE)
    with pytest.raises(ImageCacheError, match="cannot reach source"):
        asyncio.run(cache.ensure(url, checksum_of(b"x")))


def test_a_silent_source_times_out(tmp_path: Path, source: ImageSource) -> None:
    url = source.serve("/img", image_bytes(SIZE), gate=threading.Event())
    cache = ImageCache(tmp_path, 10 * SIZE, fetch_timeout=0.3)
    with pytest.raises(ImageCacheError, match="timed out") as err:
        asyncio.run(cache.ensure(url, checksum_of(image_bytes(SIZE))))
    assert url in str(err.value)
    source.release_all()
    # The abandoned worker has removed its partial file (asyncio.run waits for it).
    assert listing(tmp_path) == []


def test_a_truncated_download_is_refused(tmp_path: Path, source: ImageSource) -> None:
    data = image_bytes(SIZE)
    url = source.serve("/img", data, truncate=True)
    cache = ImageCache(tmp_path, 10 * SIZE)
    with pytest.raises(ImageCacheError, match="truncated"):
        asyncio.run(cache.ensure(url, checksum_of(data)))
    assert listing(tmp_path) == []


@pytest.mark.parametrize("no_length", [False, True], ids=["content-length", "streamed"])
def test_an_image_bigger_than_the_cache_is_refused(
    tmp_path: Path, source: ImageSource, no_length: bool
) -> None:
    data = image_bytes(3 * SIZE)
    url = source.serve("/big", data, no_length=no_length)
    cache = ImageCache(tmp_path, 2 * SIZE, chunk_size=SIZE // 4)
    with pytest.raises(ImageCacheError, match="too large"):
        asyncio.run(cache.ensure(url, checksum_of(data)))
    assert listing(tmp_path) == []
    assert cache.stats().images == 0


def test_without_content_length_the_image_still_arrives(
    tmp_path: Path, source: ImageSource
) -> None:
    data = image_bytes(SIZE)
    url = source.serve("/img", data, no_length=True)
    image = asyncio.run(ImageCache(tmp_path, 2 * SIZE).ensure(url, checksum_of(data)))
    assert image.path.read_bytes() == data


def test_lru_evicts_the_least_recently_used(tmp_path: Path, source: ImageSource) -> None:
    a, b, c = (image_bytes(SIZE, seed=i) for i in range(3))
    urls = [source.serve(f"/{i}", d) for i, d in enumerate((a, b, c))]
    cache = ImageCache(tmp_path, SIZE * 5 // 2)

    async def main() -> None:
        img_a = await cache.ensure(urls[0], checksum_of(a))
        img_b = await cache.ensure(urls[1], checksum_of(b))
        assert cache.lookup(img_a.sha256) is not None  # a is now more recent than b
        img_c = await cache.ensure(urls[2], checksum_of(c))
        assert cache.lookup(img_b.sha256) is None
        assert not img_b.path.exists()
        assert cache.lookup(img_a.sha256) == img_a
        assert cache.lookup(img_c.sha256) == img_c

    asyncio.run(main())
    stats = cache.stats()
    assert (stats.evictions, stats.images, stats.bytes_cached) == (1, 2, 2 * SIZE)


def test_a_pinned_image_is_not_evicted(tmp_path: Path, source: ImageSource) -> None:
    a, b, c = (image_bytes(SIZE, seed=i) for i in range(3))
    urls = [source.serve(f"/{i}", d) for i, d in enumerate((a, b, c))]
    cache = ImageCache(tmp_path, SIZE * 5 // 2)

    async def main() -> None:
        async with cache.use(urls[0], checksum_of(a)) as img_a:
            img_b = await cache.ensure(urls[1], checksum_of(b))
            # a is the least recently used, but pinned: b goes instead.
            await cache.ensure(urls[2], checksum_of(c))
            assert cache.lookup(img_b.sha256) is None
            assert img_a.path.read_bytes() == a
        # Unpinned now, a can go.
        await cache.ensure(urls[1], checksum_of(b))
        assert cache.lookup(img_a.sha256) is None

    asyncio.run(main())


def test_when_everything_is_pinned_a_new_image_is_refused(
    tmp_path: Path, source: ImageSource
) -> None:
    a, b, c = (image_bytes(SIZE, seed=i) for i in range(3))
    urls = [source.serve(f"/{i}", d) for i, d in enumerate((a, b, c))]
    cache = ImageCache(tmp_path, SIZE * 5 // 2)

    async def main() -> None:
        async with cache.use(urls[0], checksum_of(a)), cache.use(urls[1], checksum_of(b)):
            with pytest.raises(ImageCacheError, match="no room") as err:
                await cache.ensure(urls[2], checksum_of(c))
            assert "pinned" in str(err.value)
            assert cache.stats().images == 2
        # Nothing was evicted for the refused image, and no partial file is left.
        assert len(listing(tmp_path)) == 2
        assert cache.stats().evictions == 0

    asyncio.run(main())


def test_a_new_cache_on_the_same_directory_finds_the_images(
    tmp_path: Path, source: ImageSource
) -> None:
    data = image_bytes(SIZE)
    url = source.serve("/img", data)
    first = asyncio.run(ImageCache(tmp_path, 10 * SIZE).ensure(url, checksum_of(data)))
    stray = tmp_path / f"{PARTIAL_PREFIX}deadbeef-0001"
    stray.write_bytes(b"half an image")

    again = ImageCache(tmp_path, 10 * SIZE)
    assert not stray.exists()
    assert again.lookup(first.sha256) == first
    assert asyncio.run(again.ensure(url, checksum_of(data))) == first
    assert source.requests["/img"] == 1
    assert again.stats().hits == 1


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
