"""The machine model's network-boot phases, driven by hand (no threads, no clock)."""

from __future__ import annotations

from rackcells.sim.machine import BootScript, Phase, VirtualMachine


def netboot_machine() -> tuple[VirtualMachine, list[str]]:
    vm = VirtualMachine(name="r1-n0001", index=1, post_seconds=1.0, network_boot=True)
    events: list[str] = []
    vm.boot_hooks.append(lambda m, device, _now: events.append(f"boot {device} {m.phase}"))
    vm.halt_hooks.append(lambda m, _now: events.append(f"halt {m.boot_epoch}"))
    return vm, events


def pxe_boot(vm: VirtualMachine, now: float = 0.0) -> int:
    vm.set_boot_device("pxe", now)
    vm.press_power_on(now)
    vm.refresh(now + 1.0)
    assert vm.phase is Phase.PXE
    return vm.boot_epoch


def test_pxe_boot_waits_for_its_script_and_consumes_the_override() -> None:
    vm, events = netboot_machine()
    epoch = pxe_boot(vm)
    assert events == ["halt 1", "boot pxe pxe"]
    assert (vm.booted_from, vm.boot_device) == ("pxe", "default")

    assert vm.pxe_loaded(epoch, BootScript.DEPLOY, 2.0)
    assert (vm.phase, vm.agent_runs, vm.last_boot_script) == (Phase.AGENT, 1, "deploy")
    vm.disk_changed(4096, "sha256:" + "a" * 64)
    assert vm.agent_finished(epoch, "", 3.0)
    assert (vm.phase, vm.deploys, vm.deploy_error) == (Phase.AGENT_DONE, 1, None)


def test_results_for_a_boot_the_machine_left_change_nothing() -> None:
    vm, events = netboot_machine()
    epoch = pxe_boot(vm)
    vm.pxe_loaded(epoch, BootScript.DEPLOY, 2.0)
    vm.press_power_off(3.0)
    assert events[-1] == "halt 2"
    assert not vm.agent_finished(epoch, "", 4.0)
    assert (vm.phase, vm.deploys) == (Phase.OFF, 0)

    new_epoch = pxe_boot(vm, 5.0)
    assert not vm.pxe_loaded(epoch, BootScript.DISK, 6.0)
    assert vm.phase is Phase.PXE
    assert vm.pxe_loaded(new_epoch, BootScript.ERROR, 6.0, "HTTP 404")
    assert (vm.phase, vm.pxe_failures, vm.booted_from) == (Phase.PXE_FAILED, 1, None)
    assert "HTTP 404" in vm.last_action


def test_disk_boots_record_the_image_on_the_disk() -> None:
    vm, _ = netboot_machine()
    epoch = pxe_boot(vm)
    vm.pxe_loaded(epoch, BootScript.DEPLOY, 1.0)
    vm.disk_changed(10, "sha256:" + "b" * 64)
    vm.agent_finished(epoch, "", 2.0)

    vm.set_boot_device("disk", 3.0)
    vm.power_cycle(3.0)
    vm.refresh(4.0)
    assert (vm.phase, vm.booted_from, vm.booted_image) == (
        Phase.BOOTED,
        "disk",
        "sha256:" + "b" * 64,
    )

    vm.set_boot_device("pxe", 5.0)
    vm.hard_reset(5.0)
    vm.refresh(6.0)
    assert vm.booted_image is None
    assert vm.pxe_loaded(vm.boot_epoch, BootScript.DISK, 6.0)
    assert (vm.phase, vm.booted_from, vm.booted_image) == (
        Phase.BOOTED,
        "disk",
        "sha256:" + "b" * 64,
    )


def test_a_failed_agent_is_not_a_deploy_and_the_ramdisk_obeys_soft_off() -> None:
    vm, _ = netboot_machine()
    epoch = pxe_boot(vm)
    assert not vm.soft_off(1.5)  # firmware fetching a script ignores ACPI
    vm.pxe_loaded(epoch, BootScript.DEPLOY, 2.0)
    assert vm.agent_finished(epoch, "checksum mismatch", 3.0)
    assert (vm.phase, vm.deploys, vm.deploy_error) == (Phase.AGENT_DONE, 0, "checksum mismatch")
    assert vm.soft_off(4.0)
    assert vm.phase is Phase.OFF


def test_without_a_boot_server_pxe_boots_at_once() -> None:
    vm = VirtualMachine(name="r1-n0001", index=1, post_seconds=0.0)
    vm.set_boot_device("pxe", 0.0)
    vm.press_power_on(0.0)
    assert (vm.phase, vm.booted_from) == (Phase.BOOTED, "pxe")
