"""What a simulated NIC's PXE firmware does: fetch the node's iPXE script and read it.

In a real rack DHCP hands a PXE-booting node the address of its boot server, iPXE then fetches
``{boot server}/boot/{mac}`` over HTTP; here ``--boot-url`` stands in for DHCP.  The simulator
does not run iPXE, so it recognises the two scripts a leaf cell writes and nothing more::

    #!ipxe
    # rackcells deploy cells/rack-1/nodes/r1-n0001
    kernel http://…/agent/vmlinuz rackcells.agent_endpoint=HOST:PORT BOOTIF=${mac}
    initrd http://…/agent/initramfs
    boot

    #!ipxe
    # rackcells boot-from-disk cells/rack-1/nodes/r1-n0001
    sanboot --no-describe --drive 0x80

The kernel and initramfs are not downloaded: in a real ramdisk they *are* the deploy agent, and
the simulator runs that agent's code directly.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import quote

from rackcells.sim.machine import BootScript

ENDPOINT_PARAM = "rackcells.agent_endpoint="
_MAX_SCRIPT = 64 * 1024
# Never through an http_proxy from the environment: the boot server is on the rack's network.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ScriptOutcome:
    """The script's meaning; ``agent_endpoint`` for deploys, ``detail`` says why it failed."""

    kind: BootScript
    agent_endpoint: str = ""
    detail: str = ""


def script_url(boot_url: str, mac: str) -> str:
    """``{boot_url}/boot/aa:bb:cc:dd:ee:ff``."""
    return f"{boot_url.rstrip('/')}/boot/{quote(mac.lower(), safe=':')}"


def parse_script(text: str) -> ScriptOutcome:
    """Classify an iPXE script as a deploy (with the agent's endpoint), a disk boot or neither."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#!ipxe":
        return ScriptOutcome(BootScript.UNKNOWN, detail="not an iPXE script")
    for line in lines[1:]:
        words = line.split()
        if words[0] == "kernel":
            for word in words[1:]:
                if word.startswith(ENDPOINT_PARAM) and len(word) > len(ENDPOINT_PARAM):
                    return ScriptOutcome(BootScript.DEPLOY, word[len(ENDPOINT_PARAM) :])
        elif words[0] == "sanboot":
            return ScriptOutcome(BootScript.DISK)
    return ScriptOutcome(BootScript.UNKNOWN, detail="neither a deploy nor a disk boot")


def fetch_script(boot_url: str, mac: str, timeout: float) -> ScriptOutcome:
    """GET the node's script; a 404, a refused connection or a timeout is an ``error``."""
    url = script_url(boot_url, mac)
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body: bytes = response.read(_MAX_SCRIPT)
    except urllib.error.HTTPError as err:
        err.close()
        return ScriptOutcome(BootScript.ERROR, detail=f"HTTP {err.code} for {url}")
    except urllib.error.URLError as err:
        return ScriptOutcome(BootScript.ERROR, detail=f"{err.reason} for {url}")
    except (OSError, HTTPException) as err:
        return ScriptOutcome(BootScript.ERROR, detail=f"{err} for {url}")
    return parse_script(body.decode("utf-8", "replace"))
