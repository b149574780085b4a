"""Node names, MACs and the inventory file (checked against the real Node message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from rackcells.sim.inventory import (
    node_mac,
    node_name,
    plan_nodes,
    rack_label,
    rack_trait,
    remove_stale_inventory,
    write_inventory,
)
from rackcells.v1 import node_pb2


def test_names_are_padded_rfc1123_labels() -> None:
    assert node_name("r1-n", 7, 1000) == "r1-n0007"
    assert node_name("r1-n", 12345, 20000) == "r1-n12345"
    with pytest.raises(ValueError, match="RFC 1123"):
        node_name("x" * 60 + "-", 1, 10)


@pytest.mark.parametrize("prefix", ["R1-n", "1r-", "r1_n", ""])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        plan_nodes(prefix, 3, 16000)


def test_macs_are_unique_deterministic_and_rack_specific() -> None:
    rack1 = {node_mac("r1-n", i) for i in range(1, 5001)}
    rack2 = {node_mac("r2-n", i) for i in range(1, 5001)}
    assert len(rack1) == len(rack2) == 5000
    assert not rack1 & rack2
    assert node_mac("r1-n", 42) == node_mac("r1-n", 42)
    first_octet = int(node_mac("r1-n", 1).split(":")[0], 16)
    assert first_octet & 0b10 and not first_octet & 0b01  # locally administered unicast


def test_rack_trait_from_prefix() -> None:
    assert rack_label("r1-n") == "r1"
    assert rack_label("lab-r3-node") == "lab-r3"
    assert rack_label("rack7") == "rack7"
    assert rack_trait("lab-r3") == "CUSTOM_RACK_LAB_R3"


def test_plan_rejects_ports_past_65535() -> None:
    with pytest.raises(ValueError, match="65535"):
        plan_nodes("r1-n", 100, 65500)


def test_inventory_parses_as_rackcells_nodes(tmp_path: Path) -> None:
    path = tmp_path / "r1.json"
    nodes = plan_nodes("r1-n", 3, 16000)
    write_inventory(path, nodes, address="127.0.0.1", username="admin", password="pw", rack="r1")
    records = json.loads(path.read_text())
    assert [r["name"] for r in records] == ["r1-n0001", "r1-n0002", "r1-n0003"]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    parsed = [json_format.ParseDict(r, node_pb2.Node()) for r in records]
    node = parsed[1]
    assert node.name == "r1-n0002"
    assert node.resource_class == "baremetal"
    assert list(node.traits) == ["CUSTOM_RACK_R1"]
    assert (node.properties.cpus, node.properties.memory_mb) == (32, 262144)
    assert (node.properties.local_gb, node.properties.cpu_arch) == (960, "x86_64")
    assert (node.bmc.driver, node.bmc.address, node.bmc.port) == ("ipmi", "127.0.0.1", 16001)
    assert (node.bmc.username, node.bmc.password) == ("admin", "pw")
    assert node.ports[0].mac == node_mac("r1-n", 2)
    assert node.ports[0].pxe_enabled
    assert dict(node.extra) == {"sim_index": "2"}


def test_stale_inventory_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text("[]")
    remove_stale_inventory(path)
    remove_stale_inventory(path)  # absent is fine
    assert not path.exists()
