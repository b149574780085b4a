"""The fake driver behaves like a small, obedient rack of BMCs, and fails on request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from leaf_cell.drivers.base import (
    BmcAccess,
    BootDevice,
    Driver,
    DriverError,
    DriverErrorKind,
    PowerAction,
    PowerState,
)
from leaf_cell.drivers.fake import FakeCall, FakeDriver

PASSWORD = "fake-Secret-99"


def access(port: int = 16001, password: str = PASSWORD, username: str = "admin") -> BmcAccess:
    return BmcAccess("fake", "127.0.0.1", port, username, password)


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver()


def test_is_a_driver_with_both_interfaces(fake: FakeDriver) -> None:
    driver: Driver = fake
    assert driver.name == "fake"
    assert driver.power is fake and driver.boot is fake


def test_unknown_bmc_starts_powered_off_without_override(fake: FakeDriver) -> None:
    bmc = access()
    assert fake.power.get_power(bmc, 1.0) is PowerState.OFF
    assert fake.boot.get_boot_device(bmc, 1.0) == (None, False)


def test_power_actions_change_state_and_return_the_result(fake: FakeDriver) -> None:
    bmc = access()
    assert fake.power.set_power(bmc, PowerAction.ON, 1.0) is PowerState.ON
    assert fake.power.get_power(bmc, 1.0) is PowerState.ON
    assert fake.power.set_power(bmc, PowerAction.REBOOT, 1.0) is PowerState.ON
    assert fake.power.set_power(bmc, PowerAction.SOFT_OFF, 1.0) is PowerState.OFF
    assert fake.power.set_power(bmc, PowerAction.REBOOT, 1.0) is PowerState.ON
    assert fake.power.set_power(bmc, PowerAction.OFF, 1.0) is PowerState.OFF
    assert fake.bmc("127.0.0.1", 16001).power_ons == 3


def test_boot_device_is_remembered_with_persistence(fake: FakeDriver) -> None:
    bmc = access()
    fake.boot.set_boot_device(bmc, BootDevice.PXE, False, 1.0)
    assert fake.boot.get_boot_device(bmc, 1.0) == (BootDevice.PXE, False)
    fake.boot.set_boot_device(bmc, BootDevice.DISK, True, 1.0)
    assert fake.boot.get_boot_device(bmc, 1.0) == (BootDevice.DISK, True)


def test_port_zero_is_the_ipmi_default_port(fake: FakeDriver) -> None:
    fake.press_power("10.0.0.5", 623, on=True)
    bmc = BmcAccess("fake", "10.0.0.5", 0, "admin", PASSWORD)
    assert fake.power.get_power(bmc, 1.0) is PowerState.ON


def test_out_of_band_power_change_is_seen(fake: FakeDriver) -> None:
    bmc = access()
    fake.power.set_power(bmc, PowerAction.ON, 1.0)
    fake.press_power("127.0.0.1", 16001, on=False)
    assert fake.power.get_power(bmc, 1.0) is PowerState.OFF


@pytest.mark.parametrize("kind", list(DriverErrorKind))
def test_injected_fault_raises_that_kind_until_cleared(
    fake: FakeDriver, kind: DriverErrorKind
) -> None:
    bmc = access()
    fake.set_fault("127.0.0.1", 16001, kind)
    for call in (
        lambda: fake.power.get_power(bmc, 2.0),
        lambda: fake.power.set_power(bmc, PowerAction.ON, 2.0),
        lambda: fake.boot.set_boot_device(bmc, BootDevice.PXE, False, 2.0),
        lambda: fake.boot.get_boot_device(bmc, 2.0),
    ):
        with pytest.raises(DriverError) as caught:
            call()
        assert caught.value.kind is kind
        assert "127.0.0.1:16001" in str(caught.value)
    assert fake.bmc("127.0.0.1", 16001).power is PowerState.OFF  # failed calls change nothing
    fake.set_fault("127.0.0.1", 16001, None)
    assert fake.power.set_power(bmc, PowerAction.ON, 2.0) is PowerState.ON


def test_fault_for_a_number_of_calls_heals_itself(fake: FakeDriver) -> None:
    bmc = access()
    fake.set_fault("127.0.0.1", 16001, DriverErrorKind.TIMEOUT, calls=2)
    for _ in range(2):
        with pytest.raises(DriverError):
            fake.power.get_power(bmc, 1.0)
    assert fake.power.get_power(bmc, 1.0) is PowerState.OFF


def test_timeout_fault_message_names_the_callers_timeout(fake: FakeDriver) -> None:
    fake.set_fault("127.0.0.1", 16001, DriverErrorKind.TIMEOUT)
    with pytest.raises(DriverError, match=r"did not answer within 5\.0 s"):
        fake.power.get_power(access(), 5.0)


def test_registered_password_must_match(fake: FakeDriver) -> None:
    fake.add_bmc("127.0.0.1", 16001, username="admin", password=PASSWORD, power=PowerState.ON)
    assert fake.power.get_power(access(), 1.0) is PowerState.ON
    with pytest.raises(DriverError) as caught:
        fake.power.get_power(access(password="not-the-password"), 1.0)
    assert caught.value.kind is DriverErrorKind.AUTH
    assert str(caught.value) == (
        "BMC 127.0.0.1:16001 rejected the credentials of user 'admin' (wrong password)"
    )
    with pytest.raises(DriverError, match="unknown user"):
        fake.power.get_power(access(username="root"), 1.0)


def test_strict_driver_does_not_invent_bmcs() -> None:
    fake = FakeDriver(strict=True)
    with pytest.raises(DriverError) as caught:
        fake.power.get_power(access(), 1.0)
    assert caught.value.kind is DriverErrorKind.UNREACHABLE
    fake.add_bmc("127.0.0.1", 16001)
    assert fake.power.get_power(access(), 1.0) is PowerState.OFF


def test_calls_are_recorded_including_failures(fake: FakeDriver) -> None:
    bmc = access()
    fake.power.set_power(bmc, PowerAction.REBOOT, 1.0)
    fake.set_fault("127.0.0.1", 16001, DriverErrorKind.PROTOCOL)
    with pytest.raises(DriverError):
        fake.boot.set_boot_device(bmc, BootDevice.PXE, True, 1.0)
    assert fake.calls == [
        FakeCall("set_power", "127.0.0.1", 16001, "reboot"),
        FakeCall("set_boot_device", "127.0.0.1", 16001, "pxe persistent"),
    ]


def test_forget_is_recorded_and_reset_clears_everything(fake: FakeDriver) -> None:
    fake.power.get_power(access(), 1.0)
    fake.forget(access(port=0))
    assert fake.forgotten == [("127.0.0.1", 623)]
    fake.reset()
    assert fake.calls == [] and fake.forgotten == []
    with pytest.raises(KeyError):
        fake.bmc("127.0.0.1", 16001)


def test_closed_driver_refuses_calls(fake: FakeDriver) -> None:
    fake.close()
    assert fake.closed
    with pytest.raises(RuntimeError):
        fake.power.get_power(access(), 1.0)


def test_non_positive_timeout_is_a_programming_error(fake: FakeDriver) -> None:
    with pytest.raises(ValueError):
        fake.power.get_power(access(), 0)


def test_concurrent_calls_are_safe(fake: FakeDriver) -> None:
    bmcs = [access(port=20000 + i) for i in range(50)]

    def cycle(bmc: BmcAccess) -> PowerState:
        fake.power.set_power(bmc, PowerAction.ON, 1.0)
        return fake.power.get_power(bmc, 1.0)

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(cycle, bmcs * 4)) == {PowerState.ON}
    assert len(fake.calls) == 400
