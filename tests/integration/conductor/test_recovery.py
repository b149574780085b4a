"""A leaf that restarts after an unclean stop leaves no stale lock and no node in a transient
state, and ends the operations that were running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.longrunning import operations_pb2
from google.rpc import code_pb2
from sqlalchemy import create_engine, insert, update

from leaf_cell.db.models import NodeRow, OperationRow
from rackcells.v1 import node_pb2


def test_restart_fails_transient_nodes_releases_own_leases_and_ends_operations(
    cell, fake, db_url, leaf_runner
) -> None:  # type: ignore[no-untyped-def]
    fake.add_bmc("10.8.0.1")
    fake.add_bmc("10.8.0.2")
    cell.create("v1", "10.8.0.1")
    cell.create("other", "10.8.0.2")
    node_pk = cell.get("v1")
    leaf_runner.stop(cell.server)
    # What a SIGKILL during verification leaves behind:
    now = datetime.now(UTC)
    engine = create_engine(db_url)
    nodes = NodeRow.__table__
    with engine.begin() as conn:
        conn.execute(
            update(nodes)
            .where(nodes.c.node_id == "v1")
            .values(
                provision_state="VERIFYING",
                target_provision_state="MANAGEABLE",
                lock_holder="conductor/rack-1",
                lock_purpose="manage",
                lock_since=now,
                lock_expires=now + timedelta(minutes=5),
            )
        )
        conn.execute(
            update(nodes)
            .where(nodes.c.node_id == "other")
            .values(
                lock_holder="conductor/rack-9",
                lock_purpose="deploy",
                lock_since=now,
                lock_expires=now + timedelta(minutes=5),
            )
        )
        pk = conn.execute(nodes.select().where(nodes.c.node_id == "v1")).one().id
        conn.execute(
            insert(OperationRow.__table__).values(
                id="deadbeef",
                node_pk=pk,
                node_id="v1",
                action="manage",
                done=False,
                phase="verifying",
                percent=10,
                queue_position=0,
                error_code=0,
                error_message="",
                create_time=now,
                update_time=now,
            )
        )
    engine.dispose()
    assert node_pk.name

    from conductorkit import Cell

    restarted = Cell(leaf_runner.start(db_url, bmc_timeout=1.0), leaf_runner)
    try:
        node = restarted.get("v1")
        assert node.provision_state == node_pb2.PROVISION_STATE_ENROLL
        assert "restarted" in node.last_error
        assert not node.HasField("lock")
        # Another conductor's lease is not ours to release.
        assert restarted.get("other").lock.holder == "conductor/rack-9"
        op = restarted.ops.GetOperation(
            operations_pb2.GetOperationRequest(name="cells/rack-1/operations/deadbeef")
        )
        assert op.done and op.error.code == code_pb2.ABORTED
    finally:
        restarted.close()
