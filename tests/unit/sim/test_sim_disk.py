"""Virtual disks: sparse image files and hashing sinks, and their refusal after power-off."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

from rackcells.sim.disk import DiskStore, FileDisk, VirtualDisk

MIB = 1 << 20


def test_file_disk_keeps_the_bytes_and_leaves_holes_for_zeros(tmp_path: Path) -> None:
    data = [os.urandom(MIB), bytes(4 * MIB), os.urandom(100), bytes(MIB)]
    path = tmp_path / "n1.img"
    path.write_bytes(b"old contents that must go" * 1000)
    disk = DiskStore(tmp_path).open("n1", threading.Event())
    assert isinstance(disk, FileDisk)
    for chunk in data:
        assert disk.write(chunk) == len(chunk)
    disk.flush()
    disk.close()
    whole = b"".join(data)
    assert path.read_bytes() == whole
    assert disk.size == len(whole)
    assert disk.checksum() == "sha256:" + hashlib.sha256(whole).hexdigest()
    assert path.stat().st_blocks * 512 < 3 * MIB  # the 5 MiB of zeros are holes


def test_the_sink_counts_and_hashes_only() -> None:
    disk = DiskStore(None).open("n1", threading.Event())
    assert type(disk) is VirtualDisk
    assert disk.checksum() is None
    disk.write(b"abc")
    assert (disk.size, disk.checksum()) == (3, "sha256:" + hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(io.UnsupportedOperation):
        disk.fileno()  # nothing for the agent to fsync


def test_the_counting_sink_counts_without_a_checksum() -> None:
    disk = DiskStore(None, hashing=False).open("n1", threading.Event())
    disk.write(b"abc")
    disk.write(b"de")
    assert (disk.size, disk.checksum()) == (5, None)


def test_writes_fail_once_the_machine_is_off(tmp_path: Path) -> None:
    cancel = threading.Event()
    disk = FileDisk(tmp_path / "n1.img", cancel)
    disk.write(b"x" * 10)
    cancel.set()
    with pytest.raises(OSError, match="machine is off"):
        disk.write(b"y")
    disk.close()
    assert (tmp_path / "n1.img").read_bytes() == b"x" * 10
