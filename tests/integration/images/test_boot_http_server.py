"""BootHttpServer over real sockets: boot scripts, images with ranges, agent files, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imagekit import Fetched, http_get, image_bytes, place_image, raw_request

from leaf_cell.boot_http import BootHttpServer
from leaf_cell.image_cache import ImageCache

MAC = "52:54:00:12:34:56"
SCRIPT = "#!ipxe\nkernel http://x/agent/vmlinuz\nboot\n"
DATA = image_bytes(1000, seed=7)


async def scripts(mac: str) -> str | None:
    return SCRIPT if mac == MAC else None


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, agent_dir: Path | None = None) -> AsyncIterator[BootHttpServer]:
    cache = ImageCache(tmp_path / "cache", 1 << 30)
    server = BootHttpServer("127.0.0.1:0", cache, scripts, agent_dir=agent_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def fetch(
    tmp_path: Path,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    agent_dir: Path | None = None,
) -> Fetched:
    """Starts a server (with DATA in its cache), makes one request, stops the server."""
    place_image(tmp_path / "cache", DATA)

    async def main() -> Fetched:
        async with serving(tmp_path, agent_dir) as server:
            return await asyncio.to_thread(http_get, server.base_url + path, headers, method)

    return asyncio.run(main())


def digest() -> str:
    return hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    "notation", [MAC, MAC.upper(), MAC.replace(":", "-"), MAC.replace(":", ""), "5254.0012.3456"]
)
def test_boot_script_for_a_known_mac_in_any_notation(tmp_path: Path, notation: str) -> None:
    got = fetch(tmp_path, f"/boot/{notation}")
    assert got.status == 200
    assert got.body.decode() == SCRIPT
    assert got.headers["content-type"].startswith("text/plain")


def test_unknown_mac_is_404(tmp_path: Path) -> None:
    got = fetch(tmp_path, "/boot/52:54:00:ff:ff:ff")
    assert got.status == 404
    assert b"52:54:00:ff:ff:ff" in got.body


@pytest.mark.parametrize("bad", ["nonsense", "52:54:00:12:34", "52:54:00:12:34:5g"])
def test_malformed_mac_is_400(tmp_path: Path, bad: str) -> None:
    assert fetch(tmp_path, f"/boot/{bad}").status == 400


def test_access_log_records_the_script_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="leaf_cell.boot_http"):
        fetch(tmp_path, f"/boot/{MAC}")
    lines = [r.getMessage() for r in caplog.records if r.name == "leaf_cell.boot_http"]
    assert any(f"GET /boot/{MAC} 200" in line for line in lines), lines


def test_image_get_serves_the_whole_file(tmp_path: Path) -> None:
    got = fetch(tmp_path, f"/images/{digest()}")
    assert got.status == 200
    assert got.body == DATA
    assert got.headers["content-length"] == str(len(DATA))
    assert got.headers["accept-ranges"] == "bytes"
    assert digest() in got.headers["etag"]


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, 999),
        ("bytes=-10", 990, 999),
        ("bytes=995-2000", 995, 999),
    ],
)
def test_single_ranges_get_206(tmp_path: Path, spec: str, first: int, last: int) -> None:
    got = fetch(tmp_path, f"/images/{digest()}", {"Range": spec})
    assert got.status == 206
    assert got.body == DATA[first : last + 1]
    assert got.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert got.headers["content-length"] == str(last - first + 1)


def test_range_past_the_end_is_416(tmp_path: Path) -> None:
    got = fetch(tmp_path, f"/images/{digest()}", {"Range": "bytes=1000-"})
    assert got.status == 416
    assert got.headers["content-range"] == f"bytes */{len(DATA)}"


def test_if_range_with_another_etag_sends_the_whole_file(tmp_path: Path) -> None:
    got = fetch(tmp_path, f"/images/{digest()}", {"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (got.status, got.body) == (200, DATA)


def test_head_has_the_headers_and_no_body(tmp_path: Path) -> None:
    got = fetch(tmp_path, f"/images/{digest()}", method="HEAD")
    assert got.status == 200
    assert got.headers["content-length"] == str(len(DATA))
    assert got.body == b""


def test_unknown_image_is_404(tmp_path: Path) -> None:
    assert fetch(tmp_path, "/images/" + "0" * 64).status == 404
    assert fetch(tmp_path, "/images/not-a-digest").status == 404


def test_healthz(tmp_path: Path) -> None:
    got = fetch(tmp_path, "/healthz")
    assert (got.status, got.body) == (200, b"ok")


def test_unknown_path_is_404_and_other_methods_405(tmp_path: Path) -> None:
    assert fetch(tmp_path, "/nothing/here").status == 404
    got = fetch(tmp_path, "/healthz", method="DELETE")
    assert got.status == 405
    assert "GET" in got.headers["allow"]


def test_agent_files_are_served_with_ranges(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "vmlinuz").write_bytes(DATA)
    got = fetch(tmp_path, "/agent/vmlinuz", agent_dir=agent)
    assert (got.status, got.body) == (200, DATA)
    part = fetch(tmp_path, "/agent/vmlinuz", {"Range": "bytes=-10"}, agent_dir=agent)
    assert (part.status, part.body) == (206, DATA[-10:])
    assert fetch(tmp_path, "/agent/missing", agent_dir=agent).status == 404
    assert fetch(tmp_path, "/agent/vmlinuz").status == 404  # no agent_dir configured


@pytest.mark.parametrize(
    "path",
    [
        "/agent/../secret",
        "/agent/%2e%2e/secret",
        "/agent/..%2fsecret",
        "/agent/sub/../../secret",
        "/agent/%2Fsecret",
    ],
)
def test_path_traversal_out_of_agent_dir_is_refused(tmp_path: Path, path: str) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "sub").mkdir()
    (tmp_path / "secret").write_bytes(b"TOP SECRET")

    async def main() -> bytes:
        async with serving(tmp_path, agent) as server:
            port = int(server.base_url.rpartition(":")[2])
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            return await asyncio.to_thread(raw_request, port, request)

    response = asyncio.run(main())
    assert response.split(b" ")[1] in (b"400", b"404")
    assert b"TOP SECRET" not in response


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_bad_requests_get_400(tmp_path: Path, request_bytes: bytes) -> None:
    async def main() -> bytes:
        async with serving(tmp_path) as server:
            port = int(server.base_url.rpartition(":")[2])
            return await asyncio.to_thread(raw_request, port, request_bytes)

    assert asyncio.run(main()).startswith(b"HTTP/1.1 400 ")


def test_keep_alive_serves_several_requests_on_one_connection(tmp_path: Path) -> None:
    place_image(tmp_path / "cache", DATA)
    pipelined = (
        f"GET /boot/{MAC} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"HEAD /images/{digest()} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /images/{digest()} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-4\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def main() -> bytes:
        async with serving(tmp_path) as server:
            port = int(server.base_url.rpartition(":")[2])
            return await asyncio.to_thread(raw_request, port, pipelined)

    response = asyncio.run(main())
    assert response.count(b"HTTP/1.1 ") == 3
    assert SCRIPT.encode() in response
    assert b"HTTP/1.1 206 " in response
    assert response.endswith(b"\r\n\r\n" + DATA[:5])


def test_stop_drops_idle_keep_alive_connections(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as server:
            port = int(server.base_url.rpartition(":")[2])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"ok")
        # The server has stopped; the idle connection was closed rather than left hanging.
        assert await reader.read() == b""
        writer.close()

    asyncio.run(main())


def test_twenty_concurrent_downloads_of_a_large_image_all_verify(tmp_path: Path) -> None:
    big = image_bytes(16 << 20, seed=3)
    sha = place_image(tmp_path / "cache", big)
    del big

    async def main() -> list[Fetched]:
        async with serving(tmp_path) as server:
            url = server.image_url(sha)
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=20) as pool:
                calls = [
                    loop.run_in_executor(pool, lambda: http_get(url, keep=False)) for _ in range(20)
                ]
                return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert [r.status for r in results] == [200] * 20
    assert {r.sha256 for r in results} == {sha}
    assert {r.size for r in results} == {16 << 20}


def test_urls_name_the_bound_port(tmp_path: Path) -> None:
    async def main() -> None:
        cache = ImageCache(tmp_path / "cache", 1 << 20)
        server = BootHttpServer("127.0.0.1:0", cache, scripts)
        port = await server.start()
        try:
            assert port > 0
            assert server.base_url == f"http://127.0.0.1:{port}"
            assert server.image_url("sha256:" + "A" * 64) == f"{server.base_url}/images/{'a' * 64}"
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_client_leaving_mid_download_does_not_hurt_the_server(tmp_path: Path) -> None:
    big = image_bytes(8 << 20, seed=4)
    sha = place_image(tmp_path / "cache", big)

    async def main() -> Fetched:
        async with serving(tmp_path) as server:
            port = int(server.base_url.rpartition(":")[2])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /images/{sha} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await reader.readexactly(1 << 16)
            writer.transport.abort()
            return await asyncio.to_thread(http_get, server.image_url(sha), None, "GET", False)

    got = asyncio.run(main())
    assert (got.status, got.sha256) == (200, sha)
