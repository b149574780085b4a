"""NodeService actions and ``google.longrunning.Operations`` answer the same directly at a leaf
and through the top cell: SetPowerState, SetBootDevice, ChangeProvisionState (manage, provide;
deploy's precondition on a leaf without a boot HTTP server), Get/List/Wait/Cancel/Delete
Operation, WatchNodes, and the refusals that depend on a node's state or lock.

Nodes use the leaf's ``fake`` BMC driver, except where a BMC that never answers is needed
(``black_hole_bmc``): a call to it holds the node's lock for the leaf's BMC timeout and then
fails, which gives a locked node and a node whose cleaning failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import pytest
from conformance_kit import (
    PA,
    PS,
    RPC_GUARD,
    WAIT_GUARD,
    Api,
    BlackHoleBmc,
    error_info,
    eventually,
    fake_node,
    new_mac,
    rpc_error,
    unique,
    violation_fields,
)
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from rackcells.v1 import node_pb2, node_service_pb2

PW = node_service_pb2.PowerAction
POWER = node_pb2.PowerState
IMAGE = node_pb2.InstanceInfo(
    image_url="http://127.0.0.1:9/os.img", image_checksum="sha256:" + "ab" * 32
)


def blind_node(bmc: BlackHoleBmc, resource_class: str) -> node_pb2.Node:
    """A node whose IPMI BMC never answers (its own user, so its own driver session slot)."""
    return node_pb2.Node(
        resource_class=resource_class,
        bmc=node_pb2.BmcInfo(
            driver="ipmi",
            address="127.0.0.1",
            port=bmc.port,
            username=unique("u"),
            password="pw",
        ),
        ports=[node_pb2.Port(mac=new_mac())],
    )


def in_background(call: object, request: object) -> Future[object]:
    """Runs a blocking call in a thread; the future holds its result or its RpcError."""
    future: Future[object] = Future()

    def run() -> None:
        try:
            future.set_result(call(request, timeout=RPC_GUARD))  # type: ignore[operator]
        except Exception as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


# -- power and boot device --------------------------------------------------------------------


def test_power_actions_go_through_the_bmc_and_are_recorded(api: Api) -> None:
    node_id = unique("p")
    api.create(node_id, fake_node(unique("rc-")))
    name = api.name(node_id)
    seen = []
    for action in (PW.POWER_ACTION_ON, PW.POWER_ACTION_REBOOT, PW.POWER_ACTION_SOFT_OFF):
        node = api.nodes.SetPowerState(
            node_service_pb2.SetPowerStateRequest(name=name, action=action), timeout=RPC_GUARD
        )
        seen.append(node.power_state)
        assert node.HasField("power_sync_time") and not node.last_error
        assert not node.HasField("lock")
    assert seen == [POWER.POWER_STATE_ON, POWER.POWER_STATE_ON, POWER.POWER_STATE_OFF]
    on = api.nodes.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=name, action=PW.POWER_ACTION_ON),
        timeout=RPC_GUARD,
    )
    assert api.get(node_id) == on


def test_set_boot_device_answers_with_the_node(api: Api) -> None:
    node_id = unique("b")
    created = api.create(node_id, fake_node(unique("rc-")))
    for device, persistent in (
        (node_service_pb2.BOOT_DEVICE_PXE, True),
        (node_service_pb2.BOOT_DEVICE_DISK, False),
    ):
        node = api.nodes.SetBootDevice(
            node_service_pb2.SetBootDeviceRequest(
                name=created.name, device=device, persistent=persistent
            ),
            timeout=RPC_GUARD,
        )
        assert node.name == created.name and not node.last_error
        assert not node.HasField("lock")


# -- provisioning and operations --------------------------------------------------------------


def metadata_of(op: operations_pb2.Operation) -> node_service_pb2.ProvisionOperationMetadata:
    meta = node_service_pb2.ProvisionOperationMetadata()
    assert op.metadata.Unpack(meta)
    return meta


def response_of(op: operations_pb2.Operation) -> node_pb2.Node:
    node = node_pb2.Node()
    assert op.response.Unpack(node)
    return node


def test_manage_and_provide_run_as_operations_to_available(api: Api) -> None:
    node_id = unique("m")
    api.create(node_id, fake_node(unique("rc-")))
    name = api.name(node_id)

    started = api.change(node_id, PA.PROVISION_ACTION_MANAGE)
    assert started.name.startswith(f"cells/{api.cell}/operations/")
    meta = metadata_of(started)
    assert (meta.node, meta.action) == (name, PA.PROVISION_ACTION_MANAGE)
    managed = api.wait(started)
    assert managed.done and not managed.HasField("error")
    assert response_of(managed).provision_state == PS.PROVISION_STATE_MANAGEABLE
    assert metadata_of(managed).percent == 100

    provided = api.run(node_id, PA.PROVISION_ACTION_PROVIDE)
    assert not provided.HasField("error")
    node = response_of(provided)
    assert node.provision_state == PS.PROVISION_STATE_AVAILABLE
    assert node.target_provision_state == PS.PROVISION_STATE_UNSPECIFIED
    assert node.power_state == POWER.POWER_STATE_OFF
    assert api.get(node_id) == node

    again = api.ops.GetOperation(
        operations_pb2.GetOperationRequest(name=managed.name), timeout=RPC_GUARD
    )
    assert again.done and metadata_of(again) == metadata_of(managed)
    waited = api.ops.WaitOperation(
        operations_pb2.WaitOperationRequest(name=provided.name), timeout=RPC_GUARD
    )
    assert waited == provided  # already done: answered at once, unchanged


def test_list_operations_pages_newest_first(api: Api) -> None:
    node_id = unique("o")
    api.create(node_id, fake_node(unique("rc-")))
    manage = api.run(node_id, PA.PROVISION_ACTION_MANAGE)
    provide = api.run(node_id, PA.PROVISION_ACTION_PROVIDE)
    names: list[str] = []
    token = ""
    for _ in range(2):
        page = api.ops.ListOperations(
            operations_pb2.ListOperationsRequest(
                name=f"cells/{api.cell}/operations", page_size=1, page_token=token
            ),
            timeout=RPC_GUARD,
        )
        assert len(page.operations) == 1 and page.next_page_token
        names.append(page.operations[0].name)
        token = page.next_page_token
    assert names == [provide.name, manage.name]


def test_finished_operations_cannot_be_cancelled_but_can_be_deleted(api: Api) -> None:
    node_id = unique("c")
    api.create(node_id, fake_node(unique("rc-")))
    op = api.run(node_id, PA.PROVISION_ACTION_MANAGE)
    err = rpc_error(api.ops.CancelOperation, operations_pb2.CancelOperationRequest(name=op.name))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    api.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name), timeout=RPC_GUARD)
    gone = rpc_error(api.ops.GetOperation, operations_pb2.GetOperationRequest(name=op.name))
    assert gone.code() == grpc.StatusCode.NOT_FOUND, gone.details()
    assert api.get(node_id).provision_state == PS.PROVISION_STATE_MANAGEABLE


def test_an_illegal_transition_or_maintenance_is_failed_precondition(api: Api) -> None:
    node_id = unique("i")
    api.create(node_id, fake_node(unique("rc-")))
    err = rpc_error(
        api.nodes.ChangeProvisionState,
        node_service_pb2.ChangeProvisionStateRequest(
            name=api.name(node_id), action=PA.PROVISION_ACTION_PROVIDE
        ),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    info = error_info(err)
    assert info is not None and dict(info.metadata) == {"provision_state": "ENROLL"}

    maint = unique("i")
    api.create(maint, fake_node(unique("rc-"), maintenance=True))
    err = rpc_error(
        api.nodes.ChangeProvisionState,
        node_service_pb2.ChangeProvisionStateRequest(
            name=api.name(maint), action=PA.PROVISION_ACTION_MANAGE
        ),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert api.get(maint).provision_state == PS.PROVISION_STATE_ENROLL


def test_deploy_needs_an_image_and_a_leaf_with_a_boot_http_server(api: Api) -> None:
    """The conformance leaves run without --http-listen: a deploy is refused before anything
    changes, the same way at the leaf and through the top."""
    node_id = unique("y")
    api.create(node_id, fake_node(unique("rc-")))
    api.make_available(node_id)
    before = api.get(node_id)

    no_image = rpc_error(
        api.nodes.ChangeProvisionState,
        node_service_pb2.ChangeProvisionStateRequest(
            name=before.name, action=PA.PROVISION_ACTION_DEPLOY
        ),
    )
    assert no_image.code() == grpc.StatusCode.INVALID_ARGUMENT, no_image.details()
    assert violation_fields(no_image) == ["instance_info.image_url", "instance_info.image_checksum"]

    no_server = rpc_error(
        api.nodes.ChangeProvisionState,
        node_service_pb2.ChangeProvisionStateRequest(
            name=before.name, action=PA.PROVISION_ACTION_DEPLOY, instance_info=IMAGE
        ),
    )
    assert no_server.code() == grpc.StatusCode.FAILED_PRECONDITION, no_server.details()
    assert "http-listen" in (no_server.details() or "")
    assert api.get(node_id) == before


# -- refusals that depend on the node's state or lock -----------------------------------------


def test_delete_of_a_node_whose_cleaning_failed_is_failed_precondition(
    api: Api, black_hole_bmc: BlackHoleBmc
) -> None:
    node_id = unique("f")
    api.create(node_id, fake_node(unique("rc-")))
    assert not api.run(node_id, PA.PROVISION_ACTION_MANAGE).HasField("error")
    blind = blind_node(black_hole_bmc, "x")
    api.nodes.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=api.name(node_id), bmc=blind.bmc),
            update_mask=field_mask_pb2.FieldMask(paths=["bmc"]),
        ),
        timeout=RPC_GUARD,
    )

    failed = api.run(node_id, PA.PROVISION_ACTION_PROVIDE)
    assert failed.HasField("error")
    assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0], failed.error
    node = api.get(node_id)
    assert node.provision_state == PS.PROVISION_STATE_CLEAN_FAILED
    assert node.last_error and not node.HasField("lock")

    err = rpc_error(api.nodes.DeleteNode, node_service_pb2.DeleteNodeRequest(name=node.name))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    info = error_info(err)
    assert info is not None and info.reason == "FAILED_PRECONDITION"
    assert dict(info.metadata) == {"provision_state": "CLEAN_FAILED"}
    assert api.get(node_id) == node


def test_a_locked_node_refuses_delete_and_other_actions_until_the_lock_is_released(
    api: Api, black_hole_bmc: BlackHoleBmc
) -> None:
    created = api.create(unique("k"), blind_node(black_hole_bmc, unique("rc-")))
    name = created.name
    pending = in_background(
        api.nodes.SetPowerState,
        node_service_pb2.SetPowerStateRequest(name=name, action=PW.POWER_ACTION_ON),
    )

    def locked() -> node_pb2.Node:
        node = api.nodes.GetNode(node_service_pb2.GetNodeRequest(name=name), timeout=RPC_GUARD)
        assert node.lock.holder, "not locked yet"
        return node

    node = eventually(locked, f"the power call to lock {name}")
    assert node.lock.purpose == "power on"
    assert node.lock.HasField("since") and node.lock.HasField("expire_time")

    refusals = {
        "DeleteNode": rpc_error(
            api.nodes.DeleteNode, node_service_pb2.DeleteNodeRequest(name=name)
        ),
        "SetBootDevice": rpc_error(
            api.nodes.SetBootDevice,
            node_service_pb2.SetBootDeviceRequest(
                name=name, device=node_service_pb2.BOOT_DEVICE_PXE
            ),
        ),
        "ChangeProvisionState": rpc_error(
            api.nodes.ChangeProvisionState,
            node_service_pb2.ChangeProvisionStateRequest(
                name=name, action=PA.PROVISION_ACTION_MANAGE
            ),
        ),
    }
    for method, err in refusals.items():
        info = error_info(err)
        assert (err.code(), info.reason if info else None) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NODE_LOCKED",
        ), f"{method}: {err.code()} {err.details()}"
        assert "power on" in (err.details() or ""), method

    with pytest.raises(grpc.RpcError) as ended:
        pending.result(timeout=WAIT_GUARD)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
    info = error_info(ended.value)
    assert info is not None and info.reason == "BMC_TIMEOUT"
    after = api.get(name.rsplit("/", 1)[1])
    assert after.power_state == POWER.POWER_STATE_UNKNOWN and after.last_error
    assert not after.HasField("lock")
    assert after.provision_state == PS.PROVISION_STATE_ENROLL
    # Every NODE_LOCKED names the holder and purpose in its ErrorInfo, for programs to read.
    metadata = {
        method: {k: v for k, v in error_info(err).metadata.items() if k in ("holder", "purpose")}  # type: ignore[union-attr]
        for method, err in refusals.items()
    }
    holder = node.lock.holder
    assert metadata == {m: {"holder": holder, "purpose": "power on"} for m in refusals}


# -- watching ---------------------------------------------------------------------------------


def watch(api: Api, parent: str, names: list[str]) -> Iterator[node_service_pb2.NodeEvent]:
    call = api.nodes.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent=parent, names=names, since_revision=0),
        timeout=WAIT_GUARD,
    )
    try:
        yield from call
    finally:
        call.cancel()


@pytest.mark.parametrize("parent", ["own", "all"])
def test_watch_replays_a_nodes_events_and_delivers_new_ones_as_they_happen(
    api: Api, parent: str
) -> None:
    node_id = unique("w")
    created = api.create(node_id, fake_node(unique("rc-")))
    other = api.create(unique("w"), fake_node(unique("rc-")))
    events = watch(api, api.parent if parent == "own" else "cells/-", [created.name])

    first = next(events)
    assert (first.node, first.kind) == (created.name, "created")
    assert first.provision_state == PS.PROVISION_STATE_ENROLL

    api.nodes.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=other.name, action=PW.POWER_ACTION_ON),
        timeout=RPC_GUARD,
    )
    api.nodes.SetPowerState(
        node_service_pb2.SetPowerStateRequest(name=created.name, action=PW.POWER_ACTION_ON),
        timeout=RPC_GUARD,
    )
    power = next(events)
    assert (power.node, power.kind, power.detail) == (created.name, "power", "on -> ON")
    assert power.power_state == POWER.POWER_STATE_ON
    assert power.revision > first.revision

    op = api.run(node_id, PA.PROVISION_ACTION_MANAGE)
    assert not op.HasField("error")
    kinds = []
    for event in events:
        assert event.node == created.name
        kinds.append((event.kind, event.detail))
        if event.detail == "VERIFYING -> MANAGEABLE":
            break
    assert kinds == [
        ("provision", "ENROLL -> VERIFYING (manage)"),
        ("provision", "VERIFYING -> MANAGEABLE"),
    ]
