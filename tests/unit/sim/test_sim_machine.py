"""The virtual machine model: power, POST, boot-device override, hooks (no clock needed)."""

from __future__ import annotations

import pytest

from rackcells.sim.machine import Phase, PowerStateError, VirtualMachine


def machine(post: float = 10.0) -> VirtualMachine:
    return VirtualMachine(name="r1-n0001", index=1, post_seconds=post)


def test_power_on_goes_through_post_before_booting() -> None:
    vm = machine(post=10.0)
    assert vm.press_power_on(100.0)
    assert (vm.power_on, vm.phase, vm.power_on_count) == (True, Phase.POST, 1)
    vm.refresh(109.9)
    assert vm.phase is Phase.POST
    assert vm.next_deadline() == 110.0
    vm.refresh(110.0)
    assert (vm.phase, vm.boot_count, vm.booted_from) == (Phase.BOOTED, 1, "disk")
    assert vm.next_deadline() is None


def test_zero_post_delay_boots_at_once() -> None:
    vm = machine(post=0.0)
    vm.press_power_on(5.0)
    assert vm.phase is Phase.BOOTED


def test_power_on_when_on_and_off_when_off_change_nothing() -> None:
    vm = machine()
    assert not vm.press_power_off(1.0)
    vm.press_power_on(2.0)
    assert not vm.press_power_on(3.0)
    assert vm.power_on_count == 1
    assert vm.power_changed_at == 2.0
    assert vm.press_power_off(4.0)
    assert (vm.power_on, vm.phase, vm.post_until) == (False, Phase.OFF, None)


def test_cycle_and_reset_need_power_and_restart_post() -> None:
    vm = machine(post=1.0)
    with pytest.raises(PowerStateError):
        vm.power_cycle(0.0)
    with pytest.raises(PowerStateError):
        vm.hard_reset(0.0)
    vm.press_power_on(0.0)
    vm.refresh(2.0)
    vm.power_cycle(3.0)
    assert (vm.phase, vm.power_on_count) == (Phase.POST, 2)
    vm.refresh(4.0)
    vm.hard_reset(5.0)
    assert (vm.phase, vm.power_on_count, vm.boot_count) == (Phase.POST, 2, 2)


def test_soft_off_needs_a_booted_os() -> None:
    vm = machine(post=1.0)
    vm.press_power_on(0.0)
    assert not vm.soft_off(0.5)  # still in POST: nothing listens to ACPI
    assert vm.power_on
    assert vm.soft_off(1.5)
    assert not vm.power_on


def test_one_time_override_is_consumed_and_persistent_one_kept() -> None:
    vm = machine(post=1.0)
    vm.set_boot_device("pxe", 0.0)
    vm.press_power_on(0.0)
    vm.refresh(1.0)
    assert (vm.booted_from, vm.boot_device) == ("pxe", "default")
    vm.set_boot_device("pxe", 2.0, persistent=True, efi=True)
    vm.hard_reset(2.0)
    vm.refresh(3.0)
    assert (vm.booted_from, vm.boot_device, vm.persistent, vm.efi) == ("pxe", "pxe", True, True)


def test_default_clears_persistence_and_unknown_device_is_refused() -> None:
    vm = machine()
    vm.set_boot_device("disk", 0.0, persistent=True)
    vm.set_boot_device("default", 1.0, persistent=True)
    assert (vm.boot_device, vm.persistent) == ("default", False)
    with pytest.raises(ValueError, match="unknown boot device"):
        vm.set_boot_device("tape", 2.0)


def test_power_off_during_post_means_no_boot() -> None:
    vm = machine(post=5.0)
    vm.set_boot_device("pxe", 0.0)
    vm.press_power_on(0.0)
    vm.press_power_off(1.0)
    vm.refresh(10.0)
    assert (vm.phase, vm.boot_count, vm.boot_device) == (Phase.OFF, 0, "pxe")


def test_boot_hooks_run_when_post_ends() -> None:
    calls: list[tuple[str, str, float]] = []
    vm = machine(post=2.0)
    vm.boot_hooks.append(lambda m, device, now: calls.append((m.name, device, now)))
    vm.set_boot_device("pxe", 0.0)
    vm.press_power_on(0.0)
    vm.refresh(1.0)
    assert calls == []
    vm.refresh(2.5)
    vm.refresh(3.0)
    assert calls == [("r1-n0001", "pxe", 2.5)]


def test_last_action_names_the_source() -> None:
    vm = machine()
    vm.press_power_on(0.0, source="button")
    assert vm.last_action == "button power on"
    assert vm.last_change == 0.0
