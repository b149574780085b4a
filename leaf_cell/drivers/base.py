"""What the conductor sees of a BMC driver: small interfaces and the values they exchange.

The conductor talks to every BMC through :class:`Driver` (one object per driver name, from
:func:`leaf_cell.drivers.load_driver`), which offers a :class:`PowerInterface` and a
:class:`BootInterface`.  The interfaces are deliberately blocking and thread-safe: the conductor
runs them in a bounded thread pool, many BMCs at once and now and then two calls for the same
BMC, and a driver must keep that correct and cheap (shared sessions, per-BMC ordering).

Every method takes the caller's ``timeout`` in seconds and returns or raises
:class:`~leaf_cell.drivers.errors.DriverError` within roughly that time, whatever the BMC does.
A ``TIMEOUT`` from :meth:`PowerInterface.set_power` means the outcome is unknown (the command
may still have reached the BMC); read the state back before deciding anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

# Re-exported: the conductor imports everything BMC-related from this module.
from leaf_cell.drivers.errors import DriverError, DriverErrorKind

__all__ = [
    "DEFAULT_IPMI_PORT",
    "BmcAccess",
    "BootDevice",
    "BootInterface",
    "Driver",
    "DriverError",
    "DriverErrorKind",
    "PowerAction",
    "PowerInterface",
    "PowerState",
]

DEFAULT_IPMI_PORT = 623
"""RMCP's well-known UDP port, used when a node's BMC port is 0."""


class PowerState(StrEnum):
    """The machine's power as the BMC reports it; the values are the database's strings."""

    ON = "ON"
    OFF = "OFF"


class PowerAction(StrEnum):
    """What :meth:`PowerInterface.set_power` can be asked to do."""

    ON = "on"
    """Switch on (nothing happens if it is on already)."""
    OFF = "off"
    """Cut power at once, without asking the operating system (nothing if it is off)."""
    REBOOT = "reboot"
    """Power-cycle a machine that is on, switch on one that is off: it ends up booting."""
    SOFT_OFF = "soft_off"
    """Ask the operating system to shut down (ACPI power button); may take a while or be ignored."""


class BootDevice(StrEnum):
    """Boot-device overrides the provisioning flows need."""

    PXE = "pxe"
    DISK = "disk"


@dataclass(frozen=True)
class BmcAccess:
    """How to reach one BMC.  ``repr``/``str`` never show the password.

    ``port`` 0 means the IPMI default (623).  The password is plaintext here because the driver
    must send it; keep the object out of logs anyway (``dataclasses.asdict`` would expose it).
    """

    driver: str
    address: str
    port: int
    username: str
    password: str = field(repr=False)

    @property
    def effective_port(self) -> int:
        """The UDP port to use: ``port``, or 623 when it is 0."""
        return self.port or DEFAULT_IPMI_PORT

    @property
    def endpoint(self) -> str:
        """``address:port`` as operators write it (``[v6]:port`` for IPv6 literals)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.effective_port}"


class PowerInterface(Protocol):
    """Reading and changing a machine's power through its BMC."""

    def get_power(self, bmc: BmcAccess, timeout: float) -> PowerState:
        """The current power state."""
        ...

    def set_power(self, bmc: BmcAccess, action: PowerAction, timeout: float) -> PowerState:
        """Carry out ``action``; returns the state it leads to (``ON`` for ``REBOOT``).

        For ``SOFT_OFF`` the returned state is what the BMC reports right after the request,
        usually still ``ON``: the operating system shuts down in its own time.
        """
        ...


class BootInterface(Protocol):
    """The boot-device override a machine's firmware uses on its next boot(s)."""

    def set_boot_device(
        self, bmc: BmcAccess, device: BootDevice, persistent: bool, timeout: float
    ) -> None:
        """Boot from ``device`` next time (or every time, when ``persistent``)."""
        ...

    def get_boot_device(self, bmc: BmcAccess, timeout: float) -> tuple[BootDevice | None, bool]:
        """``(device, persistent)``; ``device`` is None when there is no override we model."""
        ...


class Driver(Protocol):
    """One driver, as :func:`leaf_cell.drivers.load_driver` returns it: both interfaces."""

    name: str
    power: PowerInterface
    boot: BootInterface

    def forget(self, bmc: BmcAccess) -> None:
        """Drop any cached session for this BMC's address and port (credentials changed,
        node deleted); returns at once, logging out in the background if needed."""
        ...

    def close(self) -> None:
        """Log out of all sessions and stop background work; the driver is unusable after."""
        ...
