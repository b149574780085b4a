"""The virtual machine behind each simulated BMC.

The model is deliberately free of I/O and clocks: every method takes ``now`` (seconds on a
monotonic clock) so the unit tests can walk a machine through power-on, POST and boot without
sleeping, and the worker's event loop stays the only place that knows the real time.

Power follows the IPMI chassis-control semantics a real server shows a provisioning system:
power-on starts a POST that lasts ``post_seconds``; only then is the machine "booted" and the
one-time boot-device override consumed.  Power cycle and hard reset of a machine that is off
are refused (the IPMI specification recommends completion code 0xD5 for that), and an ACPI
soft-off only has an effect once an operating system is running, i.e. after POST.

Boot hooks are the seam for the PXE path (:mod:`rackcells.sim.netboot`): a hook is called when
POST ends with the boot device the firmware used, and halt hooks when the running software
stops (power off, cycle, reset), so the network boot can fetch an iPXE script and run a deploy
agent in threads without this module learning about HTTP.  Its results come back through the
``pxe_*``/``agent_*`` methods, which take the ``boot_epoch`` the work started in: an answer for
a boot the machine has since left (it was switched off or reset) changes nothing.
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
    #: POST chose PXE and the firmware is fetching its iPXE script from the boot server.
    PXE = "pxe"
    #: No usable boot script (404, no server, unknown script): the NIC gave up, as real ones do.
    PXE_FAILED = "pxe_failed"
    #: The deploy agent's ramdisk runs.
    AGENT = "agent"
    #: The agent finished (and reported); the ramdisk idles until the machine is restarted.
    AGENT_DONE = "agent_done"


#: Phases with an operating system that reacts to an ACPI power-button event.
_OS_RUNNING = frozenset({Phase.BOOTED, Phase.AGENT, Phase.AGENT_DONE})


class BootScript(enum.StrEnum):
    """What the boot server's iPXE script told the firmware to do."""

    DEPLOY = "deploy"
    DISK = "disk"
    UNKNOWN = "unknown"
    ERROR = "error"


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
    last_boot_script: str | None
    pxe_failures: int
    agent_runs: int
    deploys: int
    deploy_error: str | None
    disk_bytes: int
    disk_sha256: str | None
    booted_image: str | None


#: Called when POST completes: (machine, boot device used, now).
BootHook = Callable[["VirtualMachine", str, float], None]
#: Called when the running software stops (power off, power cycle, reset): (machine, now).
HaltHook = Callable[["VirtualMachine", float], None]


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
    halt_hooks: list[HaltHook] = field(default_factory=list)
    #: A boot server is configured: a PXE boot enters :attr:`Phase.PXE` instead of "booted".
    network_boot: bool = False
    #: Counts POSTs and power-offs; work started in an older epoch is stale.
    boot_epoch: int = 0
    last_boot_script: BootScript | None = None
    pxe_failures: int = 0
    agent_runs: int = 0
    deploys: int = 0
    deploy_error: str | None = None
    #: What the virtual disk holds: bytes written by the last agent and their checksum.
    disk_bytes: int = 0
    disk_sha256: str | None = None
    #: Checksum of the disk contents the machine last booted from, if any were written.
    booted_image: str | None = None

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
        self._switch_off(now)
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
        if self.phase not in _OS_RUNNING:
            self._note(now, f"{source} soft off ignored ({self.phase})", power=False)
            return False
        self._switch_off(now)
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

    # -- network boot (results of work done outside the event loop) ----------------------

    def pxe_loaded(self, epoch: int, script: BootScript, now: float, detail: str = "") -> bool:
        """The firmware got (or failed to get) its boot script; False if that boot is over."""
        if epoch != self.boot_epoch or self.phase is not Phase.PXE:
            return False
        self.last_boot_script = script
        if script is BootScript.DEPLOY:
            self.phase = Phase.AGENT
            self.agent_runs += 1
            self.deploy_error = None
        elif script is BootScript.DISK:
            self._boot_disk()
        else:
            self.phase = Phase.PXE_FAILED
            self.booted_from = None
            self.pxe_failures += 1
        self._note(now, f"pxe {script}{f': {detail}' if detail else ''}")
        return True

    def disk_changed(self, size: int, sha256: str | None) -> None:
        """The virtual disk now holds ``size`` bytes (it does, powered or not)."""
        self.disk_bytes = size
        self.disk_sha256 = sha256

    def agent_finished(self, epoch: int, error: str, now: float) -> bool:
        """The agent reported (``error`` empty on success); False if that boot is over."""
        if epoch != self.boot_epoch or self.phase is not Phase.AGENT:
            return False
        self.phase = Phase.AGENT_DONE
        self.deploy_error = error or None
        if not error:
            self.deploys += 1
        self._note(now, "agent done" if not error else "agent failed")
        return True

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
        self._halt(now)
        self.booted_from = None
        self.booted_image = None
        self.phase = Phase.POST
        self.post_until = now + self.post_seconds
        self.refresh(now)  # a zero POST delay boots at once

    def _finish_post(self, now: float) -> None:
        device = self.boot_device
        self.phase = Phase.PXE if device == "pxe" and self.network_boot else Phase.BOOTED
        self.post_until = None
        self.boot_count += 1
        self.booted_from = "disk" if device == "default" else device
        if self.booted_from == "disk":
            self._boot_disk()
        if not self.persistent:
            # The override applies to one boot only, as on real firmware.
            self.boot_device = "default"
            self.efi = False
        self.last_change = now
        for hook in list(self.boot_hooks):
            hook(self, self.booted_from, now)

    def _boot_disk(self) -> None:
        self.phase = Phase.BOOTED
        self.booted_from = "disk"
        self.booted_image = self.disk_sha256

    def _halt(self, now: float) -> None:
        """Whatever ran stops; pending network-boot work belongs to a past epoch."""
        self.boot_epoch += 1
        for hook in list(self.halt_hooks):
            hook(self, now)

    def _switch_off(self, now: float) -> None:
        self._halt(now)
        self.power_on = False
        self.phase = Phase.OFF
        self.post_until = None
        self.booted_from = None
        self.booted_image = None

    def _note(self, now: float, action: str, *, power: bool | None = None) -> None:
        self.last_action = action
        self.last_change = now
        if power:
            self.power_changed_at = now
