"""The provisioning state machine declared in leaf_cell.states is complete and consistent."""

from __future__ import annotations

from collections import deque

import pytest

from leaf_cell import states
from leaf_cell.states import INITIAL, STABLE, TRANSIENT, TRANSITIONS, Event, State
from rackcells.v1 import node_pb2


def test_every_state_is_reachable_from_enroll() -> None:
    seen = {INITIAL}
    queue = deque([INITIAL])
    while queue:
        src = queue.popleft()
        for (s, _), dst in TRANSITIONS.items():
            if s is src and dst not in seen:
                seen.add(dst)
                queue.append(dst)
    assert seen == set(State)


@pytest.mark.parametrize("state", sorted(TRANSIENT))
def test_every_transient_state_has_a_failure_edge_to_a_stable_state(state: State) -> None:
    target = states.failure_target(state)
    assert target in STABLE


def test_every_stable_state_can_be_left() -> None:
    for state in STABLE:
        assert any(s is state for (s, _) in TRANSITIONS), f"{state} is a dead end"


def test_states_match_the_wire_enum() -> None:
    wire = {
        n.removeprefix("PROVISION_STATE_")
        for n in node_pb2.ProvisionState.keys()  # noqa: SIM118 - enum wrapper, not a dict
        if n != "PROVISION_STATE_UNSPECIFIED"
    }
    assert wire == {s.value for s in State}


def test_illegal_transition_names_the_allowed_actions() -> None:
    with pytest.raises(states.IllegalTransition, match="allowed: manage"):
        states.next_state(State.ENROLL, Event.DEPLOY)


def test_every_transient_state_has_a_stable_goal() -> None:
    assert set(states.GOAL) == set(TRANSIENT)
    assert all(goal in STABLE for goal in states.GOAL.values())


def test_verify_failure_returns_to_enroll() -> None:
    assert states.failure_target(State.VERIFYING) is State.ENROLL


def test_diagram_is_drawn_from_the_table() -> None:
    diagram = states.mermaid()
    assert diagram.count("-->") == len(TRANSITIONS) + 1


def test_docs_diagram_is_current() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "states.md"
    assert doc.read_text() == states.document(), (
        "docs/states.md is stale: python -m leaf_cell.states > docs/states.md"
    )
