"""common.node_checks: MAC normalisation, update-mask paths and node checks, without a DB."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument
from common.keys import normalize_mac
from common.node_checks import MUTABLE_PATHS, check_node, normalize_paths
from rackcells.v1 import node_pb2


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def good_node(**fields: object) -> node_pb2.Node:
    values: dict[str, object] = {
        "resource_class": "baremetal",
        "bmc": node_pb2.BmcInfo(driver="ipmi", address="10.0.0.1"),
    }
    values.update(fields)
    return node_pb2.Node(**values)


@pytest.mark.parametrize(
    "text",
    [
        "aa:bb:cc:dd:ee:ff",
        "AA:BB:CC:DD:EE:FF",
        "AA-BB-CC-DD-EE-FF",
        "aa-bb-cc-dd-ee-ff",
        "aabb.ccdd.eeff",
        "AABB.CCDD.EEFF",
        "aabbccddeeff",
        "AABBCCDDEEFF",
        "  aa:bb:cc:dd:ee:ff\n",
    ],
)
def test_every_common_mac_spelling_normalises_to_lower_case_colon_form(text: str) -> None:
    assert normalize_mac(text) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa:bb:cc:dd:ee:fg",
        "aa:bb-cc:dd:ee:ff",
        "aa:bb:cc:dd:eeff",
        "aabbccddeef",
        "aabbccddeeff0",
        "aa bb cc dd ee ff",
        "aabb.ccdd.eeff.0011",
        "aabb:ccdd:eeff",
        "aabbccddeeff..",
        "..aabbccddeeff",
        "aab.bccd.deeff",
        "a.abbccddeef.f",
    ],
)
def test_anything_else_is_not_a_mac(text: str) -> None:
    """Only colon, hyphen, dotted-quad (aabb.ccdd.eeff) and bare forms are MACs; dots in any
    other place make the text invalid."""
    assert normalize_mac(text) is None


def test_star_expands_to_every_mutable_path() -> None:
    assert normalize_paths(["*"]) == set(MUTABLE_PATHS)


def test_known_paths_and_sub_paths_are_accepted() -> None:
    paths = [
        "resource_class",
        "properties.cpus",
        "bmc.password",
        "instance_info.image_url",
        "ports",
    ]
    assert normalize_paths(paths) == set(paths)


@pytest.mark.parametrize(
    "paths",
    [
        [],
        ["uid"],
        ["name"],
        ["provision_state"],
        ["bmc.password_set"],
        ["traits.x"],
        ["properties."],
        [""],
    ],
)
def test_unknown_or_missing_paths_are_rejected_naming_update_mask(paths: list[str]) -> None:
    with pytest.raises(InvalidArgument) as exc:
        normalize_paths(paths)
    assert fields_of(exc) == ["update_mask"]


def test_check_node_returns_the_normalised_macs_in_order() -> None:
    node = good_node(
        ports=[node_pb2.Port(mac="AA-BB-CC-DD-EE-02"), node_pb2.Port(mac="aabbccddee01")]
    )
    assert check_node(node, None) == ["aa:bb:cc:dd:ee:02", "aa:bb:cc:dd:ee:01"]


def test_check_node_reports_every_violation_at_once_with_request_paths() -> None:
    node = good_node(
        resource_class="has space",
        traits=["lower", "OK_TRAIT", "OK_TRAIT"],
        ports=[node_pb2.Port(mac="zz"), node_pb2.Port(mac="aa:bb:cc:dd:ee:ff")],
        properties=node_pb2.NodeProperties(cpus=-1, memory_mb=-1, local_gb=-1, cpu_arch="X86"),
        bmc=node_pb2.BmcInfo(driver="ipmi", port=70000, username="u" * 65, password="p" * 256),
        instance_info=node_pb2.InstanceInfo(image_url="file:///x", image_checksum="sha256:ABC"),
        maintenance_reason="r" * 1025,
    )
    with pytest.raises(InvalidArgument) as exc:
        check_node(node, None)
    assert set(fields_of(exc)) == {
        "node.resource_class",
        "node.traits[0]",
        "node.traits",
        "node.ports[0].mac",
        "node.properties.cpus",
        "node.properties.memory_mb",
        "node.properties.local_gb",
        "node.properties.cpu_arch",
        "node.bmc.address",
        "node.bmc.port",
        "node.bmc.username",
        "node.bmc.password",
        "node.instance_info.image_url",
        "node.instance_info.image_checksum",
        "node.maintenance_reason",
    }
    assert "p" * 256 not in exc.value.message


def test_a_mac_twice_in_one_request_is_a_violation_on_the_second() -> None:
    node = good_node(
        ports=[node_pb2.Port(mac="aa:bb:cc:dd:ee:ff"), node_pb2.Port(mac="AABBCCDDEEFF")]
    )
    with pytest.raises(InvalidArgument) as exc:
        check_node(node, None)
    assert fields_of(exc) == ["node.ports[1].mac"]


def test_check_node_only_checks_the_selected_paths() -> None:
    node = good_node(traits=["lower"], ports=[node_pb2.Port(mac="zz")], resource_class="gpu")
    assert check_node(node, {"resource_class"}) == []
    with pytest.raises(InvalidArgument) as exc:
        check_node(node, {"traits"})
    assert fields_of(exc) == ["node.traits[0]"]


def test_a_sub_path_selects_only_that_sub_field() -> None:
    node = good_node(properties=node_pb2.NodeProperties(cpus=4, memory_mb=-1))
    assert check_node(node, {"properties.cpus"}) == []
    with pytest.raises(InvalidArgument):
        check_node(node, {"properties"})


def test_the_fake_driver_needs_no_bmc_address_but_ipmi_does() -> None:
    assert check_node(good_node(bmc=node_pb2.BmcInfo(driver="fake")), None) == []
    with pytest.raises(InvalidArgument) as exc:
        check_node(good_node(bmc=node_pb2.BmcInfo(driver="ipmi")), None)
    assert fields_of(exc) == ["node.bmc.address"]


def test_extra_is_limited_in_keys_and_value_size() -> None:
    assert check_node(good_node(extra={f"k{i}": "v" for i in range(64)}), None) == []
    with pytest.raises(InvalidArgument) as exc:
        check_node(good_node(extra={f"k{i}": "v" for i in range(65)}), None)
    assert fields_of(exc) == ["node.extra"]
    with pytest.raises(InvalidArgument) as exc:
        check_node(good_node(extra={"big": "x" * 4097}), None)
    assert fields_of(exc) == ["node.extra['big']"]


def test_a_valid_checksum_and_image_url_pass() -> None:
    info = node_pb2.InstanceInfo(
        image_url="https://img/x.qcow2", image_checksum="sha256:" + "0f" * 32
    )
    assert check_node(good_node(instance_info=info), None) == []


def test_the_prefix_is_used_for_every_field_path() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_node(good_node(traits=["bad trait"]), None, prefix="nodes[3]")
    assert fields_of(exc) == ["nodes[3].traits[0]"]
