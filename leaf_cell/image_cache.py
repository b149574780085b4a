"""The leaf's image cache: each deploy image is fetched once per cell and served from local disk.

A rack deploying forty nodes with the same image must not pull forty copies across the
data-centre network, and image bytes never pass through the top cell. So the cache is keyed by
the image's checksum, not its URL: two URLs with the same ``sha256:`` checksum are one image,
and any number of concurrent deploys wanting an image that is not yet here share **one**
download (single flight). Every downloaded image is hashed while it streams to disk and only a
verified file is renamed into place, so a file named ``<sha256>`` in the cache directory is
always a complete, verified image; partial downloads carry a ``.partial-`` prefix and are
discarded at start-up. That is what lets the cache survive restarts without re-hashing.

The cache is capped at ``max_bytes``; adding an image evicts least-recently-used images first.
An image that a deploy holds through :meth:`ImageCache.use` is pinned and never evicted while
held: evicting an image a node is still streaming would fail that deploy. When the cap cannot
be met without touching pinned images, the new image is refused with an error naming the
numbers, rather than silently going over the cap.

All public methods are called from one event loop. The network and disk work of a download
runs in a worker thread, in chunks, so the loop stays responsive and memory stays flat however
large the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

__all__ = ["CacheStats", "CachedImage", "ImageCache", "ImageCacheError", "parse_checksum"]

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHECKSUM = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_USER_AGENT = "rackcells-leaf-image-cache"


@dataclass(frozen=True)
class CachedImage:
    """A verified image on local disk; ``sha256`` is the bare hex digest (the file's name)."""

    sha256: str
    path: Path
    size: int


@dataclass(frozen=True)
class CacheStats:
    """Counters since start, plus the current contents; ``downloads`` counts completed fetches."""

    downloads: int
    hits: int
    evictions: int
    bytes_cached: int
    images: int
    failures: int


class ImageCacheError(Exception):
    """An image could not be made available; the message names the URL and the reason.

    These are problems with the image source or the request (a 404, a wrong checksum, an image
    larger than the cache), never a fault of the cell, so callers report them as a failed
    deploy with this message, not as an internal error.
    """

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"image {url}: {problem}")
        self.url = url
        self.problem = problem


def parse_checksum(checksum: str) -> str | None:
    """``sha256:HEX`` (either case) → lower-case hex, or None for anything else."""
    match = _CHECKSUM.match(checksum.strip())
    return match.group(1).lower() if match else None


class _Aborted(Exception):
    """The download was abandoned by its owner (timeout or cancellation)."""


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@dataclass(frozen=True)
class _Fetch:
    """One download into the new file ``dest``, hashed as it streams; runs in a worker thread.

    ``timeout`` bounds each socket operation; the event loop bounds the whole download and
    sets ``abort`` when it gives up, which the thread notices between chunks.
    """

    url: str
    dest: Path
    max_bytes: int
    chunk_size: int
    timeout: float
    abort: threading.Event

    def run(self) -> tuple[int, str]:
        """Returns (size, sha256 hex); on failure removes ``dest`` and raises ImageCacheError
        (or _Aborted)."""
        try:
            return self._stream()
        except BaseException as exc:
            _unlink_quietly(self.dest)
            raise self._explain(exc) from None

    def _stream(self) -> tuple[int, str]:
        url, max_bytes = self.url, self.max_bytes
        # The scheme was checked to be http or https before we got here.
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})  # noqa: S310
        digest = hashlib.sha256()
        received = 0
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            declared = response.headers.get("Content-Length")
            expected = int(declared) if declared and declared.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise ImageCacheError(
                    url, f"too large: {expected} bytes, the cache holds at most {max_bytes}"
                )
            with self.dest.open("xb") as out:
                while True:
                    if self.abort.is_set():
                        raise _Aborted
                    chunk = response.read1(self.chunk_size)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > max_bytes:
                        raise ImageCacheError(
                            url, f"too large: more than {max_bytes} bytes, the cache's capacity"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                if self.abort.is_set():
                    raise _Aborted
            if expected is not None and received != expected:
                raise ImageCacheError(url, f"truncated: received {received} of {expected} bytes")
        return received, digest.hexdigest()

    def _explain(self, exc: BaseException) -> BaseException:
        """Turns what urllib and the OS raise into an ImageCacheError naming the URL."""
        url = self.url
        if isinstance(exc, ImageCacheError | _Aborted):
            return exc
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the response's socket
            return ImageCacheError(url, f"source answered HTTP {exc.code} {exc.reason}")
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError)
        ):
            return ImageCacheError(url, f"timed out: source silent for {self.timeout:g} s")
        if isinstance(exc, urllib.error.URLError):
            return ImageCacheError(url, f"cannot reach source: {exc.reason}")
        if isinstance(exc, OSError | HTTPException):
            return ImageCacheError(url, f"download failed: {exc!r}")
        return exc


class ImageCache:
    """Content-addressed, size-capped, single-flight image cache in ``directory``."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        fetch_timeout: float = 600.0,
        chunk_size: int = 1 << 20,
    ) -> None:
        if max_bytes <= 0 or chunk_size <= 0 or fetch_timeout <= 0:
            raise ValueError("max_bytes, chunk_size and fetch_timeout must be positive")
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._fetch_timeout = fetch_timeout
        self._chunk_size = chunk_size
        # Least recently used first; move_to_end marks use.
        self._index: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Task[CachedImage]] = {}
        self._downloads = 0
        self._hits = 0
        self._evictions = 0
        self._failures = 0
        self._dir.mkdir(parents=True, exist_ok=True)
        self._reindex()

    def _reindex(self) -> None:
        """Indexes verified images left by an earlier run, oldest use first; drops partials."""
        found: list[tuple[float, CachedImage]] = []
        with os.scandir(self._dir) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.name.startswith(PARTIAL_PREFIX):
                    log.info("discarding partial download %s", path)
                    _unlink_quietly(path)
                elif _HEX.match(entry.name) and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, CachedImage(entry.name, path, st.st_size)))
        for _, image in sorted(found, key=lambda item: item[0]):
            self._index[image.sha256] = image
            self._bytes += image.size
        while self._bytes > self._max_bytes and self._index:
            self._evict(next(iter(self._index.values())))
        if self._index:
            log.info("image cache %s: %d images, %d bytes", self._dir, len(self), self._bytes)

    def __len__(self) -> int:
        return len(self._index)

    async def ensure(self, url: str, checksum: str) -> CachedImage:
        """Returns the verified image, downloading it unless cached or already being fetched.

        Concurrent callers for one checksum share one download and all get its result or its
        ImageCacheError; a call after a failure tries again. The image may be evicted once this
        returns: deploys that stream from it should hold it with :meth:`use`.
        """
        return await self._ensure(url, self._parse(url, checksum))

    @contextlib.asynccontextmanager
    async def use(self, url: str, checksum: str) -> AsyncIterator[CachedImage]:
        """Like :meth:`ensure`, and the image is pinned (never evicted) until the block exits."""
        digest = self._parse(url, checksum)
        # Pinned before it is even downloaded, so that nothing can evict it between the end
        # of the download and the moment this caller resumes.
        self._pins[digest] = self._pins.get(digest, 0) + 1
        try:
            yield await self._ensure(url, digest)
        finally:
            remaining = self._pins[digest] - 1
            if remaining:
                self._pins[digest] = remaining
            else:
                del self._pins[digest]

    def lookup(self, sha256: str) -> CachedImage | None:
        """The cached image with this digest (bare hex or ``sha256:HEX``), marked as used."""
        digest = sha256.strip().lower().removeprefix("sha256:")
        image = self._index.get(digest) if _HEX.match(digest) else None
        if image is not None:
            self._touch(image)
        return image

    def stats(self) -> CacheStats:
        return CacheStats(
            downloads=self._downloads,
            hits=self._hits,
            evictions=self._evictions,
            bytes_cached=self._bytes,
            images=len(self._index),
            failures=self._failures,
        )

    async def close(self) -> None:
        """Abandons downloads in progress (their waiters see CancelledError)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _parse(self, url: str, checksum: str) -> str:
        digest = parse_checksum(checksum)
        if digest is None:
            raise ImageCacheError(
                url, f"checksum {checksum!r} is not 'sha256:' followed by 64 hex digits"
            )
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageCacheError(url, f"unsupported scheme {scheme!r}: use http or https")
        return digest

    def _touch(self, image: CachedImage) -> None:
        """Marks use in memory and in the file's mtime, which orders the index after a restart."""
        self._index.move_to_end(image.sha256)
        with contextlib.suppress(OSError):
            os.utime(image.path)

    async def _ensure(self, url: str, digest: str) -> CachedImage:
        image = self._index.get(digest)
        if image is not None:
            if image.path.is_file():
                self._hits += 1
                self._touch(image)
                return image
            log.warning("cached image %s vanished from disk; fetching it again", image.path)
            self._forget(image)
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(url, digest), name=f"fetch-{digest[:12]}")
            self._inflight[digest] = task
            task.add_done_callback(lambda done: self._fetch_finished(digest, done))
        # Shielded: a waiter that gives up must not cancel the download others are awaiting.
        return await asyncio.shield(task)

    def _fetch_finished(self, digest: str, task: asyncio.Task[CachedImage]) -> None:
        if self._inflight.get(digest) is task:
            del self._inflight[digest]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter gave up

    async def _download(self, url: str, digest: str) -> CachedImage:
        tmp = self._dir / f"{PARTIAL_PREFIX}{digest[:16]}-{secrets.token_hex(4)}"
        abort = threading.Event()
        started = time.monotonic()
        log.info("fetching image %s (sha256:%s)", url, digest)
        fetch = _Fetch(url, tmp, self._max_bytes, self._chunk_size, self._fetch_timeout, abort)
        future = asyncio.get_running_loop().run_in_executor(None, fetch.run)
        try:
            async with asyncio.timeout(self._fetch_timeout):
                size, got = await future
        except BaseException as exc:
            # The worker thread may still be writing: tell it to stop, and remove its file
            # once it has finished, whichever way it finishes.
            abort.set()
            future.add_done_callback(lambda _: _unlink_quietly(tmp))
            if not isinstance(exc, asyncio.CancelledError):
                self._failures += 1
            if isinstance(exc, TimeoutError):
                raise ImageCacheError(
                    url, f"timed out: not complete after {self._fetch_timeout:g} s"
                ) from None
            if isinstance(exc, ImageCacheError):
                log.warning("%s", exc)
            raise
        try:
            if got != digest:
                raise ImageCacheError(
                    url, f"checksum mismatch: expected sha256:{digest}, got sha256:{got}"
                )
            self._make_room(url, size)
        except ImageCacheError as exc:
            _unlink_quietly(tmp)
            self._failures += 1
            log.warning("%s", exc)
            raise
        path = self._dir / digest
        os.replace(tmp, path)
        image = CachedImage(digest, path, size)
        self._index[digest] = image
        self._bytes += size
        self._downloads += 1
        log.info(
            "cached image sha256:%s (%d bytes) from %s in %.1f s",
            digest,
            size,
            url,
            time.monotonic() - started,
        )
        return image

    def _make_room(self, url: str, size: int) -> None:
        """Evicts least-recently-used unpinned images until ``size`` more bytes fit, or raises
        without evicting anything when even that would not be enough."""
        if size > self._max_bytes:
            raise ImageCacheError(
                url, f"too large: {size} bytes, the cache holds at most {self._max_bytes}"
            )
        needed = self._bytes + size - self._max_bytes
        if needed <= 0:
            return
        victims: list[CachedImage] = []
        freed = 0
        for image in self._index.values():
            if freed >= needed:
                break
            if not self._pins.get(image.sha256):
                victims.append(image)
                freed += image.size
        if freed < needed:
            pinned = sum(i.size for i in self._index.values() if self._pins.get(i.sha256))
            raise ImageCacheError(
                url,
                f"no room: {size} bytes needed, {self._max_bytes - self._bytes} free of "
                f"{self._max_bytes}, and {pinned} bytes are pinned by deploys in progress",
            )
        for image in victims:
            self._evict(image)

    def _evict(self, image: CachedImage) -> None:
        self._forget(image)
        self._evictions += 1
        _unlink_quietly(image.path)
        log.info("evicted image sha256:%s (%d bytes)", image.sha256, image.size)

    def _forget(self, image: CachedImage) -> None:
        del self._index[image.sha256]
        self._bytes -= image.size
