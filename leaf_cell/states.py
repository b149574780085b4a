"""The provisioning state machine, declared once as data.

States are the ``ProvisionState`` enum of the wire API (stored by their short name, ``ENROLL``).
:data:`TRANSITIONS` is the whole machine: ``(source, event) -> target``. Stable states are
where a node rests; transient states are where a task is working, and each has a ``fail``
edge, so that a conductor that dies mid-task can always move its nodes somewhere an operator
can act on (see :func:`failure_target`). ``docs/states.md`` is drawn from this table by
``python -m leaf_cell.states``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DELETABLE",
    "GOAL",
    "STABLE",
    "TRANSIENT",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
    "failure_target",
    "next_state",
]


class State(StrEnum):
    """Provision states, by their wire name without the ``PROVISION_STATE_`` prefix.

    Each member carries its meaning as its docstring (``State.ENROLL.__doc__``).
    """

    def __new__(cls, value: str, doc: str) -> State:
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    ENROLL = ("ENROLL", "Known to the cell; BMC credentials not yet proven.")
    VERIFYING = ("VERIFYING", "Checking the BMC credentials with a power-status call.")
    MANAGEABLE = ("MANAGEABLE", "The cell controls the BMC; not offered for deployment.")
    CLEANING = ("CLEANING", "Preparing the node for the next tenant (it is powered off).")
    CLEAN_FAILED = ("CLEAN_FAILED", "Cleaning failed; last_error says why.")
    AVAILABLE = ("AVAILABLE", "Clean, powered off, offered to schedulers.")
    DEPLOYING = ("DEPLOYING", "Preparing boot, writing the image, rebooting into it.")
    WAIT_CALL_BACK = (
        "WAIT_CALL_BACK",
        "Booting the deploy ramdisk; waiting for its agent to call back.",
    )
    DEPLOY_FAILED = ("DEPLOY_FAILED", "Deployment failed; last_error names the phase.")
    ACTIVE = ("ACTIVE", "Running the deployed image.")
    DELETING = ("DELETING", "Tearing the instance down.")
    ERROR = ("ERROR", "Tear-down failed; an operator has to look.")


class Event(StrEnum):
    """What moves a node: operator actions and task outcomes."""

    MANAGE = "manage"
    PROVIDE = "provide"
    DEPLOY = "deploy"
    UNDEPLOY = "undeploy"
    ABORT = "abort"
    WAIT = "wait"
    RESUME = "resume"
    DONE = "done"
    FAIL = "fail"


class IllegalTransition(ValueError):
    """``event`` is not allowed in ``state``."""

    def __init__(self, state: State, event: Event) -> None:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        super().__init__(
            f"action {event.value!r} is not allowed in state {state.value}"
            f" (allowed: {', '.join(allowed) or 'none'})"
        )
        self.state = state
        self.event = event


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.ENROLL, E.MANAGE): S.VERIFYING,
    (S.VERIFYING, E.DONE): S.MANAGEABLE,
    (S.VERIFYING, E.FAIL): S.ENROLL,
    (S.MANAGEABLE, E.MANAGE): S.VERIFYING,
    (S.MANAGEABLE, E.PROVIDE): S.CLEANING,
    (S.CLEANING, E.DONE): S.AVAILABLE,
    (S.CLEANING, E.FAIL): S.CLEAN_FAILED,
    (S.CLEAN_FAILED, E.MANAGE): S.VERIFYING,
    (S.CLEAN_FAILED, E.PROVIDE): S.CLEANING,
    (S.AVAILABLE, E.MANAGE): S.VERIFYING,
    (S.AVAILABLE, E.DEPLOY): S.DEPLOYING,
    (S.DEPLOYING, E.WAIT): S.WAIT_CALL_BACK,
    (S.DEPLOYING, E.DONE): S.ACTIVE,
    (S.DEPLOYING, E.FAIL): S.DEPLOY_FAILED,
    (S.WAIT_CALL_BACK, E.RESUME): S.DEPLOYING,
    (S.WAIT_CALL_BACK, E.ABORT): S.DEPLOY_FAILED,
    (S.WAIT_CALL_BACK, E.FAIL): S.DEPLOY_FAILED,
    (S.DEPLOY_FAILED, E.DEPLOY): S.DEPLOYING,
    (S.DEPLOY_FAILED, E.UNDEPLOY): S.DELETING,
    (S.ACTIVE, E.DEPLOY): S.DEPLOYING,
    (S.ACTIVE, E.UNDEPLOY): S.DELETING,
    (S.DELETING, E.DONE): S.CLEANING,
    (S.DELETING, E.FAIL): S.ERROR,
    (S.ERROR, E.UNDEPLOY): S.DELETING,
}

TRANSIENT: frozenset[State] = frozenset(
    {S.VERIFYING, S.CLEANING, S.DEPLOYING, S.WAIT_CALL_BACK, S.DELETING}
)
"""States in which a task is working on the node."""

STABLE: frozenset[State] = frozenset(State) - TRANSIENT
"""States in which a node rests until an operator or a scheduler acts."""

GOAL: dict[State, State] = {
    S.VERIFYING: S.MANAGEABLE,
    S.CLEANING: S.AVAILABLE,
    S.DEPLOYING: S.ACTIVE,
    S.WAIT_CALL_BACK: S.ACTIVE,
    S.DELETING: S.AVAILABLE,
}
"""Where each transient state is heading when all goes well (the node's target state)."""

DELETABLE: frozenset[State] = frozenset({S.ENROLL, S.MANAGEABLE, S.AVAILABLE})
"""States from which a node may be deleted."""

INITIAL = S.ENROLL


def next_state(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``; raises :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def failure_target(state: State) -> State:
    """Where a node in a transient ``state`` goes when its task fails or its conductor died."""
    return next_state(state, Event.FAIL)


def mermaid() -> str:
    """The machine as a Mermaid state diagram, generated from :data:`TRANSITIONS`."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL.value}"]
    for (src, event), dst in TRANSITIONS.items():
        lines.append(f"    {src.value} --> {dst.value}: {event.value}")
    return "\n".join(lines)


def document() -> str:
    """docs/states.md, generated from the table; a test keeps the committed file current."""
    rows = "\n".join(
        f"| `{s.value}` | {'transient' if s in TRANSIENT else 'stable'} | {s.__doc__} |"
        for s in State
    )
    return (
        "# Provisioning states\n\n"
        "Generated by `python -m leaf_cell.states > docs/states.md` from the transition table in "
        "`leaf_cell/states.py`; do not edit by hand.\n\n"
        "```mermaid\n" + mermaid() + "\n```\n\n"
        "| state | kind | meaning |\n|---|---|---|\n" + rows + "\n\n"
        "Every transient state has a `fail` edge: a conductor that restarts moves nodes it "
        "finds in a transient state along it, with `last_error` saying so.\n"
    )


if __name__ == "__main__":
    print(document(), end="")
