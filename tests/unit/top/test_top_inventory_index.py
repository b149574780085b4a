"""The inventory index: snapshots, changes, deletes, resets, counters, trait filters, MACs.

Pure in-memory checks of top_cell.inventory.InventoryIndex, driven with the same
InventoryUpdate messages the leaves stream.
"""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc

import pytest

from common.keys import normalize_mac
from rackcells.v1 import inventory_service_pb2, node_pb2
from top_cell.capacity import FIELDS, CapacityQuery
from top_cell.inventory import InventoryIndex, ResyncNeeded

PS = node_pb2.ProvisionState
CELL = "rack-1"


def node(node_id: str, **fields) -> inventory_service_pb2.NodeSummary:  # type: ignore[no-untyped-def]
    values = {
        "uid": f"uid-{node_id}",
        "resource_class": "baremetal",
        "provision_state": PS.PROVISION_STATE_AVAILABLE,
    }
    values.update(fields)
    return inventory_service_pb2.NodeSummary(node_id=node_id, **values)


def update(revision: int, upserts=(), deleted=(), *, reset=False, complete=False, cell=CELL):  # type: ignore[no-untyped-def]
    return inventory_service_pb2.InventoryUpdate(
        cell=f"cells/{cell}",
        revision=revision,
        reset=reset,
        upserts=list(upserts),
        deleted=list(deleted),
        snapshot_complete=complete,
    )


def counts(index: InventoryIndex, cell: str = CELL, **query) -> dict[str, int]:  # type: ignore[no-untyped-def]
    q = CapacityQuery(
        query.get("resource_class", ""),
        frozenset(query.get("required", ())),
        frozenset(query.get("forbidden", ())),
    )
    return dict(zip(FIELDS, index.count(cell, q), strict=True))


def snapshot(index: InventoryIndex, revision: int, *nodes, cell: str = CELL) -> None:  # type: ignore[no-untyped-def]
    index.apply(cell, update(revision, nodes, reset=True, complete=True, cell=cell), 100.0)


def test_snapshot_in_parts_becomes_visible_only_when_complete() -> None:
    index = InventoryIndex()
    snapshot(index, 3, node("old"))
    assert index.apply(CELL, update(7, [node("a")], reset=True), 1.0) is None
    assert index.apply(CELL, update(7, [node("b")]), 2.0) is None
    assert [r.node_id for r in index.nodes(CELL)] == ["old"]  # old figures meanwhile
    assert index.generation(CELL) == 3
    done = index.apply(CELL, update(7, [node("c")], complete=True), 3.0)
    assert done is not None and done.reset
    assert sorted(r.node_id for r in done.upserts) == ["a", "b", "c"]
    assert sorted(r.node_id for r in index.nodes(CELL)) == ["a", "b", "c"]
    assert index.generation(CELL) == 7 and index.as_of(CELL) == 3.0
    assert index.locate_uid("uid-old") is None
    assert index.locate_uid("uid-b") == (CELL, "b")


def test_aborted_snapshot_leaves_the_old_figures() -> None:
    index = InventoryIndex()
    snapshot(index, 3, node("old"))
    index.apply(CELL, update(9, [node("new")], reset=True), 1.0)
    index.abort_snapshot(CELL)
    assert [r.node_id for r in index.nodes(CELL)] == ["old"] and index.generation(CELL) == 3


def test_counts_follow_upserts_and_deletes() -> None:
    index = InventoryIndex()
    snapshot(
        index,
        1,
        node("a"),
        node("b", maintenance=True),
        node("c", allocation="cells/rack-1/allocations/1"),
        node("d", provision_state=PS.PROVISION_STATE_DEPLOYING),
        node("e", provision_state=PS.PROVISION_STATE_WAIT_CALL_BACK),
        node("f", provision_state=PS.PROVISION_STATE_ACTIVE, allocation="x"),
        node("g", provision_state=PS.PROVISION_STATE_CLEAN_FAILED),
        node("h", provision_state=PS.PROVISION_STATE_DEPLOY_FAILED),
        node("i", provision_state=PS.PROVISION_STATE_ERROR),
        node("j", provision_state=PS.PROVISION_STATE_MANAGEABLE),
    )
    assert counts(index) == {
        "total": 10,
        "available": 1,
        "allocated": 2,
        "deploying": 2,
        "active": 1,
        "failed": 3,
        "maintenance": 1,
    }
    done = index.apply(CELL, update(2, [node("b"), node("j")], ["g", "missing"]), 5.0)
    assert done is not None and not done.reset
    assert [r.node_id for r in done.upserts] == ["b", "j"] and done.deleted == ["g"]
    c = counts(index)
    assert (c["total"], c["available"], c["failed"], c["maintenance"]) == (9, 3, 2, 0)
    assert index.generation(CELL) == 2 and index.as_of(CELL) == 5.0


def test_heartbeat_moves_as_of_and_changes_nothing() -> None:
    index = InventoryIndex()
    snapshot(index, 4, node("a"))
    done = index.apply(CELL, update(4), 200.0)
    assert done is not None and not (done.upserts or done.deleted)
    assert index.as_of(CELL) == 200.0 and counts(index)["total"] == 1


def test_reset_replaces_everything_including_the_indexes() -> None:
    index = InventoryIndex()
    snapshot(index, 5, node("a", macs=["52:54:00:00:00:01"]), node("b"))
    snapshot(index, 1, node("z", macs=["52:54:00:00:00:02"]))
    assert [r.node_id for r in index.nodes(CELL)] == ["z"]
    assert index.locate_mac("52:54:00:00:00:01") is None
    assert index.locate_mac("52:54:00:00:00:02") == (CELL, "z")
    assert counts(index)["total"] == 1


def test_changes_without_a_snapshot_ask_for_one() -> None:
    with pytest.raises(ResyncNeeded):
        InventoryIndex().apply(CELL, update(3, [node("a")]), 1.0)


def test_trait_and_class_filters() -> None:
    index = InventoryIndex()
    snapshot(
        index,
        1,
        node("a", traits=["CUSTOM_A", "CUSTOM_B"]),
        node("b", traits=["CUSTOM_A"]),
        node("c", traits=["CUSTOM_B"], resource_class="gpu"),
        node("d"),
    )
    assert counts(index, required={"CUSTOM_A"})["total"] == 2
    assert counts(index, required={"CUSTOM_A", "CUSTOM_B"})["total"] == 1
    assert counts(index, forbidden={"CUSTOM_A"})["total"] == 2
    assert counts(index, required={"CUSTOM_B"}, forbidden={"CUSTOM_A"})["total"] == 1
    assert counts(index, resource_class="gpu")["total"] == 1
    assert counts(index, resource_class="gpu", required={"CUSTOM_A"})["total"] == 0
    assert counts(index, resource_class="nope")["total"] == 0
    assert counts(index, cell="unknown")["total"] == 0
    # Traits change: the node moves between groups.
    index.apply(CELL, update(2, [node("d", traits=["CUSTOM_A"])]), 1.0)
    assert counts(index, required={"CUSTOM_A"})["total"] == 3


def test_equal_trait_sets_are_shared_and_strings_interned() -> None:
    index = InventoryIndex()
    snapshot(
        index,
        1,
        node("a", traits=["CUSTOM_X", "CUSTOM_Y"]),
        node("b", traits=["CUSTOM_Y", "CUSTOM_X"]),
    )
    a, b = index.nodes(CELL)
    assert a.traits is b.traits
    assert a.resource_class is sys.intern("baremetal")


def test_macs_are_normalised_and_indexed_across_cells() -> None:
    index = InventoryIndex()
    snapshot(index, 1, node("a", macs=["52-54-00-AA-BB-01"]), cell="rack-1")
    snapshot(index, 1, node("a", macs=["52:54:00:aa:bb:02"]), cell="rack-2")
    assert index.locate_mac("52:54:00:AA:BB:01") == ("rack-1", "a")
    assert index.locate_mac("5254.00aa.bb02") == ("rack-2", "a")
    assert index.locate_mac("not a mac") is None
    assert index.locate_uid("uid-a") in {("rack-1", "a"), ("rack-2", "a")}
    # A MAC moved to another node of the same cell.
    index.apply("rack-1", update(2, [node("a"), node("b", macs=["52:54:00:aa:bb:01"])]), 1.0)
    assert index.locate_mac("52:54:00:aa:bb:01") == ("rack-1", "b")


def test_a_mac_claimed_by_two_cells_keeps_both_holders() -> None:
    index = InventoryIndex()
    mac = "52:54:00:00:00:09"
    snapshot(index, 1, node("a", macs=[mac]), cell="rack-1")
    snapshot(index, 1, node("b", macs=[mac]), cell="rack-2")
    assert index.locate_mac(mac) == ("rack-1", "a")  # first holder wins
    assert index.mac_conflicts() == {mac: [("rack-1", "a"), ("rack-2", "b")]}
    # Another update of the conflicting node does not change who wins.
    index.apply("rack-2", update(2, [node("b", macs=[mac], maintenance=True)]), 1.0)
    assert index.locate_mac(mac) == ("rack-1", "a")
    # The first holder goes: the second one takes over; no conflict remains.
    index.apply("rack-1", update(2, deleted=["a"]), 1.0)
    assert index.locate_mac(mac) == ("rack-2", "b")
    assert index.mac_conflicts() == {}
    index.forget("rack-2")
    assert index.locate_mac(mac) is None and index.locate_uid("uid-b") is None


def test_note_allocation_counts_the_claim_until_the_stream_confirms() -> None:
    index = InventoryIndex()
    snapshot(index, 1, node("a"), node("b"))
    assert index.note_allocation(CELL, "a", "cells/rack-1/allocations/1")
    assert counts(index)["available"] == 1 and counts(index)["allocated"] == 1
    assert not index.note_allocation(CELL, "a", "cells/rack-1/allocations/2")
    assert not index.note_allocation(CELL, "zz", "x")
    index.apply(CELL, update(2, [node("a", allocation="cells/rack-1/allocations/1")]), 1.0)
    assert counts(index)["allocated"] == 1


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef"),
        ("52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef"),
        ("525400abcdef", "52:54:00:ab:cd:ef"),
        ("5254.00ab.cdef", "52:54:00:ab:cd:ef"),
        ("52:54:00:ab:cd", None),
        ("52:54-00:ab:cd:ef", None),
        ("", None),
    ],
)
def test_normalize_mac(text: str, mac: str | None) -> None:
    assert normalize_mac(text) == mac


def test_summaries_cost_well_under_a_kilobyte_each() -> None:
    """The index's own memory per node, measured on 8 cells x 1,000 nodes with two MACs and a
    few shared trait sets each: at this rate 40,000 nodes take about 25 MB."""
    rng = random.Random(7)
    pool = [f"CUSTOM_T{i}" for i in range(6)]
    messages = []
    for c in range(8):
        nodes = [
            node(
                f"node-{i:05d}",
                uid=f"{c:08x}-0000-4000-8000-{i:012x}",
                resource_class=rng.choice(["baremetal", "gpu-large"]),
                traits=sorted(rng.sample(pool, 2)),
                allocation=f"cells/rack-{c}/allocations/{i}" if i % 3 == 0 else "",
                macs=[
                    f"52:54:{c:02x}:00:{i // 256:02x}:{i % 256:02x}",
                    f"52:55:{c:02x}:00:{i // 256:02x}:{i % 256:02x}",
                ],
            )
            for i in range(1000)
        ]
        messages.append(update(1, nodes, reset=True, complete=True, cell=f"rack-{c}"))
    tracemalloc.start()
    index = InventoryIndex()
    for c, message in enumerate(messages):
        index.apply(f"rack-{c}", message, 1.0)
    del messages, message  # with them the wrappers protobuf made while they were read
    gc.collect()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(counts(index, cell=f"rack-{c}")["total"] for c in range(8)) == 8000
    assert size / 8000 < 1000, f"{size / 8000:.0f} bytes per summary"
