"""Fault option grammar, deterministic target selection and control-API fault bodies."""

from __future__ import annotations

import pytest

from rackcells.sim.faults import (
    FaultSpec,
    FaultSpecError,
    FaultState,
    apply_changes,
    parse_fault_spec,
    plan_faults,
    select_targets,
)

NAMES = [f"r1-n{i:04d}" for i in range(1, 1001)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unreachable:0.05", FaultSpec("unreachable", None, ("0.05",))),
        ("unreachable", FaultSpec("unreachable", None, ("all",))),
        ("slow=2.5:r1-n0007", FaultSpec("slow", 2.5, ("r1-n0007",))),
        ("slow:3", FaultSpec("slow", 2.0, ("3",))),
        ("loss=0.3:10%", FaultSpec("loss", 0.3, ("10%",))),
        ("bad-credentials:3,7-9", FaultSpec("bad-credentials", None, ("3", "7-9"))),
        ("bad-credentials=s3cret:4", FaultSpec("bad-credentials", "s3cret", ("4",))),
        ("LOSS=1:all", FaultSpec("loss", 1.0, ("all",))),
    ],
)
def test_parse_valid_specs(text: str, expected: FaultSpec) -> None:
    assert parse_fault_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("melting:1", "unknown fault kind"),
        ("unreachable=1:2", "takes no value"),
        ("slow=fast:1", "not a number"),
        ("slow=-1:1", "0..3600"),
        ("loss=1.5:1", "fraction 0..1"),
        ("loss=0.1:", "no target"),
        ("bad-credentials=:1", "empty password"),
    ],
)
def test_parse_rejects_bad_specs(text: str, reason: str) -> None:
    with pytest.raises(FaultSpecError, match=reason):
        parse_fault_spec(text)


def test_fraction_is_deterministic_per_seed_and_sized_by_rounding() -> None:
    spec = parse_fault_spec("unreachable:0.05")
    picked = select_targets(spec, NAMES, seed=7)
    assert len(picked) == 50
    assert picked == select_targets(spec, NAMES, seed=7)
    assert picked != select_targets(spec, NAMES, seed=8)
    assert len(select_targets(parse_fault_spec("slow:5%"), NAMES, seed=7)) == 50


def test_kinds_pick_independently_and_small_fractions_pick_one() -> None:
    a = select_targets(parse_fault_spec("unreachable:0.1"), NAMES, seed=1)
    b = select_targets(parse_fault_spec("slow:0.1"), NAMES, seed=1)
    assert a != b
    assert len(select_targets(parse_fault_spec("loss:0.01"), NAMES[:5], seed=1)) == 1
    assert select_targets(parse_fault_spec("loss:0%"), NAMES, seed=1) == []


def test_names_indices_ranges_and_all() -> None:
    assert select_targets(parse_fault_spec("slow:r1-n0007,3,9-11"), NAMES, 0) == [3, 7, 9, 10, 11]
    assert select_targets(parse_fault_spec("slow:all"), NAMES[:3], 0) == [1, 2, 3]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("0", "out of range"),
        ("1001", "out of range"),
        ("9-3", "empty index range"),
        ("r2-n0001", "unknown target"),
        ("1.5", "fraction out of range"),
    ],
)
def test_bad_targets(target: str, reason: str) -> None:
    with pytest.raises(FaultSpecError, match=reason):
        select_targets(parse_fault_spec(f"slow:{target}"), NAMES, 0)


def test_plan_combines_faults_on_one_node() -> None:
    specs = [parse_fault_spec(s) for s in ("slow=1.5:2", "loss=0.25:2,3", "bad-credentials:3")]
    plan = plan_faults(specs, NAMES[:4], seed=0, password="pw")
    assert plan == {
        2: FaultState(slow=1.5, loss=0.25),
        3: FaultState(loss=0.25, expected_password="not-pw"),
    }


def test_control_body_updates_and_clears() -> None:
    state = FaultState(slow=2.0)
    apply_changes(state, {"unreachable": True, "loss": 0.5}, "pw")
    assert state == FaultState(unreachable=True, slow=2.0, loss=0.5)
    apply_changes(state, {"clear": True, "bad_credentials": True}, "pw")
    assert state == FaultState(expected_password="not-pw")
    apply_changes(state, {"bad_credentials": "other"}, "pw")
    assert state.expected_password == "other"
    assert state.as_json()["bad_credentials"] is True
    apply_changes(state, {"bad_credentials": False}, "pw")
    assert state == FaultState()


@pytest.mark.parametrize(
    "body",
    [
        {"slow": "2"},
        {"loss": 2.0},
        {"unreachable": 1},
        {"bogus": True},
        {"slow": True},
    ],
)
def test_control_body_is_validated_before_anything_changes(body: dict[str, object]) -> None:
    state = FaultState(slow=1.0)
    with pytest.raises(FaultSpecError):
        apply_changes(state, {"unreachable": True, **body}, "pw")
    assert state == FaultState(slow=1.0)
