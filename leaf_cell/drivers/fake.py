"""The ``fake`` driver: in-memory BMCs for tests of everything above the drivers.

Deterministic and instant: no sockets, no sleeps, no threads.  A fake BMC is keyed by address
and port (0 meaning 623, as for real BMCs), holds a power state and a boot-device override, and
answers like a real one would, including failures: inject any :class:`DriverErrorKind` with
:meth:`FakeDriver.set_fault` (optionally for a number of calls only), flip the power behind the
conductor's back with :meth:`FakeDriver.press_power`, or register a BMC with a required
password so a mismatch raises ``AUTH``.  Errors carry the same messages the ``ipmi`` driver
produces, built by :mod:`leaf_cell.drivers.errors`.

Unknown BMCs spring into existence (powered off) on first use, unless the driver is ``strict``,
in which case they are ``UNREACHABLE``.  Every call is recorded in :attr:`FakeDriver.calls`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from leaf_cell.drivers.base import (
    DEFAULT_IPMI_PORT,
    BmcAccess,
    BootDevice,
    BootInterface,
    PowerAction,
    PowerInterface,
    PowerState,
)
from leaf_cell.drivers.errors import (
    DriverError,
    DriverErrorKind,
    auth_failed,
    protocol_error,
    timed_out,
    unreachable,
    unsupported,
)

__all__ = ["FakeBmc", "FakeCall", "FakeDriver"]

_Key = tuple[str, int]


@dataclass
class FakeBmc:
    """The state of one fake BMC and its machine (a copy when handed out)."""

    address: str
    port: int
    power: PowerState = PowerState.OFF
    boot_device: BootDevice | None = None
    persistent: bool = False
    username: str | None = None
    """Required user name, or None for any."""
    password: str | None = None
    """Required password, or None for any."""
    fault: DriverErrorKind | None = None
    fault_calls_left: int | None = None
    """How many more calls the fault applies to (None: until cleared)."""
    power_ons: int = 0
    """How often the machine was switched on or power-cycled through the driver."""


@dataclass(frozen=True)
class FakeCall:
    """One call the fake driver received (failed ones included)."""

    method: str
    address: str
    port: int
    argument: str = ""


def _key(address: str, port: int) -> _Key:
    return (address, port or DEFAULT_IPMI_PORT)


class FakeDriver:
    """In-memory BMCs; satisfies :class:`~leaf_cell.drivers.base.Driver`."""

    name = "fake"

    def __init__(self, *, strict: bool = False) -> None:
        self.power: PowerInterface = self
        self.boot: BootInterface = self
        self.strict = strict
        self._lock = threading.Lock()
        self._bmcs: dict[_Key, FakeBmc] = {}
        self._calls: list[FakeCall] = []
        self._forgotten: list[_Key] = []
        self._closed = False

    # -- test controls --------------------------------------------------------------------

    def add_bmc(
        self,
        address: str,
        port: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        power: PowerState = PowerState.OFF,
    ) -> FakeBmc:
        """Register (or replace) a BMC; ``username``/``password`` None accept anything."""
        key = _key(address, port)
        bmc = FakeBmc(key[0], key[1], power=power, username=username, password=password)
        with self._lock:
            self._bmcs[key] = bmc
            return replace(bmc)

    def bmc(self, address: str, port: int = 0) -> FakeBmc:
        """A copy of a BMC's state; KeyError if it was never registered or used."""
        with self._lock:
            return replace(self._bmcs[_key(address, port)])

    def set_fault(
        self, address: str, port: int, kind: DriverErrorKind | None, *, calls: int | None = None
    ) -> None:
        """Make every call to this BMC fail with ``kind`` (None heals it).

        With ``calls``, the fault applies to that many calls and then clears itself.
        """
        if calls is not None and calls < 1:
            raise ValueError("calls must be at least 1")
        with self._lock:
            bmc = self._get_or_create(_key(address, port))
            bmc.fault = kind
            bmc.fault_calls_left = calls if kind is not None else None

    def press_power(self, address: str, port: int, on: bool) -> None:
        """Switch the machine on or off out of band (someone pressed the button)."""
        with self._lock:
            bmc = self._get_or_create(_key(address, port))
            bmc.power = PowerState.ON if on else PowerState.OFF

    @property
    def calls(self) -> list[FakeCall]:
        """Every call received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    @property
    def forgotten(self) -> list[tuple[str, int]]:
        """Address and port of every :meth:`forget`, in order."""
        with self._lock:
            return list(self._forgotten)

    @property
    def closed(self) -> bool:
        return self._closed

    def reset(self) -> None:
        """Forget all BMCs, faults and recorded calls (between tests)."""
        with self._lock:
            self._bmcs.clear()
            self._calls.clear()
            self._forgotten.clear()
            self._closed = False

    # -- PowerInterface -------------------------------------------------------------------

    def get_power(self, bmc: BmcAccess, timeout: float) -> PowerState:
        with self._lock:
            return self._enter(bmc, "get_power", "", "get power state", timeout).power

    def set_power(self, bmc: BmcAccess, action: PowerAction, timeout: float) -> PowerState:
        action = PowerAction(action)
        with self._lock:
            state = self._enter(bmc, "set_power", action.value, f"power {action.value}", timeout)
            if action is PowerAction.ON:
                if state.power is PowerState.OFF:
                    state.power_ons += 1
                state.power = PowerState.ON
            elif action is PowerAction.REBOOT:
                state.power_ons += 1
                state.power = PowerState.ON
            else:  # OFF and SOFT_OFF: the fake's operating system always obeys at once
                state.power = PowerState.OFF
            return state.power

    # -- BootInterface --------------------------------------------------------------------

    def set_boot_device(
        self, bmc: BmcAccess, device: BootDevice, persistent: bool, timeout: float
    ) -> None:
        device = BootDevice(device)
        argument = f"{device.value}{' persistent' if persistent else ''}"
        with self._lock:
            state = self._enter(bmc, "set_boot_device", argument, "set boot device", timeout)
            state.boot_device = device
            state.persistent = persistent

    def get_boot_device(self, bmc: BmcAccess, timeout: float) -> tuple[BootDevice | None, bool]:
        with self._lock:
            state = self._enter(bmc, "get_boot_device", "", "get boot device", timeout)
            return state.boot_device, state.persistent

    # -- Driver ---------------------------------------------------------------------------

    def forget(self, bmc: BmcAccess) -> None:
        with self._lock:
            self._forgotten.append(_key(bmc.address, bmc.port))

    def close(self) -> None:
        self._closed = True

    # -- internals (called with the lock held) --------------------------------------------

    def _get_or_create(self, key: _Key) -> FakeBmc:
        bmc = self._bmcs.get(key)
        if bmc is None:
            bmc = self._bmcs[key] = FakeBmc(*key)
        return bmc

    def _enter(
        self, access: BmcAccess, method: str, argument: str, operation: str, timeout: float
    ) -> FakeBmc:
        """Record the call and return the BMC's live state, or raise its fault."""
        if self._closed:
            raise RuntimeError("the fake driver is closed")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        key = _key(access.address, access.port)
        self._calls.append(FakeCall(method, key[0], key[1], argument))
        bmc = self._bmcs.get(key)
        if bmc is None:
            if self.strict:
                raise unreachable(access, "no such BMC")
            bmc = self._bmcs[key] = FakeBmc(*key)
        if bmc.fault is not None:
            kind = bmc.fault
            if bmc.fault_calls_left is not None:
                bmc.fault_calls_left -= 1
                if bmc.fault_calls_left <= 0:
                    bmc.fault, bmc.fault_calls_left = None, None
            raise _fault(access, kind, operation, timeout)
        if bmc.username is not None and access.username != bmc.username:
            raise auth_failed(access, "unknown user")
        if bmc.password is not None and access.password != bmc.password:
            raise auth_failed(access, "wrong password")
        return bmc


def _fault(access: BmcAccess, kind: DriverErrorKind, operation: str, timeout: float) -> DriverError:
    if kind is DriverErrorKind.AUTH:
        return auth_failed(access, "wrong password")
    if kind is DriverErrorKind.TIMEOUT:
        return timed_out(access, timeout)
    if kind is DriverErrorKind.UNSUPPORTED:
        return unsupported(access, operation)
    if kind is DriverErrorKind.UNREACHABLE:
        return unreachable(access, "injected fault")
    return protocol_error(access, operation, "injected fault")
