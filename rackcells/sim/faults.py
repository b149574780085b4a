"""Fault injection: what can go wrong with a simulated BMC, and which BMCs it hits.

A rack of real servers always has a few BMCs that are dead, slow, lossy or configured with a
password nobody wrote down; the leaf cell must cope.  Faults are set per BMC at start-up from
``--fault`` options and can be changed later through the control API.

Option grammar (``KIND[=VALUE][:TARGET[,TARGET...]]``, target defaults to ``all``)::

    unreachable:0.05             5 % of the rack never answers
    slow=2.0:r1-n0007            that node answers 2 s late
    loss=0.3:10%                 10 % of the rack drops 30 % of received packets
    bad-credentials:3,7-9        nodes 3, 7, 8, 9 expect a password other than the inventory's
    bad-credentials=s3cret:4     node 4 expects "s3cret"

A target is ``all``, a fraction (``0.05``) or percentage (``5%``) of the rack, a 1-based node
index (``7``), an index range (``7-9``) or a node name.  Fractions pick ``round(f * N)`` nodes
(at least one) with a generator seeded from ``--seed`` and the fault kind, so a run is
reproducible and different kinds pick independently.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KINDS = ("unreachable", "slow", "loss", "bad-credentials")
_DEFAULT_SLOW_SECONDS = 2.0
_DEFAULT_LOSS = 0.5
_INDEX_RANGE = re.compile(r"^(\d+)-(\d+)$")


class FaultSpecError(ValueError):
    """A ``--fault`` option or a control-API fault body that cannot be understood."""


@dataclass
class FaultState:
    """The faults currently active on one BMC."""

    unreachable: bool = False
    slow: float = 0.0
    loss: float = 0.0
    expected_password: str | None = None

    def as_json(self) -> dict[str, object]:
        """Report form; the substitute password is not echoed, only its presence."""
        return {
            "unreachable": self.unreachable,
            "slow": self.slow,
            "loss": self.loss,
            "bad_credentials": self.expected_password is not None,
        }

    def clear(self) -> None:
        """Back to a healthy BMC."""
        self.unreachable = False
        self.slow = 0.0
        self.loss = 0.0
        self.expected_password = None


def wrong_password_for(password: str) -> str:
    """The password a ``bad-credentials`` BMC expects when none was given explicitly."""
    return f"not-{password}"


@dataclass(frozen=True)
class FaultSpec:
    """One parsed ``--fault`` option."""

    kind: str
    value: float | str | None
    targets: tuple[str, ...]


def parse_fault_spec(text: str) -> FaultSpec:
    """Parse ``KIND[=VALUE][:TARGETS]``; raises :class:`FaultSpecError` with a reason."""
    head, sep, tail = text.rpartition(":")
    if not sep:
        head, tail = text, "all"
    kind, has_value, raw_value = head.partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} in {text!r} (one of {', '.join(KINDS)})")
    targets = tuple(t.strip() for t in tail.split(",") if t.strip())
    if not targets:
        raise FaultSpecError(f"no target in {text!r}")
    value: float | str | None = None
    if kind == "unreachable":
        if has_value:
            raise FaultSpecError(f"unreachable takes no value: {text!r}")
    elif kind == "bad-credentials":
        value = raw_value if has_value else None
        if has_value and not raw_value:
            raise FaultSpecError(f"empty password in {text!r}")
    else:
        default = _DEFAULT_SLOW_SECONDS if kind == "slow" else _DEFAULT_LOSS
        value = _parse_number(raw_value, text) if has_value else default
        _check_value(kind, value, text)
    return FaultSpec(kind=kind, value=value, targets=targets)


def _parse_number(raw: str, text: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise FaultSpecError(f"not a number: {raw!r} in {text!r}") from None


def _check_value(kind: str, value: float, text: str) -> None:
    if kind == "slow" and not 0.0 <= value <= 3600.0:
        raise FaultSpecError(f"slow delay must be 0..3600 seconds: {text!r}")
    if kind == "loss" and not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"loss must be a fraction 0..1: {text!r}")


def select_targets(spec: FaultSpec, names: Sequence[str], seed: int) -> list[int]:
    """1-based indices of the nodes a spec hits; ``names[i - 1]`` is node ``i``'s name."""
    count = len(names)
    by_name = {name: i for i, name in enumerate(names, start=1)}
    chosen: set[int] = set()
    for target in spec.targets:
        chosen.update(_resolve_target(target, spec, by_name, count, seed))
    return sorted(chosen)


def _resolve_target(
    target: str, spec: FaultSpec, by_name: Mapping[str, int], count: int, seed: int
) -> list[int]:
    if target == "all":
        return list(range(1, count + 1))
    if target in by_name:
        return [by_name[target]]
    fraction = _as_fraction(target)
    if fraction is not None:
        picks = max(1, round(fraction * count)) if fraction > 0 else 0
        rng = random.Random(f"{seed}/{spec.kind}/{target}")  # noqa: S311 - reproducible, not secret
        return rng.sample(range(1, count + 1), min(picks, count))
    if target.isdigit():
        return [_checked_index(int(target), count, target)]
    match = _INDEX_RANGE.match(target)
    if match:
        low, high = (_checked_index(int(g), count, target) for g in match.groups())
        if low > high:
            raise FaultSpecError(f"empty index range {target!r}")
        return list(range(low, high + 1))
    raise FaultSpecError(f"unknown target {target!r} (not a node name, index, range or fraction)")


def _as_fraction(target: str) -> float | None:
    try:
        if target.endswith("%"):
            value = float(target[:-1]) / 100.0
        elif "." in target:
            value = float(target)
        else:
            return None
    except ValueError:
        return None
    if not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"fraction out of range: {target!r}")
    return value


def _checked_index(index: int, count: int, target: str) -> int:
    if not 1 <= index <= count:
        raise FaultSpecError(f"node index out of range 1..{count}: {target!r}")
    return index


def apply_spec(state: FaultState, spec: FaultSpec, password: str) -> None:
    """Switch on the fault a spec describes; other faults on the BMC stay as they are."""
    if spec.kind == "unreachable":
        state.unreachable = True
    elif spec.kind == "slow":
        state.slow = float(spec.value or 0.0)
    elif spec.kind == "loss":
        state.loss = float(spec.value or 0.0)
    else:
        state.expected_password = (
            str(spec.value) if spec.value is not None else wrong_password_for(password)
        )


def plan_faults(
    specs: Sequence[FaultSpec], names: Sequence[str], seed: int, password: str
) -> dict[int, FaultState]:
    """Initial faults for a rack: node index -> state, only for nodes with a fault."""
    states: dict[int, FaultState] = {}
    for spec in specs:
        for index in select_targets(spec, names, seed):
            apply_spec(states.setdefault(index, FaultState()), spec, password)
    return states


def apply_changes(state: FaultState, body: Mapping[str, object], password: str) -> None:
    """Apply a control-API fault body such as ``{"slow": 2.0}`` or ``{"clear": true}``.

    Keys: ``clear`` (reset first), ``unreachable`` (bool), ``slow`` (seconds, 0 = off),
    ``loss`` (fraction, 0 = off), ``bad_credentials`` (bool, or the password to expect).
    The body is validated completely before anything changes.
    """
    allowed = {"clear", "unreachable", "slow", "loss", "bad_credentials"}
    unknown = set(body) - allowed
    if unknown:
        raise FaultSpecError(f"unknown fault keys: {', '.join(sorted(unknown))}")
    new = FaultState() if body.get("clear") else FaultState(**vars(state))
    if "unreachable" in body:
        new.unreachable = _as_bool(body["unreachable"], "unreachable")
    for key in ("slow", "loss"):
        if key in body:
            raw = body[key]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise FaultSpecError(f"{key} must be a number")
            _check_value(key, float(raw), f"{key}={raw}")
            setattr(new, key, float(raw))
    if "bad_credentials" in body:
        raw = body["bad_credentials"]
        if isinstance(raw, str) and raw:
            new.expected_password = raw
        else:
            enabled = _as_bool(raw, "bad_credentials")
            new.expected_password = wrong_password_for(password) if enabled else None
    for key, value in vars(new).items():
        setattr(state, key, value)


def _as_bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise FaultSpecError(f"{key} must be true or false")
    return value
