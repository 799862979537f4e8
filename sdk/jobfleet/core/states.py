"""The instance state machine: which transitions are legal.

`TRANSITIONS` is the one statement of the instance moves (docs/design.md, State). The
stores do not check each move against it; they make every move a conditional write
whose condition is derived from it: a claim moves what is `claimable`, a cancel or a
failed shard ends what is `UNFINISHED`, an outcome applies to what is InProgress.
"""

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


# The statuses an instance can still leave: what a cancel ends, and what a shard whose
# workers are gone fails. Every other status is terminal (`Status.terminal`).
UNFINISHED = frozenset(status for status, targets in TRANSITIONS.items() if targets)


def sources(target: Status) -> frozenset[Status]:
    """The statuses from which an instance may move to `target`: the condition of the
    store write that makes the move."""
    return frozenset(status for status, targets in TRANSITIONS.items() if target in targets)


def in_order(statuses: frozenset[Status]) -> list[str]:
    """Status values in their declared order, for a query's `IN` list."""
    return [status.value for status in Status if status in statuses]


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
