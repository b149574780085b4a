"""The few IPMI chassis commands the driver sends, as bytes in and values out.

The driver sends these standard commands (IPMI 2.0 specification, chapter 28) itself rather
than through pyghmi's helpers (``get_power``, ``set_power``, ``set_bootdev``): the helpers first
identify the BMC's vendor (an extra Get Device ID round trip per session), read the power state
before every change, and raise errors without the IPMI completion code, which is what tells
"not supported" from "failed".  Keeping the encoding here, free of I/O, lets unit tests pin it.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaf_cell.drivers.base import BootDevice, PowerState

__all__ = [
    "BOOT_FLAGS_PARAMETER",
    "BOOT_VALID_BIT_CLEARING_PARAMETER",
    "CC_NOT_IN_PRESENT_STATE",
    "CHASSIS_CONTROL",
    "CHASSIS_CONTROL_REQUEST",
    "COMPLETION_CODES",
    "GET_BOOT_OPTIONS",
    "GET_CHASSIS_STATUS",
    "GET_DEVICE_ID",
    "KEEP_VALID_BIT_ON_TIMEOUT",
    "SET_BOOT_OPTIONS",
    "UNSUPPORTED_CODES",
    "Request",
    "boot_flags_request",
    "completion_text",
    "parse_boot_flags",
    "parse_chassis_status",
]


@dataclass(frozen=True)
class Request:
    """An IPMI request: network function and command number."""

    netfn: int
    command: int


GET_DEVICE_ID = Request(0x06, 0x01)
GET_CHASSIS_STATUS = Request(0x00, 0x01)
CHASSIS_CONTROL_REQUEST = Request(0x00, 0x02)
SET_BOOT_OPTIONS = Request(0x00, 0x08)
GET_BOOT_OPTIONS = Request(0x00, 0x09)

CHASSIS_CONTROL = {"off": 0x00, "on": 0x01, "cycle": 0x02, "reset": 0x03, "soft_off": 0x05}
"""Chassis Control data byte per action (table 28-4)."""

BOOT_VALID_BIT_CLEARING_PARAMETER = 3
KEEP_VALID_BIT_ON_TIMEOUT = 0x08
"""Parameter 3, bit 3: do not drop the boot override when no restart follows within 60 s."""
BOOT_FLAGS_PARAMETER = 5

_FLAG_VALID = 0x80
_FLAG_PERSISTENT = 0x40
_PARAMETER_INVALID = 0x80
_SELECTOR_SHIFT = 2
_SELECTOR_MASK = 0x0F
_SELECTORS = {BootDevice.PXE: 0x1, BootDevice.DISK: 0x2}
_DEVICES = {selector: device for device, selector in _SELECTORS.items()}

CC_NOT_IN_PRESENT_STATE = 0xD5

COMPLETION_CODES = {
    0xC0: "node busy",
    0xC1: "invalid command",
    0xC2: "invalid command for LUN",
    0xC3: "timeout while processing command",
    0xC4: "out of space",
    0xC7: "request data length invalid",
    0xC9: "parameter out of range",
    0xCC: "invalid data field in request",
    0xCE: "response could not be provided",
    0xD2: "BMC initialization in progress",
    0xD4: "insufficient privilege level",
    CC_NOT_IN_PRESENT_STATE: "not possible in the present state",
    0xD6: "sub-function disabled or unavailable",
    0xFF: "unspecified error",
}

UNSUPPORTED_CODES = frozenset({0xC1, 0xC2, 0xD6})
"""Completion codes that mean "this BMC does not implement that" for any command.  Boot
options add 0x80 ("parameter not supported"), see the driver."""


def completion_text(code: int) -> str:
    """``completion code 0xc1: invalid command`` -- how error details name a code."""
    name = COMPLETION_CODES.get(code)
    return f"completion code 0x{code:02x}" + (f": {name}" if name else "")


def parse_chassis_status(data: bytes) -> PowerState:
    """Power state from a Get Chassis Status response (bit 0 of the first byte)."""
    if not data:
        raise ValueError("empty Get Chassis Status response")
    return PowerState.ON if data[0] & 0x01 else PowerState.OFF


def boot_flags_request(device: BootDevice, persistent: bool) -> bytes:
    """Set System Boot Options data for parameter 5 (boot flags), legacy BIOS boot type."""
    flags = _FLAG_VALID | (_FLAG_PERSISTENT if persistent else 0)
    selector = _SELECTORS[device] << _SELECTOR_SHIFT
    return bytes([BOOT_FLAGS_PARAMETER, flags, selector, 0, 0, 0])


def parse_boot_flags(data: bytes) -> tuple[BootDevice | None, bool]:
    """``(device, persistent)`` from a Get System Boot Options (parameter 5) response.

    No valid override, or an override for a device we do not model (CD, BIOS setup, ...),
    reads as device None.
    """
    if len(data) < 4:
        raise ValueError(f"boot flags response too short ({len(data)} bytes)")
    if data[1] & 0x7F != BOOT_FLAGS_PARAMETER:
        raise ValueError(f"boot options response is for parameter {data[1] & 0x7F}, not 5")
    flags = data[2]
    if data[1] & _PARAMETER_INVALID or not flags & _FLAG_VALID:
        return None, False
    selector = (data[3] >> _SELECTOR_SHIFT) & _SELECTOR_MASK
    return _DEVICES.get(selector), bool(flags & _FLAG_PERSISTENT)
