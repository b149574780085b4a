"""Node names, MAC addresses and the inventory file of a simulated rack.

The inventory is what ``rackcells node import FILE`` enrols unchanged: a JSON list with one
``rackcells.v1.Node`` object per simulated machine (protobuf JSON names, ``name`` is the node
id).  Everything in it is derived from the name prefix and the node index, so restarting a
simulator with the same options yields the same nodes, and racks with different prefixes never
share a MAC (the MAC carries a hash of the prefix and the index itself).

The file is written atomically once every BMC listens; its existence is the "ready" signal
scripts and tests wait for, so a stale copy is removed before the workers start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

MAX_NODES = 65535  # the MAC keeps the index in two bytes
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]*$")
_MAX_LABEL = 63

#: Hardware figures every simulated node reports.
NODE_PROPERTIES: dict[str, object] = {
    "cpus": 32,
    "memoryMb": 262144,
    "localGb": 960,
    "cpuArch": "x86_64",
}


@dataclass(frozen=True)
class NodePlan:
    """Identity of one simulated machine: who it is and where its BMC listens."""

    index: int
    name: str
    port: int
    mac: str


def validate_prefix(prefix: str) -> None:
    """Refuse prefixes that cannot start an RFC 1123 label."""
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"name prefix {prefix!r} must start with a lower-case letter and hold only "
            "lower-case letters, digits and hyphens"
        )


def node_name(prefix: str, index: int, count: int) -> str:
    """``r1-n0007``: prefix plus a zero-padded 1-based index (at least four digits)."""
    width = max(4, len(str(count)))
    name = f"{prefix}{index:0{width}d}"
    if len(name) > _MAX_LABEL or not _LABEL.match(name):
        raise ValueError(f"node name {name!r} is not an RFC 1123 label")
    return name


def node_mac(prefix: str, index: int) -> str:
    """Locally administered unicast MAC ``02:HH:HH:HH:II:II``.

    Three bytes hash the prefix (racks apart), two bytes hold the index (nodes apart within a
    rack, guaranteed rather than probable).
    """
    if not 0 <= index <= MAX_NODES:
        raise ValueError(f"index {index} does not fit a MAC")
    digest = hashlib.sha256(prefix.encode()).digest()[:3]
    octets = bytes([0x02]) + digest + index.to_bytes(2, "big")
    return ":".join(f"{b:02x}" for b in octets)


def rack_label(prefix: str) -> str:
    """Rack part of a prefix: ``r1-n`` -> ``r1`` (drop the trailing node component)."""
    stem = prefix.rstrip("-")
    head, sep, _ = stem.rpartition("-")
    return head if sep and head else stem


def rack_trait(rack: str) -> str:
    """Scheduling trait naming the rack, e.g. ``CUSTOM_RACK_R1``."""
    return "CUSTOM_RACK_" + re.sub(r"[^A-Z0-9]", "_", rack.upper())


def plan_nodes(prefix: str, count: int, port_base: int) -> list[NodePlan]:
    """All machines of a rack, index 1..count on ports port_base.. port_base+count-1."""
    validate_prefix(prefix)
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"node count must be 1..{MAX_NODES}")
    if port_base < 1 or port_base + count - 1 > 65535:
        raise ValueError("BMC ports must lie within 1..65535")
    return [
        NodePlan(
            index=i,
            name=node_name(prefix, i, count),
            port=port_base + i - 1,
            mac=node_mac(prefix, i),
        )
        for i in range(1, count + 1)
    ]


def node_record(
    node: NodePlan, *, address: str, username: str, password: str, trait: str
) -> dict[str, object]:
    """One inventory entry in ``rackcells.v1.Node`` JSON form."""
    return {
        "name": node.name,
        "resource_class": "baremetal",
        "traits": [trait],
        "properties": dict(NODE_PROPERTIES),
        "bmc": {
            "driver": "ipmi",
            "address": address,
            "port": node.port,
            "username": username,
            "password": password,
        },
        "ports": [{"mac": node.mac, "pxeEnabled": True}],
        "extra": {"sim_index": str(node.index)},
    }


def write_inventory(
    path: Path,
    nodes: list[NodePlan],
    *,
    address: str,
    username: str,
    password: str,
    rack: str,
) -> None:
    """Write the inventory atomically (temporary file in the same directory, then rename)."""
    trait = rack_trait(rack)
    records = [
        node_record(n, address=address, username=username, password=password, trait=trait)
        for n in nodes
    ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(records, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_inventory(path: Path) -> None:
    """Delete an inventory left by an earlier run, so its existence keeps meaning "ready"."""
    path.unlink(missing_ok=True)
