"""The virtual machine behind each simulated BMC.

The model is deliberately free of I/O and clocks: every method takes ``now`` (seconds on a
monotonic clock) so the unit tests can walk a machine through power-on, POST and boot without
sleeping, and the worker's event loop stays the only place that knows the real time.

Power follows the IPMI chassis-control semantics a real server shows a provisioning system:
power-on starts a POST that lasts ``post_seconds``; only then is the machine "booted" and the
one-time boot-device override consumed.  Power cycle and hard reset of a machine that is off
are refused (the IPMI specification recommends completion code 0xD5 for that), and an ACPI
soft-off only has an effect once an operating system is running, i.e. after POST.

Boot hooks are the seam for the later PXE path: a hook is called when POST ends with the boot
device the firmware used, so a future hook can fetch an iPXE script from ``--boot-url`` and run
a deploy agent without this module learning about HTTP.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict


class Phase(enum.StrEnum):
    """Where the machine is in its power/boot life cycle."""

    OFF = "off"
    POST = "post"
    BOOTED = "booted"


#: Boot devices by name, as reported by the control API.  ``default`` means "no override":
#: the firmware uses its own boot order.
BOOT_DEVICES = ("default", "pxe", "disk", "safe", "cdrom", "bios", "floppy")


class PowerStateError(Exception):
    """The requested power action does not apply in the machine's present state."""


class MachineSnapshot(TypedDict):
    """One machine as the control API reports it (JSON-ready)."""

    name: str
    index: int
    bmc_address: str
    bmc_port: int
    power: str
    phase: str
    boot_device: str
    persistent: bool
    efi: bool
    booted_from: str | None
    power_on_count: int
    boot_count: int
    last_action: str
    last_change: float
    power_changed_at: float
    faults: dict[str, object]
    sessions: int
    sessions_opened: int


#: Called when POST completes: (machine, boot device used, now).
BootHook = Callable[["VirtualMachine", str, float], None]


@dataclass
class VirtualMachine:
    """State of one simulated server; mutated by IPMI commands and the out-of-band button."""

    name: str
    index: int
    post_seconds: float = 0.0
    power_on: bool = False
    phase: Phase = Phase.OFF
    post_until: float | None = None
    boot_device: str = "default"
    persistent: bool = False
    efi: bool = False
    booted_from: str | None = None
    power_on_count: int = 0
    boot_count: int = 0
    last_action: str = "created"
    last_change: float = 0.0
    power_changed_at: float = 0.0
    boot_hooks: list[BootHook] = field(default_factory=list)

    # -- power ---------------------------------------------------------------------------

    def press_power_on(self, now: float, source: str = "ipmi") -> bool:
        """Switch on and start POST; returns False if it was already on."""
        self.refresh(now)
        if self.power_on:
            self._note(now, f"{source} power on (already on)", power=False)
            return False
        self.power_on = True
        self.power_on_count += 1
        self._start_post(now)
        self._note(now, f"{source} power on", power=True)
        return True

    def press_power_off(self, now: float, source: str = "ipmi") -> bool:
        """Cut power immediately (no OS shutdown); returns False if it was already off."""
        self.refresh(now)
        if not self.power_on:
            self._note(now, f"{source} power off (already off)", power=False)
            return False
        self._switch_off()
        self._note(now, f"{source} power off", power=True)
        return True

    def power_cycle(self, now: float, source: str = "ipmi") -> None:
        """Off, then on again: a new POST and a new power-on."""
        self.refresh(now)
        if not self.power_on:
            raise PowerStateError("power cycle needs the machine on")
        self.power_on_count += 1
        self._start_post(now)
        self._note(now, f"{source} power cycle", power=True)

    def hard_reset(self, now: float, source: str = "ipmi") -> None:
        """Reset button: POST again without dropping power."""
        self.refresh(now)
        if not self.power_on:
            raise PowerStateError("reset needs the machine on")
        self._start_post(now)
        self._note(now, f"{source} reset", power=False)

    def soft_off(self, now: float, source: str = "ipmi") -> bool:
        """ACPI power-button event: only a booted OS reacts to it, and then powers off."""
        self.refresh(now)
        if self.phase is not Phase.BOOTED:
            self._note(now, f"{source} soft off ignored ({self.phase})", power=False)
            return False
        self._switch_off()
        self._note(now, f"{source} soft off", power=True)
        return True

    # -- boot device ---------------------------------------------------------------------

    def set_boot_device(
        self, device: str, now: float, *, persistent: bool = False, efi: bool = False
    ) -> None:
        """Set (or with ``default`` clear) the boot-device override."""
        if device not in BOOT_DEVICES:
            raise ValueError(f"unknown boot device {device!r}")
        self.refresh(now)
        self.boot_device = device
        self.persistent = persistent if device != "default" else False
        self.efi = efi if device != "default" else False
        self._note(now, f"boot device {device}{' persistent' if self.persistent else ''}")

    # -- time ----------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Finish POST if its time is up; call before reading or changing state."""
        if self.phase is Phase.POST and self.post_until is not None and now >= self.post_until:
            self._finish_post(now)

    def next_deadline(self) -> float | None:
        """When :meth:`refresh` will next change something (for the event loop's timer)."""
        return self.post_until if self.phase is Phase.POST else None

    # -- internals -----------------------------------------------------------------------

    def _start_post(self, now: float) -> None:
        self.booted_from = None
        self.phase = Phase.POST
        self.post_until = now + self.post_seconds
        self.refresh(now)  # a zero POST delay boots at once

    def _finish_post(self, now: float) -> None:
        device = self.boot_device
        self.phase = Phase.BOOTED
        self.post_until = None
        self.boot_count += 1
        self.booted_from = "disk" if device == "default" else device
        if not self.persistent:
            # The override applies to one boot only, as on real firmware.
            self.boot_device = "default"
            self.efi = False
        self.last_change = now
        for hook in list(self.boot_hooks):
            hook(self, self.booted_from, now)

    def _switch_off(self) -> None:
        self.power_on = False
        self.phase = Phase.OFF
        self.post_until = None
        self.booted_from = None

    def _note(self, now: float, action: str, *, power: bool | None = None) -> None:
        self.last_action = action
        self.last_change = now
        if power:
            self.power_changed_at = now
