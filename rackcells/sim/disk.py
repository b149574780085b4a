"""The simulated machines' disks: what the deploy agent writes its image to.

Two kinds, chosen per rack: a sparse file ``DIR/<node>.img`` per machine (``--disk-dir``), so a
test can compare the bytes with the image, or a sink that only counts and hashes
(``--disk-sink hash``), so a rack of 1,000 machines can deploy without 1,000 images on the host.
Either way the disk computes the SHA-256 of what it was given while it is written, so the
control API can report it without reading anything back.  ``--disk-sink count`` drops even
that: a real disk does not hash, and a benchmark of a hundred deploys on two host cores should
spend them on the deploy (the agent still hashes and verifies every byte it writes).

A disk belongs to one agent run.  Once that run's ``cancel`` event is set (the machine lost
power or was reset) every write fails with EIO, so the agent stops, and nothing an abandoned
agent still does can reach the disk of the machine's next deploy.
"""

from __future__ import annotations

import errno
import hashlib
import io
import threading
from collections.abc import Callable
from pathlib import Path

_ZEROS = bytes(1 << 20)


class VirtualDisk:
    """A write-only disk that counts and hashes; the base class stores nothing (the sink)."""

    def __init__(self, cancel: threading.Event, *, hashing: bool = True) -> None:
        self._cancel = cancel
        self._sha256 = hashlib.sha256() if hashing else None
        self.size = 0
        self.closed = False
        #: Called once, when the disk is first closed.
        self.on_close: Callable[[], None] | None = None

    def write(self, data: bytes | memoryview, /) -> int:
        if self._cancel.is_set():
            raise OSError(errno.EIO, "the machine is off")
        if self.closed:
            raise ValueError("write to a closed disk")
        self._store(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""

    def fileno(self) -> int:
        # The agent fsyncs devices with a descriptor; a simulated disk needs no durability,
        # and a hundred fsyncs of whole images would measure the host's disk instead.
        raise io.UnsupportedOperation("a virtual disk has no file descriptor")

    def close(self) -> None:
        if not self.closed and self.on_close is not None:
            self.on_close()
        self.closed = True

    def checksum(self) -> str | None:
        """``sha256:HEX`` of everything written, or None if nothing was (or nothing hashed)."""
        if self._sha256 is None or not self.size:
            return None
        return f"sha256:{self._sha256.hexdigest()}"

    def _store(self, data: bytes | memoryview) -> None:
        """Where the subclass keeps the bytes."""


class FileDisk(VirtualDisk):
    """A sparse image file, truncated when the disk is opened (a new deploy overwrites all)."""

    def __init__(self, path: Path, cancel: threading.Event) -> None:
        super().__init__(cancel)
        self.path = path
        self._file = path.open("wb", buffering=0)

    def _store(self, data: bytes | memoryview) -> None:
        if _all_zero(data):
            self._file.seek(len(data), io.SEEK_CUR)  # leave a hole, like thin storage
            return
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) or 0 :]

    def close(self) -> None:
        if not self.closed:
            try:
                self._file.truncate(self.size)  # a trailing hole still counts
            finally:
                self._file.close()
        super().close()


def _all_zero(data: bytes | memoryview) -> bool:
    """Cheap for the usual case: real data differs from zeros in its first or last byte."""
    if not data or data[0] or data[-1]:
        return False
    return data == (_ZEROS if len(data) == len(_ZEROS) else bytes(len(data)))


class DiskStore:
    """Hands each agent run its machine's disk: a file in ``directory``, or a sink."""

    def __init__(self, directory: Path | None, *, hashing: bool = True) -> None:
        self.directory = directory
        self.hashing = hashing

    def open(self, name: str, cancel: threading.Event) -> VirtualDisk:
        if self.directory is None:
            return VirtualDisk(cancel, hashing=self.hashing)
        return FileDisk(self.directory / f"{name}.img", cancel)
