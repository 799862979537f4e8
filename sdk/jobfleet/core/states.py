"""The instance state machine: which transitions are legal."""

from __future__ import annotations

from jobfleet.core.models import Status

TRANSITIONS: dict[Status, frozenset[Status]] = {
    # Pending -> Errored: every attempt of the task that owned it died before reaching it.
    Status.PENDING: frozenset({Status.IN_PROGRESS, Status.CANCELLED, Status.ERRORED}),
    # InProgress -> Pending is a retry (after a failed attempt or a lost worker).
    Status.IN_PROGRESS: frozenset(
        {Status.COMPLETED, Status.ERRORED, Status.PENDING, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset(),
    Status.ERRORED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def can_move(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def check_move(current: Status, target: Status) -> None:
    if not can_move(current, target):
        raise IllegalTransition(f"a job instance cannot go from {current} to {target}")


def became_terminal(before: Status | None, after: Status | None) -> bool:
    """A write that moved an instance into a terminal state (None: no document)."""
    return after is not None and after.terminal and not (before is not None and before.terminal)
