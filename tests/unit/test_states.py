"""The job instance state machine: every pair of statuses is either legal or refused."""

from __future__ import annotations

import itertools

import pytest

from jobfleet.core.models import TERMINAL, Status
from jobfleet.core.states import (
    TRANSITIONS,
    UNFINISHED,
    IllegalTransition,
    became_terminal,
    can_move,
    check_move,
    in_order,
    sources,
)

# docs/design.md, "State": the only moves a job instance may make.
LEGAL: set[tuple[Status, Status]] = {
    (Status.PENDING, Status.IN_PROGRESS),  # a worker claims it
    (Status.PENDING, Status.CANCELLED),  # the orchestration is cancelled
    (Status.PENDING, Status.ERRORED),  # its task ran out of attempts before reaching it
    (Status.IN_PROGRESS, Status.COMPLETED),
    (Status.IN_PROGRESS, Status.ERRORED),
    (Status.IN_PROGRESS, Status.PENDING),  # a retry after a failed attempt or a lost worker
    (Status.IN_PROGRESS, Status.CANCELLED),
}
ILLEGAL = [pair for pair in itertools.product(Status, Status) if pair not in LEGAL]


def _ids(pair: tuple[Status, Status]) -> str:
    return f"{pair[0]}->{pair[1]}"


@pytest.mark.parametrize("move", sorted(LEGAL), ids=_ids)
def test_legal_move_is_allowed(move: tuple[Status, Status]) -> None:
    current, target = move
    assert can_move(current, target)
    check_move(current, target)


@pytest.mark.parametrize("move", ILLEGAL, ids=_ids)
def test_illegal_move_is_refused_with_both_states_named(move: tuple[Status, Status]) -> None:
    current, target = move
    assert not can_move(current, target)
    with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
        check_move(current, target)


def test_every_status_has_a_rule() -> None:
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_terminal_statuses_are_exactly_those_with_no_way_out(status: Status) -> None:
    way_out = any(can_move(status, target) for target in Status)
    assert status.terminal is not way_out


def test_illegal_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot go from Completed to InProgress"):
        check_move(Status.COMPLETED, Status.IN_PROGRESS)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (Status.IN_PROGRESS, Status.COMPLETED, True),
        (Status.IN_PROGRESS, Status.ERRORED, True),
        (Status.PENDING, Status.CANCELLED, True),
        (None, Status.COMPLETED, True),  # first sight of a document already finished
        (Status.COMPLETED, Status.COMPLETED, False),  # a rewrite of a finished instance
        (Status.PENDING, Status.IN_PROGRESS, False),
        (Status.IN_PROGRESS, Status.PENDING, False),  # a retry
        (Status.COMPLETED, None, False),  # a deletion
    ],
)
def test_became_terminal(before: Status | None, after: Status | None, expected: bool) -> None:
    assert became_terminal(before, after) is expected


# The stores' conditional writes are derived from the table (core/states.py): these are
# the conditions they get.


def test_unfinished_is_every_status_that_is_not_terminal() -> None:
    assert UNFINISHED == frozenset(Status) - TERMINAL
    assert in_order(UNFINISHED) == ["Pending", "InProgress"]


@pytest.mark.parametrize("ending", [Status.CANCELLED, Status.ERRORED], ids=str)
def test_a_cancel_or_a_failed_shard_ends_exactly_the_unfinished(ending: Status) -> None:
    assert sources(ending) == UNFINISHED


def test_a_claim_moves_only_pending_instances() -> None:
    assert sources(Status.IN_PROGRESS) == {Status.PENDING}


@pytest.mark.parametrize("result", [Status.COMPLETED, Status.ERRORED, Status.PENDING], ids=str)
def test_an_attempts_outcome_is_a_move_out_of_in_progress(result: Status) -> None:
    assert Status.IN_PROGRESS in sources(result)
