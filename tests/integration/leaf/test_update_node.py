"""NodeService.UpdateNode at a leaf: field masks, etags, MAC uniqueness, write-only password."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from leafkit import (
    LeafClient,
    error_info,
    expect_error,
    node_name,
    ports,
    valid_node,
    violation_fields,
    without,
)

from leaf_cell.secrets import SecretBox
from rackcells.v1 import node_pb2, node_service_pb2

# Fields that change on every successful update, whatever the mask says.
VOLATILE = ("etag", "update_time")


def update_request(node: node_pb2.Node, *paths: str) -> node_service_pb2.UpdateNodeRequest:
    return node_service_pb2.UpdateNodeRequest(
        node=node, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )


def patch(node_id: str, **fields: object) -> node_pb2.Node:
    """An update body: just the name and the given fields (everything else left unset)."""
    return node_pb2.Node(name=node_name(node_id), **fields)


@pytest.fixture
def original(leaf: LeafClient) -> node_pb2.Node:
    """node-1 with every updatable field set, plus a second node to check isolation."""
    leaf.create("bystander", valid_node(ports=ports("52:54:00:00:00:99"), traits=["CUSTOM_X"]))
    return leaf.create(
        "node-1",
        valid_node(
            resource_class="gpu",
            traits=["CUSTOM_A", "CUSTOM_B"],
            properties=node_pb2.NodeProperties(
                cpus=16, memory_mb=65536, local_gb=480, cpu_arch="x86_64"
            ),
            bmc=node_pb2.BmcInfo(
                driver="ipmi", address="10.1.0.10", port=623, username="admin", password="orig-pw"
            ),
            ports=ports("52:54:00:00:00:01", "52:54:00:00:00:02"),
            extra={"owner": "team-a", "asset": "A-1"},
            instance_info=node_pb2.InstanceInfo(
                image_url="http://images/a.img", root_device="/dev/sda"
            ),
        ),
    )


def assert_only_changed(before: node_pb2.Node, after: node_pb2.Node, *fields: str) -> None:
    assert without(after, *fields, *VOLATILE) == without(before, *fields, *VOLATILE)


def test_update_resource_class_changes_only_that_field(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    bystander = leaf.get("bystander")
    updated = leaf.stub.UpdateNode(
        update_request(
            patch("node-1", resource_class="gpu-large", traits=["IGNORED"]), "resource_class"
        )
    )
    assert updated.resource_class == "gpu-large"
    assert_only_changed(original, updated, "resource_class")
    assert leaf.get("node-1") == updated
    assert leaf.get("bystander") == bystander


def test_update_traits_replaces_the_whole_list(leaf: LeafClient, original: node_pb2.Node) -> None:
    updated = leaf.stub.UpdateNode(
        update_request(patch("node-1", traits=["CUSTOM_B", "CUSTOM_C"]), "traits")
    )
    assert sorted(updated.traits) == ["CUSTOM_B", "CUSTOM_C"]
    assert sorted(leaf.get("node-1").traits) == ["CUSTOM_B", "CUSTOM_C"]
    assert_only_changed(original, updated, "traits")
    assert leaf.list_ids(filter='traits:"CUSTOM_A"') == []
    assert leaf.list_ids(filter='traits:"CUSTOM_C"') == ["node-1"]


def test_update_traits_to_empty_removes_them_all(leaf: LeafClient, original: node_pb2.Node) -> None:
    updated = leaf.stub.UpdateNode(update_request(patch("node-1"), "traits"))
    assert list(updated.traits) == []
    assert list(leaf.get("node-1").traits) == []


def test_update_response_equals_a_following_get_even_with_unsorted_traits(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    """AIP-134: Update returns the resource as stored; a Get right after must return the same."""
    updated = leaf.stub.UpdateNode(
        update_request(patch("node-1", traits=["CUSTOM_Z", "CUSTOM_C"]), "traits")
    )
    got = leaf.get("node-1")
    assert list(updated.traits) == list(got.traits), "Update and Get order the traits differently"
    assert got == updated


def test_update_extra_replaces_the_map(leaf: LeafClient, original: node_pb2.Node) -> None:
    updated = leaf.stub.UpdateNode(
        update_request(patch("node-1", extra={"owner": "team-b"}), "extra")
    )
    assert dict(updated.extra) == {"owner": "team-b"}
    assert dict(leaf.get("node-1").extra) == {"owner": "team-b"}
    assert_only_changed(original, updated, "extra")


def test_update_maintenance_with_reason_then_leaving_maintenance_clears_the_reason(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    on = leaf.stub.UpdateNode(
        update_request(
            patch("node-1", maintenance=True, maintenance_reason="PSU swap"),
            "maintenance",
            "maintenance_reason",
        )
    )
    assert (on.maintenance, on.maintenance_reason) == (True, "PSU swap")
    assert_only_changed(original, on, "maintenance", "maintenance_reason")
    assert leaf.list_ids(filter="maintenance = true") == ["node-1"]
    off = leaf.stub.UpdateNode(update_request(patch("node-1", maintenance=False), "maintenance"))
    assert (off.maintenance, off.maintenance_reason) == (False, "")
    assert leaf.get("node-1") == off


def test_update_properties_cpus_changes_cpus_only(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = patch("node-1", properties=node_pb2.NodeProperties(cpus=128, memory_mb=0, local_gb=0))
    updated = leaf.stub.UpdateNode(update_request(body, "properties.cpus"))
    assert updated.properties == node_pb2.NodeProperties(
        cpus=128, memory_mb=65536, local_gb=480, cpu_arch="x86_64"
    )
    assert_only_changed(original, updated, "properties")


def test_update_whole_properties_replaces_every_figure(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = patch("node-1", properties=node_pb2.NodeProperties(cpus=8, cpu_arch="aarch64"))
    updated = leaf.stub.UpdateNode(update_request(body, "properties"))
    assert updated.properties == node_pb2.NodeProperties(
        cpus=8, memory_mb=0, local_gb=0, cpu_arch="aarch64"
    )


def test_update_ports_keeps_one_mac_adds_another_and_frees_the_dropped_one(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = patch(
        "node-1",
        ports=[
            node_pb2.Port(mac="52:54:00:00:00:01", pxe_enabled=False),
            node_pb2.Port(mac="52-54-00-00-00-03", pxe_enabled=True),
        ],
    )
    updated = leaf.stub.UpdateNode(update_request(body, "ports"))
    expected = [("52:54:00:00:00:01", False), ("52:54:00:00:00:03", True)]
    assert [(p.mac, p.pxe_enabled) for p in updated.ports] == expected
    assert [(p.mac, p.pxe_enabled) for p in leaf.get("node-1").ports] == expected
    assert_only_changed(original, updated, "ports")
    # The dropped MAC is free again; the kept one is still taken.
    leaf.create("other", valid_node(ports=ports("52:54:00:00:00:02")))
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        leaf.stub.CreateNode,
        node_service_pb2.CreateNodeRequest(
            parent=leaf.parent, node_id="third", node=valid_node(ports=ports("52:54:00:00:00:01"))
        ),
    )


def test_update_bmc_password_stores_it_encrypted_and_never_returns_it(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    before = leaf.row("node-1")
    body = patch("node-1", bmc=node_pb2.BmcInfo(password="rotated-pw-7f3a"))
    updated = leaf.stub.UpdateNode(update_request(body, "bmc.password"))
    assert updated.bmc.password == ""
    assert updated.bmc.password_set is True
    assert "rotated-pw-7f3a" not in str(updated)
    assert_only_changed(original, updated)
    row = leaf.row("node-1")
    assert row is not None and before is not None
    assert row.bmc_password_enc != before.bmc_password_enc
    assert "rotated-pw-7f3a" not in (row.bmc_password_enc or "")
    box = SecretBox(leaf.key_file.read_bytes().strip())
    assert box.decrypt(row.bmc_password_enc or "") == "rotated-pw-7f3a"


def test_update_bmc_password_to_empty_clears_it(leaf: LeafClient, original: node_pb2.Node) -> None:
    updated = leaf.stub.UpdateNode(update_request(patch("node-1"), "bmc.password"))
    assert updated.bmc.password_set is False
    row = leaf.row("node-1")
    assert row is not None and row.bmc_password_enc is None


def test_update_bmc_address_changes_the_address_only(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = patch("node-1", bmc=node_pb2.BmcInfo(address="10.1.0.77"))
    updated = leaf.stub.UpdateNode(update_request(body, "bmc.address"))
    assert updated.bmc.address == "10.1.0.77"
    assert (updated.bmc.driver, updated.bmc.port, updated.bmc.username) == ("ipmi", 623, "admin")
    assert updated.bmc.password_set is True


def test_update_clearing_the_bmc_address_of_an_ipmi_node_is_invalid_argument(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    """An ipmi node needs a BMC address (as at create): the check uses the stored driver when
    the mask leaves the driver alone."""
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.UpdateNode,
        update_request(patch("node-1", bmc=node_pb2.BmcInfo(address="")), "bmc.address"),
    )
    assert violation_fields(err) == ["node.bmc.address"]
    assert leaf.snapshot() == before


def test_update_with_the_current_etag_succeeds_and_the_etag_changes_every_time(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    seen = {original.etag}
    current = original
    for rc in ["one", "two", "three"]:
        current = leaf.stub.UpdateNode(
            update_request(patch("node-1", resource_class=rc, etag=current.etag), "resource_class")
        )
        assert current.etag not in seen
        seen.add(current.etag)
        assert leaf.get("node-1").etag == current.etag


def test_update_with_a_stale_etag_is_aborted_and_changes_nothing(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    leaf.stub.UpdateNode(update_request(patch("node-1", resource_class="first"), "resource_class"))
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.ABORTED,
        leaf.stub.UpdateNode,
        update_request(
            patch("node-1", resource_class="second", etag=original.etag), "resource_class"
        ),
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    assert "node-1" in err.details()
    assert leaf.snapshot() == before
    assert leaf.get("node-1").resource_class == "first"


@pytest.mark.parametrize(
    "path",
    [
        "name",
        "uid",
        "provision_state",
        "etag",
        "lock",
        "bmc.password_set",
        "properties.gpus",
        "traits.first",
        "ports.mac",
        "resourceClass",
        "",
    ],
)
def test_an_unknown_update_mask_path_is_invalid_argument_naming_update_mask(
    leaf: LeafClient, original: node_pb2.Node, path: str
) -> None:
    before = leaf.snapshot()
    body = patch(
        "node-1", resource_class="changed", provision_state=node_pb2.PROVISION_STATE_ACTIVE
    )
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.UpdateNode,
        update_request(body, "resource_class", path),
    )
    assert violation_fields(err) == ["update_mask"]
    assert leaf.snapshot() == before


def test_an_empty_update_mask_is_invalid_argument_naming_update_mask(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.UpdateNode,
        update_request(patch("node-1", resource_class="changed")),
    )
    assert violation_fields(err) == ["update_mask"]
    assert leaf.snapshot() == before


def test_update_with_a_mac_of_another_node_is_already_exists_and_changes_nothing(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    before = leaf.snapshot()
    body = patch("node-1", ports=ports("52:54:00:00:00:01", "52:54:00:00:00:99"))
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, leaf.stub.UpdateNode, update_request(body, "ports")
    )
    assert "cells/rack-1/nodes/bystander" in err.details()
    assert error_info(err).metadata["node"] == "cells/rack-1/nodes/bystander"
    assert leaf.snapshot() == before


@pytest.mark.parametrize(
    ("body", "path", "field"),
    [
        (node_pb2.Node(ports=ports("nope")), "ports", "node.ports[0].mac"),
        (node_pb2.Node(traits=["lower"]), "traits", "node.traits[0]"),
        (
            node_pb2.Node(properties=node_pb2.NodeProperties(cpus=-2)),
            "properties.cpus",
            "node.properties.cpus",
        ),
        (node_pb2.Node(bmc=node_pb2.BmcInfo(driver="redfish")), "bmc.driver", "node.bmc.driver"),
        (node_pb2.Node(bmc=node_pb2.BmcInfo(driver="ipmi")), "bmc", "node.bmc.address"),
        (
            node_pb2.Node(instance_info=node_pb2.InstanceInfo(image_checksum="sha256:XYZ")),
            "instance_info.image_checksum",
            "node.instance_info.image_checksum",
        ),
    ],
    ids=["mac", "trait", "cpus", "driver", "bmc-without-address", "checksum"],
)
def test_update_with_a_bad_value_in_a_masked_field_is_invalid_argument_naming_it(
    leaf: LeafClient, original: node_pb2.Node, body: node_pb2.Node, path: str, field: str
) -> None:
    before = leaf.snapshot()
    body.name = node_name("node-1")
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, leaf.stub.UpdateNode, update_request(body, path)
    )
    assert violation_fields(err) == [field]
    assert leaf.snapshot() == before


def test_update_ignores_bad_values_in_fields_outside_the_mask(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = patch("node-1", resource_class="fine", traits=["not valid"], ports=ports("nope"))
    updated = leaf.stub.UpdateNode(update_request(body, "resource_class"))
    assert updated.resource_class == "fine"
    assert list(updated.traits) == list(original.traits)
    assert list(updated.ports) == list(original.ports)


def test_update_of_an_unknown_node_is_not_found(leaf: LeafClient, original: node_pb2.Node) -> None:
    before = leaf.snapshot()
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        leaf.stub.UpdateNode,
        update_request(patch("node-9", resource_class="x"), "resource_class"),
    )
    assert leaf.snapshot() == before


def test_update_of_a_node_in_another_cell_is_not_found(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    body = node_pb2.Node(name="cells/rack-2/nodes/node-1", resource_class="x")
    expect_error(
        grpc.StatusCode.NOT_FOUND, leaf.stub.UpdateNode, update_request(body, "resource_class")
    )
    assert leaf.get("node-1") == original


@pytest.mark.parametrize("name", ["", "node-1", "cells/rack-1/nodes/Node_1"])
def test_update_with_a_malformed_name_is_invalid_argument_naming_node_name(
    leaf: LeafClient, original: node_pb2.Node, name: str
) -> None:
    body = node_pb2.Node(name=name, resource_class="x")
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.UpdateNode,
        update_request(body, "resource_class"),
    )
    assert violation_fields(err) == ["node.name"]
    assert leaf.get("node-1") == original


@pytest.mark.parametrize("state", ["DEPLOYING", "WAIT_CALL_BACK"])
def test_update_of_instance_info_during_a_deploy_is_failed_precondition(
    leaf: LeafClient, original: node_pb2.Node, state: str
) -> None:
    leaf.set_columns("node-1", provision_state=state)
    before = leaf.snapshot()
    body = patch("node-1", instance_info=node_pb2.InstanceInfo(image_url="http://images/b.img"))
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        leaf.stub.UpdateNode,
        update_request(body, "instance_info.image_url"),
    )
    assert state in err.details()
    assert leaf.snapshot() == before


def test_update_of_instance_info_when_available_changes_only_the_named_sub_field(
    leaf: LeafClient, original: node_pb2.Node
) -> None:
    leaf.set_columns("node-1", provision_state="AVAILABLE")
    body = patch("node-1", instance_info=node_pb2.InstanceInfo(image_url="http://images/b.img"))
    updated = leaf.stub.UpdateNode(update_request(body, "instance_info.image_url"))
    assert updated.instance_info == node_pb2.InstanceInfo(
        image_url="http://images/b.img", root_device="/dev/sda"
    )


def test_switching_a_node_without_bmc_address_to_the_ipmi_driver_is_invalid_argument(
    leaf: LeafClient,
) -> None:
    """The ipmi driver needs an address; switching only bmc.driver must check the stored one."""
    leaf.create("fake-1", valid_node(bmc=node_pb2.BmcInfo(driver="fake")))
    before = leaf.snapshot()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        leaf.stub.UpdateNode,
        update_request(patch("fake-1", bmc=node_pb2.BmcInfo(driver="ipmi")), "bmc.driver"),
    )
    assert violation_fields(err) == ["node.bmc.address"]
    assert leaf.snapshot() == before
