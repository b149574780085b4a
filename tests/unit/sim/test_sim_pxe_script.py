"""Reading the leaf's iPXE scripts, and fetching them the way a NIC would."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from rackcells.sim.fakeleaf import FakeLeaf, running_fake_leaf
from rackcells.sim.machine import BootScript
from rackcells.sim.pxe import fetch_script, parse_script, script_url

DEPLOY = """#!ipxe
# rackcells deploy cells/rack-1/nodes/r1-n0001
kernel http://127.0.0.1:8080/agent/vmlinuz rackcells.agent_endpoint=127.0.0.1:7001 BOOTIF=${mac}
initrd http://127.0.0.1:8080/agent/initramfs
boot
"""
DISK = """#!ipxe
# rackcells boot-from-disk cells/rack-1/nodes/r1-n0001
sanboot --no-describe --drive 0x80
"""


def test_the_two_scripts_of_the_contract() -> None:
    deploy = parse_script(DEPLOY)
    assert (deploy.kind, deploy.agent_endpoint) == (BootScript.DEPLOY, "127.0.0.1:7001")
    assert parse_script(DISK).kind is BootScript.DISK
    assert parse_script(DISK.replace("\n", "\r\n")).kind is BootScript.DISK


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html>not found</html>",
        "#!ipxe\nchain http://elsewhere/boot.ipxe\n",
        "#!ipxe\nkernel http://x/vmlinuz rackcells.agent_endpoint= quiet\nboot\n",
    ],
)
def test_anything_else_is_unknown(text: str) -> None:
    assert parse_script(text).kind is BootScript.UNKNOWN


def test_script_url_uses_the_colon_notation() -> None:
    assert script_url("http://h:1/", "02:AA:bb:cc:dd:01") == "http://h:1/boot/02:aa:bb:cc:dd:01"


@pytest.fixture(scope="module")
def leaf() -> Iterator[FakeLeaf]:
    with running_fake_leaf() as fake:
        yield fake


def test_fetch_known_unknown_and_unreachable(leaf: FakeLeaf) -> None:
    leaf.boot_from_disk("n1", "02:00:00:00:00:01")
    assert fetch_script(leaf.boot_url, "02:00:00:00:00:01", 5).kind is BootScript.DISK
    missing = fetch_script(leaf.boot_url, "02:00:00:00:00:02", 5)
    assert (missing.kind, missing.detail.split(" for ")[0]) == (BootScript.ERROR, "HTTP 404")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = fetch_script(f"http://127.0.0.1:{port}", "02:00:00:00:00:01", 5)
    assert refused.kind is BootScript.ERROR
    assert "refused" in refused.detail.lower()
