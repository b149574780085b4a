"""NodeService.CreateNode at a leaf, on SQLite and PostgreSQL.

Each rejected call must return its code, name the bad field in a ``google.rpc.BadRequest`` where
the input is at fault, and leave the database exactly as it was.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from leafkit import (
    PARENT,
    LeafClient,
    error_info,
    expect_error,
    node_name,
    ports,
    valid_node,
    violation_fields,
)

from rackcells.v1 import node_pb2, node_service_pb2

CHECKSUM = "sha256:" + "ab" * 32


def create_request(
    node_id: str, node: node_pb2.Node, parent: str = PARENT
) -> node_service_pb2.CreateNodeRequest:
    return node_service_pb2.CreateNodeRequest(parent=parent, node_id=node_id, node=node)


def test_create_returns_the_enrolled_node_with_name_uid_etag_and_every_given_field(
    leaf: LeafClient,
) -> None:
    node = valid_node(
        resource_class="gpu-large",
        traits=["CUSTOM_RACK_R1", "HW_CPU_X86_AVX512F"],
        properties=node_pb2.NodeProperties(
            cpus=64, memory_mb=262144, local_gb=960, cpu_arch="x86_64"
        ),
        bmc=node_pb2.BmcInfo(
            driver="ipmi", address="10.1.0.21", port=6230, username="root", password="create-pw-1"
        ),
        ports=ports("52:54:00:00:00:01"),
        maintenance=True,
        maintenance_reason="new disk",
        instance_info=node_pb2.InstanceInfo(
            image_url="http://images/ubuntu.img", image_checksum=CHECKSUM, root_device="/dev/sda"
        ),
        extra={"owner": "team-a", "asset": "A-1234"},
    )
    created = leaf.create("node-1", node)

    assert created.name == "cells/rack-1/nodes/node-1"
    assert uuid.UUID(created.uid)
    assert created.provision_state == node_pb2.PROVISION_STATE_ENROLL
    assert created.target_provision_state == node_pb2.PROVISION_STATE_UNSPECIFIED
    assert created.etag
    assert created.HasField("create_time")
    assert created.HasField("update_time")
    assert created.resource_class == "gpu-large"
    assert sorted(created.traits) == ["CUSTOM_RACK_R1", "HW_CPU_X86_AVX512F"]
    assert created.properties == node.properties
    assert created.bmc.driver == "ipmi"
    assert created.bmc.address == "10.1.0.21"
    assert created.bmc.port == 6230
    assert created.bmc.username == "root"
    assert created.bmc.password == ""
    assert created.bmc.password_set is True
    assert [(p.mac, p.pxe_enabled) for p in created.ports] == [("52:54:00:00:00:01", True)]
    assert created.maintenance is True
    assert created.maintenance_reason == "new disk"
    assert created.instance_info == node.instance_info
    assert dict(created.extra) == {"owner": "team-a", "asset": "A-1234"}
    assert leaf.get("node-1") == created


def test_create_without_password_reports_password_not_set(leaf: LeafClient) -> None:
    created = leaf.create("node-1", valid_node())
    assert created.bmc.password == ""
    assert created.bmc.password_set is False


def test_create_defaults_the_bmc_driver_to_ipmi_and_the_resource_class_to_baremetal(
    leaf: LeafClient,
) -> None:
    node = valid_node(resource_class="", bmc=node_pb2.BmcInfo(address="10.1.0.22"))
    created = leaf.create("node-1", node)
    assert created.bmc.driver == "ipmi"
    assert created.resource_class == "baremetal"


def test_create_normalises_every_mac_spelling_to_lower_case_colon_form(leaf: LeafClient) -> None:
    node = valid_node(
        ports=[
            node_pb2.Port(mac="AA-BB-CC-DD-EE-01", pxe_enabled=True),
            node_pb2.Port(mac="aabb.ccdd.ee02", pxe_enabled=False),
            node_pb2.Port(mac="AABBCCDDEE03", pxe_enabled=False),
            node_pb2.Port(mac=" Aa:Bb:Cc:Dd:Ee:04 ", pxe_enabled=True),
        ]
    )
    created = leaf.create("node-1", node)
    expected = [
        ("aa:bb:cc:dd:ee:01", True),
        ("aa:bb:cc:dd:ee:02", False),
        ("aa:bb:cc:dd:ee:03", False),
        ("aa:bb:cc:dd:ee:04", True),
    ]
    assert [(p.mac, p.pxe_enabled) for p in created.ports] == expected
    assert [(p.mac, p.pxe_enabled) for p in leaf.get("node-1").ports] == expected


def test_create_ignores_output_only_fields_sent_by_the_caller(leaf: LeafClient) -> None:
    node = valid_node(
        name="cells/rack-1/nodes/other",
        uid="11111111-1111-4111-8111-111111111111",
        provision_state=node_pb2.PROVISION_STATE_ACTIVE,
        power_state=node_pb2.POWER_STATE_ON,
        last_error="boom",
        allocation="cells/rack-1/allocations/a",
        lock=node_pb2.NodeLock(holder="someone", purpose="stealing"),
        etag="made-up",
    )
    created = leaf.create("node-1", node)
    assert created.name == "cells/rack-1/nodes/node-1"
    assert created.uid != "11111111-1111-4111-8111-111111111111"
    assert created.provision_state == node_pb2.PROVISION_STATE_ENROLL
    assert created.power_state == node_pb2.POWER_STATE_UNSPECIFIED
    assert created.last_error == ""
    assert created.allocation == ""
    assert not created.HasField("lock")
    assert created.etag != "made-up"


def test_create_response_equals_a_following_get_even_with_unsorted_traits(leaf: LeafClient) -> None:
    """AIP-133: Create returns the resource as stored; a Get right after must return the same."""
    created = leaf.create(
        "node-1", valid_node(traits=["CUSTOM_ZULU", "CUSTOM_ALPHA", "CUSTOM_MIKE"])
    )
    got = leaf.get("node-1")
    assert list(created.traits) == list(got.traits), "Create and Get order the traits differently"
    assert got == created


def test_each_create_gets_its_own_uid_and_etag(leaf: LeafClient) -> None:
    a = leaf.create("node-a")
    b = leaf.create("node-b")
    assert a.uid != b.uid
    assert a.etag != b.etag


@pytest.mark.parametrize(
    "node_id",
    ["Node-1", "node_1", "n" * 64, "", "-node", "node-", "node.1", "node/1"],
    ids=[
        "upper-case",
        "underscore",
        "64-chars",
        "empty",
        "leading-hyphen",
        "trailing-hyphen",
        "dot",
        "slash",
    ],
)
def test_create_with_a_bad_node_id_is_invalid_argument_naming_node_id(
    leaf: LeafClient, node_id: str
) -> None:
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.CreateNode,
        create_request(node_id, valid_node()),
    )
    assert violation_fields(err) == ["node_id"]
    assert "node_id" in err.details()
    assert error_info(err).reason == "INVALID_ARGUMENT"
    assert error_info(err).domain == "rackcells.io"
    assert leaf.snapshot() == before


def test_create_accepts_a_63_character_node_id(leaf: LeafClient) -> None:
    created = leaf.create("n" * 63)
    assert created.name == node_name("n" * 63)


def _bad_mac(node: node_pb2.Node) -> None:
    node.ports.add(mac="52:54:00:zz:00:01")


def _short_mac(node: node_pb2.Node) -> None:
    node.ports.add(mac="52:54:00:00:01")


def _twice_the_same_mac(node: node_pb2.Node) -> None:
    node.ports.add(mac="52:54:00:00:00:09")
    node.ports.add(mac="52-54-00-00-00-09")


def _ipmi_without_address(node: node_pb2.Node) -> None:
    node.bmc.driver = "ipmi"
    node.bmc.address = ""


def _lower_case_trait(node: node_pb2.Node) -> None:
    node.traits.append("custom_lower")


def _duplicate_trait(node: node_pb2.Node) -> None:
    node.traits.extend(["CUSTOM_A", "CUSTOM_A"])


def _negative_cpus(node: node_pb2.Node) -> None:
    node.properties.cpus = -1


def _negative_memory(node: node_pb2.Node) -> None:
    node.properties.memory_mb = -1


def _bad_checksum(node: node_pb2.Node) -> None:
    node.instance_info.image_checksum = "md5:abc"


def _ftp_image(node: node_pb2.Node) -> None:
    node.instance_info.image_url = "ftp://images/ubuntu.img"


def _unknown_driver(node: node_pb2.Node) -> None:
    node.bmc.driver = "redfish"


def _bmc_port_out_of_range(node: node_pb2.Node) -> None:
    node.bmc.port = 70000


def _bad_resource_class(node: node_pb2.Node) -> None:
    node.resource_class = "gpu large"


def _bad_cpu_arch(node: node_pb2.Node) -> None:
    node.properties.cpu_arch = "X86 64"


def _long_password(node: node_pb2.Node) -> None:
    node.bmc.password = "p" * 256


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (_bad_mac, "node.ports[0].mac"),
        (_short_mac, "node.ports[0].mac"),
        (_twice_the_same_mac, "node.ports[1].mac"),
        (_ipmi_without_address, "node.bmc.address"),
        (_lower_case_trait, "node.traits[0]"),
        (_duplicate_trait, "node.traits"),
        (_negative_cpus, "node.properties.cpus"),
        (_negative_memory, "node.properties.memory_mb"),
        (_bad_checksum, "node.instance_info.image_checksum"),
        (_ftp_image, "node.instance_info.image_url"),
        (_unknown_driver, "node.bmc.driver"),
        (_bmc_port_out_of_range, "node.bmc.port"),
        (_bad_resource_class, "node.resource_class"),
        (_bad_cpu_arch, "node.properties.cpu_arch"),
        (_long_password, "node.bmc.password"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else v,
)
def test_create_with_a_bad_field_is_invalid_argument_naming_that_field_and_creates_nothing(
    leaf: LeafClient, spoil, field: str
) -> None:
    before = leaf.snapshot()
    node = valid_node()
    spoil(node)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.CreateNode, create_request("node-1", node)
    )
    assert violation_fields(err) == [field]
    assert field in err.details()
    assert leaf.snapshot() == before


def test_create_with_several_problems_lists_them_all(leaf: LeafClient) -> None:
    node = valid_node(ports=ports("52:54:00:00:00:01", "not-a-mac"), traits=["bad trait"])
    node.properties.cpus = -4
    node.instance_info.image_checksum = "sha1:00"
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.CreateNode, create_request("Bad_Id", node)
    )
    fields = violation_fields(err)
    assert set(fields) == {
        "node_id",
        "node.ports[1].mac",
        "node.traits[0]",
        "node.properties.cpus",
        "node.instance_info.image_checksum",
    }
    for field in fields:
        assert field in err.details()
    assert leaf.count_nodes() == 0


def test_create_in_another_cell_is_not_found_and_creates_nothing(leaf: LeafClient) -> None:
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        leaf.stub.CreateNode,
        create_request("node-1", valid_node(), parent="cells/rack-2"),
    )
    assert "rack-2" in err.details()
    assert leaf.count_nodes() == 0


@pytest.mark.parametrize(
    "parent",
    ["", "rack-1", "cells/", "cells/Rack_1", "cells/rack-1/nodes", "cell/rack-1", "cells/-"],
)
def test_create_with_a_malformed_parent_is_invalid_argument_naming_parent(
    leaf: LeafClient, parent: str
) -> None:
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.CreateNode,
        create_request("node-1", valid_node(), parent=parent),
    )
    assert violation_fields(err) == ["parent"]
    assert leaf.count_nodes() == 0


def test_create_with_a_taken_node_id_is_already_exists_and_leaves_the_first_node_alone(
    leaf: LeafClient,
) -> None:
    first = leaf.create(
        "node-1", valid_node(ports=ports("52:54:00:00:00:01"), resource_class="one")
    )
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        leaf.stub.CreateNode,
        create_request(
            "node-1", valid_node(ports=ports("52:54:00:00:00:02"), resource_class="two")
        ),
    )
    assert "cells/rack-1/nodes/node-1" in err.details()
    assert leaf.snapshot() == before
    assert leaf.get("node-1") == first


@pytest.mark.parametrize("spelling", ["52:54:00:00:00:01", "52-54-00-00-00-01", "5254.0000.0001"])
def test_create_with_a_mac_of_another_node_is_already_exists_naming_that_node(
    leaf: LeafClient, spelling: str
) -> None:
    leaf.create("owner", valid_node(ports=ports("52:54:00:00:00:01")))
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        leaf.stub.CreateNode,
        create_request("newcomer", valid_node(ports=ports("52:54:00:00:00:02", spelling))),
    )
    assert "cells/rack-1/nodes/owner" in err.details()
    assert "52:54:00:00:00:01" in err.details()
    info = error_info(err)
    assert info.reason == "ALREADY_EXISTS"
    assert info.metadata["node"] == "cells/rack-1/nodes/owner"
    assert info.metadata["mac"] == "52:54:00:00:00:01"
    assert leaf.snapshot() == before
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        leaf.stub.GetNode,
        node_service_pb2.GetNodeRequest(name=node_name("newcomer")),
    )


def test_a_fake_driver_node_needs_no_bmc_address(leaf: LeafClient) -> None:
    created = leaf.create("node-1", valid_node(bmc=node_pb2.BmcInfo(driver="fake")))
    assert created.bmc.driver == "fake"
    assert created.bmc.address == ""


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda n: setattr(n, "maintenance_reason", "disk\x00swap"), "node.maintenance_reason"),
        (lambda n: setattr(n.bmc, "username", "ad\x00min"), "node.bmc.username"),
    ],
    ids=["maintenance_reason", "bmc.username"],
)
def test_create_with_a_nul_character_in_a_text_field_is_invalid_argument_on_every_backend(
    leaf: LeafClient, spoil, field: str
) -> None:
    """PostgreSQL cannot store NUL in text: the leaf must reject it as the caller's mistake
    (INVALID_ARGUMENT naming the field, never INTERNAL), and identically on SQLite."""
    node = valid_node()
    spoil(node)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.CreateNode, create_request("node-1", node)
    )
    assert violation_fields(err) == [field]
    assert leaf.count_nodes() == 0
