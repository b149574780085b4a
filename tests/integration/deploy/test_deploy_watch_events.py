"""WatchNodes during a deploy: every phase and provision change arrives in order with
increasing revisions, a watcher resumes after a revision without gaps or repeats, ``cells/-``
means this leaf's own cell, and another cell is NOT_FOUND."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from deploykit import PHASES, expect_error, node_name, wait_until

from rackcells.v1 import node_pb2, node_service_pb2

STREAM_GUARD = 30.0  # seconds: only a hang guard for each stream


def _collect(
    cell,  # type: ignore[no-untyped-def]
    until: Callable[[node_service_pb2.NodeEvent], bool],
    *,
    parent: str = "cells/rack-1",
    names: tuple[str, ...] = (),
    since: int = 0,
) -> list[node_service_pb2.NodeEvent]:
    """Reads a WatchNodes stream until an event satisfies ``until``; returns what it read."""
    stream = cell.nodes.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent=parent, names=list(names), since_revision=since),
        timeout=STREAM_GUARD,
    )
    events = []
    try:
        for event in stream:
            events.append(event)
            if until(event):
                break
    finally:
        stream.cancel()
    return events


def _deployed(event: node_service_pb2.NodeEvent) -> bool:
    return event.kind == "deployed"


def _phase_sequence(events: list[node_service_pb2.NodeEvent]) -> list[str]:
    return [e.phase for e in events if e.kind == "phase"]


def test_live_watch_sees_every_deploy_phase_in_order_with_increasing_revisions(
    cell, rack, image
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    events: list[node_service_pb2.NodeEvent] = []

    events_seen: list[int] = []

    def watch() -> None:
        # From revision 0: the enrolment's events first, then the deploy's as they happen.
        events.extend(
            _collect(
                cell,
                lambda e: events_seen.append(e.revision) or _deployed(e),
                names=(node_name("d0"),),
            )
        )

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_until(lambda: events_seen, "the stream to replay the enrolment")
    op = cell.deploy("d0", image.url, image.checksum)
    assert not cell.wait(op).HasField("error")
    watcher.join(STREAM_GUARD)
    assert not watcher.is_alive(), "the watch never saw the deployed event"

    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions)), revisions
    assert {e.node for e in events} == {node_name("d0")}
    assert _phase_sequence(events) == [*PHASES, "active"]
    assert "AVAILABLE -> DEPLOYING (deploy)" in [e.detail for e in events if e.kind == "provision"]
    assert events[-1].provision_state == node_pb2.PROVISION_STATE_ACTIVE


def test_deploy_records_its_move_to_active_as_a_provision_event_like_other_actions(
    cell, rack, image
) -> None:  # type: ignore[no-untyped-def]
    """manage, provide and undeploy record each successful state change as a ``provision``
    event ("VERIFYING -> MANAGEABLE", "CLEANING -> AVAILABLE"); a deploy records only its start
    ("AVAILABLE -> DEPLOYING (deploy)"), so a watcher following provision changes never sees
    the node become ACTIVE."""
    rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    events = _collect(cell, _deployed)
    changes = [e.detail for e in events if e.kind == "provision"]
    assert changes[:4] == [
        "ENROLL -> VERIFYING (manage)",
        "VERIFYING -> MANAGEABLE",
        "MANAGEABLE -> CLEANING (provide)",
        "CLEANING -> AVAILABLE",
    ]
    assert changes[4] == "AVAILABLE -> DEPLOYING (deploy)"
    assert changes[-1].endswith("-> ACTIVE"), changes


def test_replay_from_zero_has_provision_changes_and_all_phases_of_a_deploy(
    cell, rack, image
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    events = _collect(cell, _deployed, names=(node_name("d0"),))

    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions)) and revisions[0] > 0
    deploy_events = events[next(i for i, e in enumerate(events) if "(deploy)" in e.detail) :]
    assert _phase_sequence(deploy_events) == [*PHASES, "active"]
    details = [e.detail for e in events if e.kind == "provision"]
    assert "AVAILABLE -> DEPLOYING (deploy)" in details
    assert deploy_events[-1].kind == "deployed"
    assert deploy_events[-1].provision_state != 0  # the node's state rides along


def test_resuming_after_revision_n_returns_exactly_the_later_events(cell, rack, image) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 2)
    for node_id in ("d0", "d1"):
        assert not cell.wait(cell.deploy(node_id, image.url, image.checksum)).HasField("error")
    everything = _collect(cell, lambda e: _deployed(e) and e.node == node_name("d1"))
    middle = everything[len(everything) // 2]
    resumed = _collect(
        cell,
        lambda e: e.revision == everything[-1].revision,
        since=middle.revision,
    )
    assert [e.revision for e in resumed] == [
        e.revision for e in everything if e.revision > middle.revision
    ]
    assert resumed[0].revision > middle.revision


def test_watch_of_all_cells_at_a_leaf_means_its_own_cell(cell, rack, image) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    assert not cell.wait(cell.deploy("d0", image.url, image.checksum)).HasField("error")
    mine = _collect(cell, _deployed)
    every = _collect(cell, _deployed, parent="cells/-")
    assert [e.revision for e in every] == [e.revision for e in mine]
    assert all(e.node.startswith("cells/rack-1/nodes/") for e in every)


def test_watch_of_another_cell_is_not_found(cell) -> None:  # type: ignore[no-untyped-def]
    def first_event(request: node_service_pb2.WatchNodesRequest) -> None:
        stream = cell.nodes.WatchNodes(request, timeout=STREAM_GUARD)
        try:
            next(iter(stream))
        finally:
            stream.cancel()

    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        first_event,
        node_service_pb2.WatchNodesRequest(parent="cells/rack-9"),
    )
    assert "rack-9" in err.details()
