"""The IPMI chassis commands are encoded and decoded as the specification lays them out."""

from __future__ import annotations

import pytest

from leaf_cell.drivers.base import BootDevice, PowerState
from leaf_cell.drivers.ipmi_codec import (
    boot_flags_request,
    completion_text,
    parse_boot_flags,
    parse_chassis_status,
)


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (b"\x01\x00\x00", PowerState.ON),
        (b"\x00\x00\x00", PowerState.OFF),
        (b"\x61\x10\x40", PowerState.ON),
        (b"\x60", PowerState.OFF),
    ],
)
def test_chassis_status_power_is_bit_zero(data: bytes, state: PowerState) -> None:
    assert parse_chassis_status(data) is state


def test_empty_chassis_status_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_chassis_status(b"")


def test_boot_flags_request_bytes() -> None:
    # parameter 5; valid (0x80) [+ persistent 0x40]; device selector in bits 5:2
    assert boot_flags_request(BootDevice.PXE, False) == bytes([5, 0x80, 0x04, 0, 0, 0])
    assert boot_flags_request(BootDevice.DISK, True) == bytes([5, 0xC0, 0x08, 0, 0, 0])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes([1, 5, 0x80, 0x04, 0, 0, 0]), (BootDevice.PXE, False)),
        (bytes([1, 5, 0xC0, 0x08, 0, 0, 0]), (BootDevice.DISK, True)),
        (bytes([1, 5, 0xE0, 0x04, 0, 0, 0]), (BootDevice.PXE, True)),  # EFI bit ignored
        (bytes([1, 5, 0x00, 0x04, 0, 0, 0]), (None, False)),  # no valid override
        (bytes([1, 0x85, 0x80, 0x04, 0, 0, 0]), (None, False)),  # parameter marked invalid
        (bytes([1, 5, 0x80, 0x14, 0, 0, 0]), (None, False)),  # CD/DVD: not modelled
    ],
)
def test_boot_flags_response(data: bytes, expected: tuple[BootDevice | None, bool]) -> None:
    assert parse_boot_flags(data) == expected


def test_boot_flags_round_trip() -> None:
    for device in BootDevice:
        for persistent in (False, True):
            request = boot_flags_request(device, persistent)
            response = bytes([1]) + request[:3] + bytes(3)  # version byte, then the parameter
            assert parse_boot_flags(response) == (device, persistent)


@pytest.mark.parametrize("data", [b"", bytes([1, 5, 0x80]), bytes([1, 4, 0x80, 0x04, 0])])
def test_malformed_boot_flags_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_boot_flags(data)


def test_completion_text() -> None:
    assert completion_text(0xC1) == "completion code 0xc1: invalid command"
    assert completion_text(0x80) == "completion code 0x80"
