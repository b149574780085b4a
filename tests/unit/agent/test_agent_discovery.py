"""Where the agent finds its MACs and its leaf when the command line does not say."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackcells import agent


def fake_sys_net(root: Path, interfaces: dict[str, str]) -> Path:
    for name, address in interfaces.items():
        (root / name).mkdir(parents=True)
        (root / name / "address").write_text(address + "\n")
    return root


def test_macs_skip_loopback_and_interfaces_without_an_address(tmp_path: Path) -> None:
    root = fake_sys_net(
        tmp_path,
        {
            "lo": "00:00:00:00:00:00",
            "eno1": "02:AA:BB:CC:DD:01",
            "eno2": "02:aa:bb:cc:dd:02",
            "tun0": "00:00:00:00:00:00",
            "wg0": "",
        },
    )
    assert agent.discover_macs(root) == ["02:aa:bb:cc:dd:01", "02:aa:bb:cc:dd:02"]
    assert agent.discover_macs(tmp_path / "missing") == []


def test_kernel_command_line_gives_endpoint_and_boot_mac() -> None:
    params = agent.kernel_params(
        "BOOT_IMAGE=/vmlinuz quiet rackcells.agent_endpoint=10.0.0.1:7001 BOOTIF=02:AA:bb:cc:dd:01"
    )
    assert params[agent.ENDPOINT_PARAM] == "10.0.0.1:7001"
    assert params["quiet"] == ""
    assert agent._boot_mac(params) == "02:aa:bb:cc:dd:01"
    assert agent._boot_mac({"BOOTIF": "01-02-aa-bb-cc-dd-01"}) == "02:aa:bb:cc:dd:01"
    assert agent._boot_mac({"BOOTIF": "${mac}"}) is None
    assert agent._boot_mac({}) is None


def test_cli_without_an_endpoint_anywhere_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(agent, "PROC_CMDLINE", tmp_path / "cmdline")
    monkeypatch.setattr(agent, "_read_cmdline", lambda: {})
    with pytest.raises(SystemExit) as exit_info:
        agent.main(["--mac", "02:aa:bb:cc:dd:01"])
    assert exit_info.value.code == 2
    assert "no --endpoint" in capsys.readouterr().err
