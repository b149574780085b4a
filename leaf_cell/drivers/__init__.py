"""BMC drivers: how the leaf cell reads and changes a server's power and boot device.

A node's ``bmc.driver`` names its driver; :func:`load_driver` returns that driver's one
process-wide instance, so every node behind the same driver shares its sessions, threads and
keepalives.  ``ipmi`` talks IPMI 2.0 (lanplus) through pyghmi; ``fake`` keeps BMCs in memory for
tests.  The interfaces are in :mod:`leaf_cell.drivers.base`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from leaf_cell.drivers.base import (
    BmcAccess,
    BootDevice,
    BootInterface,
    Driver,
    DriverError,
    DriverErrorKind,
    PowerAction,
    PowerInterface,
    PowerState,
)

__all__ = [
    "BmcAccess",
    "BootDevice",
    "BootInterface",
    "Driver",
    "DriverError",
    "DriverErrorKind",
    "PowerAction",
    "PowerInterface",
    "PowerState",
    "available_drivers",
    "load_driver",
]

# name -> (module, class); modules are imported on first use so that tests of the fake driver
# never load pyghmi and its cryptography stack.
_DRIVERS: dict[str, tuple[str, str]] = {
    "ipmi": ("leaf_cell.drivers.ipmi", "IpmiDriver"),
    "fake": ("leaf_cell.drivers.fake", "FakeDriver"),
}
_instances: dict[str, Driver] = {}
_lock = threading.Lock()


def available_drivers() -> tuple[str, ...]:
    """The driver names :func:`load_driver` accepts, sorted."""
    return tuple(sorted(_DRIVERS))


def load_driver(name: str) -> Driver:
    """The process-wide driver called ``name``; ValueError for a name nobody registered.

    A driver that was closed is replaced by a new instance on the next call.
    """
    try:
        module_name, class_name = _DRIVERS[name]
    except KeyError:
        known = ", ".join(available_drivers())
        raise ValueError(f"unknown BMC driver {name!r} (known: {known})") from None
    with _lock:
        driver = _instances.get(name)
        if driver is None or getattr(driver, "closed", False):
            factory: Callable[[], Driver] = getattr(
                importlib.import_module(module_name), class_name
            )
            driver = _instances[name] = factory()
        return driver
