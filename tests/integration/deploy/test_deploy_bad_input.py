"""ChangeProvisionState(DEPLOY) rejects what it cannot run before writing anything: the node,
its lock and the cell's operations are exactly as they were."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from deploykit import expect_error, node_name, violation_fields
from google.protobuf import field_mask_pb2
from sqlalchemy import create_engine, update

from leaf_cell.db.models import NodeRow
from rackcells.v1 import node_pb2, node_service_pb2

GOOD_URL = "http://127.0.0.1:9/os.img"
GOOD_SUM = "sha256:" + "ab" * 32


def _deploy_request(
    node_id: str, url: str, checksum: str
) -> node_service_pb2.ChangeProvisionStateRequest:
    return node_service_pb2.ChangeProvisionStateRequest(
        name=node_name(node_id),
        action=node_service_pb2.PROVISION_ACTION_DEPLOY,
        instance_info=node_pb2.InstanceInfo(image_url=url, image_checksum=checksum),
    )


def _refused(cell, code, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    """Sends ``request``, expects ``code``, and checks that nothing changed."""
    node_id = request.name.rsplit("/", 1)[1]
    before, ops_before = cell.get(node_id), cell.operations()
    err = expect_error(code, cell.nodes.ChangeProvisionState, request)
    assert cell.get(node_id) == before
    assert [o.name for o in cell.operations()] == [o.name for o in ops_before]
    assert not cell.get(node_id).HasField("lock")
    return err


def test_deploy_without_image_url_is_invalid_naming_the_field(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    err = _refused(cell, grpc.StatusCode.INVALID_ARGUMENT, _deploy_request("d0", "", GOOD_SUM))
    assert "instance_info.image_url" in err.details()
    assert violation_fields(err) == ["instance_info.image_url"]


def test_deploy_without_checksum_is_invalid_naming_the_field(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    err = _refused(cell, grpc.StatusCode.INVALID_ARGUMENT, _deploy_request("d0", GOOD_URL, ""))
    assert "instance_info.image_checksum" in err.details()
    assert violation_fields(err) == ["instance_info.image_checksum"]


def test_deploy_without_any_instance_info_names_both_fields(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    request = node_service_pb2.ChangeProvisionStateRequest(
        name=node_name("d0"), action=node_service_pb2.PROVISION_ACTION_DEPLOY
    )
    err = _refused(cell, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert sorted(violation_fields(err)) == [
        "instance_info.image_checksum",
        "instance_info.image_url",
    ]


def test_deploy_with_malformed_checksum_is_invalid(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    for bad in ("md5:0123456789abcdef0123456789abcdef", "sha256:xyz", "ab" * 32):
        err = _refused(cell, grpc.StatusCode.INVALID_ARGUMENT, _deploy_request("d0", GOOD_URL, bad))
        assert violation_fields(err) == ["instance_info.image_checksum"], bad


def test_deploy_with_non_http_image_url_is_invalid(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    err = _refused(
        cell,
        grpc.StatusCode.INVALID_ARGUMENT,
        _deploy_request("d0", "file:///etc/passwd", GOOD_SUM),
    )
    assert violation_fields(err) == ["instance_info.image_url"]


def test_deploy_of_a_node_in_maintenance_is_failed_precondition(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    cell.nodes.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=node_name("d0"), maintenance=True, maintenance_reason="fan"),
            update_mask=field_mask_pb2.FieldMask(paths=["maintenance", "maintenance_reason"]),
        )
    )
    err = _refused(
        cell, grpc.StatusCode.FAILED_PRECONDITION, _deploy_request("d0", GOOD_URL, GOOD_SUM)
    )
    assert "maintenance" in err.details()


def test_deploy_from_manageable_is_failed_precondition(cell, fake) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.66.0.1")
    cell.create("m0", "10.66.0.1", "52:54:00:66:00:01")
    op = cell.wait(cell.change("m0", node_service_pb2.PROVISION_ACTION_MANAGE))
    assert not op.HasField("error")
    err = _refused(
        cell, grpc.StatusCode.FAILED_PRECONDITION, _deploy_request("m0", GOOD_URL, GOOD_SUM)
    )
    assert "MANAGEABLE" in err.details() and "deploy" in err.details()


def test_deploy_at_a_leaf_without_boot_http_server_is_failed_precondition(start_cell, rack) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(http_listen="")
    assert cell.server.deploys is None
    rack(cell, 1, boot=False)
    err = _refused(
        cell, grpc.StatusCode.FAILED_PRECONDITION, _deploy_request("d0", GOOD_URL, GOOD_SUM)
    )
    assert "--http-listen" in err.details()


def test_deploy_with_a_stale_etag_is_refused(cell, rack) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    request = _deploy_request("d0", GOOD_URL, GOOD_SUM)
    request.etag = "not-the-etag"
    err = _refused(cell, grpc.StatusCode.ABORTED, request)
    assert "etag" in err.details().lower()


def test_deploy_of_a_node_locked_by_another_conductor_is_refused_naming_the_holder(
    cell, rack, db_url
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    now = datetime.now(UTC)
    engine = create_engine(db_url)
    nodes = NodeRow.__table__
    try:
        with engine.begin() as conn:
            conn.execute(
                update(nodes)
                .where(nodes.c.node_id == "d0")
                .values(
                    lock_holder="conductor/elsewhere",
                    lock_purpose="power",
                    lock_since=now,
                    lock_expires=now + timedelta(minutes=5),
                )
            )
    finally:
        engine.dispose()
    before, ops_before = cell.get("d0"), cell.operations()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cell.nodes.ChangeProvisionState,
        _deploy_request("d0", GOOD_URL, GOOD_SUM),
    )
    assert "conductor/elsewhere" in err.details()
    assert cell.get("d0") == before and len(cell.operations()) == len(ops_before)
