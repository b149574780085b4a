"""NodeService inventory calls answer the same directly at a leaf and through the top cell:
CreateNode, BatchCreateNodes, GetNode, ListNodes (every filter field, order_by, paging over
``cells/{cell}`` and ``cells/-``), UpdateNode with etags, DeleteNode.

Each test works on nodes of its own resource class, so that the two runs (``leaf`` and ``top``)
of one body, which share the leaf, never see each other's nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from conformance_kit import (
    PA,
    PS,
    RPC_GUARD,
    Api,
    error_info,
    fake_node,
    new_mac,
    rpc_error,
    unique,
)
from google.protobuf import field_mask_pb2

from rackcells.v1 import node_pb2, node_service_pb2

PARENTS = ["own", "all"]


def parent_of(api: Api, which: str) -> str:
    return api.parent if which == "own" else "cells/-"


def update(api: Api, node: node_pb2.Node, *paths: str) -> node_pb2.Node:
    return api.nodes.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        timeout=RPC_GUARD,
    )


# -- create and get --------------------------------------------------------------------------------


def test_create_returns_the_enrolled_node_and_get_returns_the_same(api: Api) -> None:
    rc, node_id, mac = unique("rc-"), unique("n"), new_mac()
    node = fake_node(rc, traits=["CUSTOM_B", "CUSTOM_A"], macs=[mac.upper()], extra={"slot": "7"})
    created = api.create(node_id, node)

    assert created.name == api.name(node_id)
    assert len(created.uid) == 36
    assert created.resource_class == rc
    assert list(created.traits) == ["CUSTOM_A", "CUSTOM_B"]
    assert [(p.mac, p.pxe_enabled) for p in created.ports] == [(mac, True)]
    assert created.provision_state == PS.PROVISION_STATE_ENROLL
    assert created.bmc.driver == "fake"
    assert (created.bmc.password, created.bmc.password_set) == ("", True)
    assert dict(created.extra) == {"slot": "7"}
    assert created.etag
    assert created.HasField("create_time")
    assert api.get(node_id) == created


def test_a_taken_node_id_or_mac_is_already_exists_and_changes_nothing(api: Api) -> None:
    rc, node_id, mac = unique("rc-"), unique("n"), new_mac()
    first = api.create(node_id, fake_node(rc, macs=[mac]))

    again = rpc_error(
        api.nodes.CreateNode,
        node_service_pb2.CreateNodeRequest(
            parent=api.parent, node_id=node_id, node=fake_node(rc, macs=[new_mac()])
        ),
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS, again.details()
    taken = rpc_error(
        api.nodes.CreateNode,
        node_service_pb2.CreateNodeRequest(
            parent=api.parent, node_id=unique("n"), node=fake_node(rc, macs=[mac])
        ),
    )
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS, taken.details()
    assert api.list_names(filter=f'resource_class = "{rc}"') == [first.name]
    assert api.get(node_id) == first


def test_a_batch_enrols_every_node_or_none(api: Api) -> None:
    rc = unique("rc-")
    items = [(unique("n"), fake_node(rc, macs=[new_mac()])) for _ in range(3)]

    def batch(*pairs: tuple[str, node_pb2.Node]) -> node_service_pb2.BatchCreateNodesRequest:
        return node_service_pb2.BatchCreateNodesRequest(
            parent=api.parent,
            requests=[node_service_pb2.CreateNodeRequest(node_id=i, node=n) for i, n in pairs],
        )

    created = api.nodes.BatchCreateNodes(batch(*items), timeout=RPC_GUARD).nodes
    assert [n.name for n in created] == [api.name(node_id) for node_id, _ in items]
    assert [api.get(node_id) for node_id, _ in items] == list(created)

    # One request of the batch repeats a node id that exists: nothing of the batch is enrolled.
    refused = rpc_error(
        api.nodes.BatchCreateNodes,
        batch((unique("n"), fake_node(rc, macs=[new_mac()])), (items[0][0], fake_node(rc))),
    )
    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS, refused.details()
    assert "requests[1]" in (refused.details() or "")
    assert api.list_names(filter=f'resource_class = "{rc}"') == sorted(n.name for n in created)


def test_a_node_of_a_cell_that_does_not_exist_is_not_found(api: Api) -> None:
    err = rpc_error(
        api.nodes.GetNode, node_service_pb2.GetNodeRequest(name="cells/no-such-cell/nodes/n1")
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()


# -- listing ---------------------------------------------------------------------------------------


@dataclass
class Listed:
    """Twelve nodes of one resource class in several states, and what is known of each."""

    rc: str
    nodes: dict[int, node_pb2.Node]

    def names(self, keep: Callable[[int], bool]) -> list[str]:
        return sorted(n.name for i, n in self.nodes.items() if keep(i))


MAINTENANCE = {1, 7}
MANAGED = {2, 5, 8}
PROVIDED = {8}


@pytest.fixture(scope="module")
def listings() -> dict[str, Listed]:
    """One set of listing nodes per kind of Api, made by the first test that needs it (the
    listing tests only read them)."""
    return {}


@pytest.fixture
def listed(api: Api, listings: dict[str, Listed]) -> Listed:
    if api.kind not in listings:
        listings[api.kind] = make_listing(api)
    return listings[api.kind]


def make_listing(api: Api) -> Listed:
    rc, prefix = unique("rc-"), unique("l")
    for i in range(12):
        traits = [t for t, on in (("CUSTOM_EVEN", i % 2 == 0), ("CUSTOM_THREE", i % 3 == 0)) if on]
        api.create(
            f"{prefix}-{i:02d}",
            fake_node(rc, traits=traits, maintenance=i in MAINTENANCE, extra={"i": str(i)}),
        )
    for i in MANAGED:
        assert not api.run(f"{prefix}-{i:02d}", PA.PROVISION_ACTION_MANAGE).HasField("error")
    for i in PROVIDED:
        assert not api.run(f"{prefix}-{i:02d}", PA.PROVISION_ACTION_PROVIDE).HasField("error")
    return Listed(rc, {i: api.get(f"{prefix}-{i:02d}") for i in range(12)})


FILTERS: list[tuple[str, str, Callable[[int], bool]]] = [
    ("class only", "", lambda i: True),
    ("provision_state =", "provision_state = MANAGEABLE", lambda i: i in MANAGED - PROVIDED),
    (
        "provision_state = (full enum name)",
        "provision_state = PROVISION_STATE_AVAILABLE",
        PROVIDED.__contains__,
    ),
    ("provision_state !=", "provision_state != ENROLL", MANAGED.__contains__),
    ("power_state =", "power_state = OFF", MANAGED.__contains__),
    ("maintenance = true", "maintenance = true", MAINTENANCE.__contains__),
    ("maintenance = false", "maintenance = false", lambda i: i not in MAINTENANCE),
    ("has trait", 'traits:"CUSTOM_EVEN"', lambda i: i % 2 == 0),
    ("has and has not", '-traits:"CUSTOM_EVEN" AND traits:"CUSTOM_THREE"', lambda i: i % 6 == 3),
    ("no match", 'traits:"CUSTOM_NOBODY"', lambda i: False),
]


@pytest.mark.parametrize("which", PARENTS)
@pytest.mark.parametrize(
    ("text", "keep"), [(f[1], f[2]) for f in FILTERS], ids=[f[0] for f in FILTERS]
)
def test_list_filters_select_the_same_nodes(
    api: Api, listed: Listed, which: str, text: str, keep: Callable[[int], bool]
) -> None:
    flt = f'resource_class = "{listed.rc}"' + (f" AND {text}" if text else "")
    names = api.list_names(parent=parent_of(api, which), filter=flt)
    assert names == listed.names(keep)


@pytest.mark.parametrize("which", PARENTS)
def test_list_by_uid_and_by_mac_finds_exactly_that_node(
    api: Api, listed: Listed, which: str
) -> None:
    parent = parent_of(api, which)
    four, six = listed.nodes[4], listed.nodes[6]
    assert api.list_names(parent=parent, filter=f'uid = "{four.uid}"') == [four.name]
    assert api.list_names(
        parent=parent, filter=f'resource_class = "{listed.rc}" AND uid != "{four.uid}"'
    ) == listed.names(lambda i: i != 4)
    mac = six.ports[0].mac
    assert api.list_names(parent=parent, filter=f'mac = "{mac}"') == [six.name]
    dashed = mac.upper().replace(":", "-")
    assert api.list_names(parent=parent, filter=f'mac = "{dashed}"') == [six.name]
    assert (
        api.list_names(parent=parent, filter='uid = "00000000-0000-0000-0000-000000000000"') == []
    )


def _sort_value(node: node_pb2.Node, field: str) -> Any:
    if field == "name":
        return node.name.rsplit("/", 1)[1]
    if field == "provision_state":  # stored and sorted as the state's name
        return node_pb2.ProvisionState.Name(node.provision_state).removeprefix("PROVISION_STATE_")
    if field == "power_state":
        return node_pb2.PowerState.Name(node.power_state).removeprefix("POWER_STATE_")
    if field in ("create_time", "update_time"):
        stamp = getattr(node, field)
        return (stamp.seconds, stamp.nanos)
    return getattr(node, field)


def expected_order(nodes: list[node_pb2.Node], order_by: str) -> list[str]:
    keys = [part.split() for part in order_by.split(",") if part.strip()]
    if not any(k[0] == "name" for k in keys):
        keys.append(["name"])
    ordered = list(nodes)
    for key in reversed(keys):  # stable sorts, last key first
        desc = len(key) == 2 and key[1] == "desc"
        ordered.sort(key=lambda n, f=key[0]: _sort_value(n, f), reverse=desc)
    return [n.name for n in ordered]


ORDERS = [
    "",
    "name desc",
    "provision_state",
    "provision_state desc, name desc",
    "power_state desc",
    "create_time desc",
    "update_time",
    "resource_class, create_time",
]


@pytest.mark.parametrize("which", PARENTS)
@pytest.mark.parametrize("order_by", ORDERS)
def test_list_pages_of_three_return_every_node_once_in_order(
    api: Api, listed: Listed, which: str, order_by: str
) -> None:
    pages = list(
        api.pages(
            parent=parent_of(api, which),
            filter=f'resource_class = "{listed.rc}"',
            order_by=order_by,
            page_size=3,
        )
    )
    assert [len(p.nodes) for p in pages] == [3, 3, 3, 3]
    assert all(p.next_page_token for p in pages[:-1]) and not pages[-1].next_page_token
    assert all(not p.unreachable for p in pages)
    names = [n.name for p in pages for n in p.nodes]
    assert names == expected_order(list(listed.nodes.values()), order_by)


@pytest.mark.parametrize("which", PARENTS)
def test_list_returns_whole_nodes_equal_to_get(api: Api, listed: Listed, which: str) -> None:
    page = api.nodes.ListNodes(
        node_service_pb2.ListNodesRequest(
            parent=parent_of(api, which), filter=f'resource_class = "{listed.rc}"'
        ),
        timeout=RPC_GUARD,
    )
    assert not page.next_page_token  # page_size 0 means 100
    assert list(page.nodes) == [listed.nodes[i] for i in range(12)]


# -- update and delete -----------------------------------------------------------------------------


def test_update_changes_the_masked_fields_and_a_stale_etag_is_aborted(api: Api) -> None:
    node_id = unique("u")
    created = api.create(node_id, fake_node(unique("rc-"), extra={"a": "1"}))
    name = created.name

    changed = update(
        api,
        node_pb2.Node(
            name=name,
            etag=created.etag,
            extra={"b": "2"},
            maintenance=True,  # not in the mask: ignored
            properties=node_pb2.NodeProperties(cpus=64, memory_mb=1),
        ),
        "extra",
        "properties.cpus",
    )
    assert dict(changed.extra) == {"b": "2"}
    assert (changed.properties.cpus, changed.properties.memory_mb) == (64, 16384)
    assert not changed.maintenance
    assert changed.etag != created.etag
    assert api.get(node_id) == changed

    stale = rpc_error(
        api.nodes.UpdateNode,
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=name, etag=created.etag, maintenance=True),
            update_mask=field_mask_pb2.FieldMask(paths=["maintenance"]),
        ),
    )
    assert stale.code() == grpc.StatusCode.ABORTED, stale.details()
    info = error_info(stale)
    assert info is not None and info.reason == "ETAG_MISMATCH"
    assert api.get(node_id) == changed

    blind = update(
        api,
        node_pb2.Node(name=name, maintenance=True, maintenance_reason="fan"),
        "maintenance",
        "maintenance_reason",
    )
    assert (blind.maintenance, blind.maintenance_reason) == (True, "fan")


def test_update_of_ports_and_password_keeps_the_password_hidden(api: Api) -> None:
    node_id, old_mac, new = unique("u"), new_mac(), new_mac()
    created = api.create(node_id, fake_node(unique("rc-"), macs=[old_mac]))
    changed = update(
        api,
        node_pb2.Node(
            name=created.name,
            ports=[node_pb2.Port(mac=new.upper(), pxe_enabled=False)],
            bmc=node_pb2.BmcInfo(password="another-secret"),
        ),
        "ports",
        "bmc.password",
    )
    assert [(p.mac, p.pxe_enabled) for p in changed.ports] == [(new, False)]
    assert (changed.bmc.password, changed.bmc.password_set) == ("", True)
    assert changed.bmc.driver == "fake"
    for parent in (api.parent, "cells/-"):
        assert api.list_names(parent=parent, filter=f'mac = "{new}"') == [created.name]
        assert api.list_names(parent=parent, filter=f'mac = "{old_mac}"') == []


def test_delete_honours_the_etag_and_the_node_is_gone(api: Api) -> None:
    node_id = unique("d")
    created = api.create(node_id, fake_node(unique("rc-")))
    current = update(api, node_pb2.Node(name=created.name, extra={"x": "y"}), "extra")

    stale = rpc_error(
        api.nodes.DeleteNode,
        node_service_pb2.DeleteNodeRequest(name=created.name, etag=created.etag),
    )
    assert stale.code() == grpc.StatusCode.ABORTED, stale.details()
    assert api.get(node_id) == current

    api.nodes.DeleteNode(
        node_service_pb2.DeleteNodeRequest(name=created.name, etag=current.etag), timeout=RPC_GUARD
    )
    gone = rpc_error(api.nodes.GetNode, node_service_pb2.GetNodeRequest(name=created.name))
    assert gone.code() == grpc.StatusCode.NOT_FOUND, gone.details()
    again = rpc_error(api.nodes.DeleteNode, node_service_pb2.DeleteNodeRequest(name=created.name))
    assert again.code() == grpc.StatusCode.NOT_FOUND, again.details()
    assert api.list_names(filter=f'uid = "{created.uid}"') == []
