"""Results: successes and failures, each in index order; no failures means None."""

from __future__ import annotations

from jobfleet.core.models import (
    CANCELLED_ERROR,
    Counts,
    ErrorInfo,
    Failure,
    Status,
    Success,
    ended,
)
from jobfleet.core.results import partition


def success(index: int) -> Success:
    return Success(f"job-{index}", index, {"n": index}, {"doubled": 2 * index})


def failure(index: int, status: Status = Status.ERRORED) -> Failure:
    return Failure(f"job-{index}", index, {"n": index}, ErrorInfo("ValueError", "bad"), 3, status)


def test_failures_is_none_when_everything_succeeded() -> None:
    successes, failures = partition([success(2), success(0), success(1)])
    assert failures is None
    assert [s.index for s in successes] == [0, 1, 2]


def test_successes_and_failures_are_split_and_sorted_by_index() -> None:
    mixed: list[Success | Failure] = [
        failure(5), success(3), failure(1), success(0), failure(4, Status.CANCELLED),
    ]

    successes, failures = partition(iter(mixed))

    assert [s.index for s in successes] == [0, 3]
    assert failures is not None
    assert [f.index for f in failures] == [1, 4, 5]
    assert failures[1].status is Status.CANCELLED


def test_all_failed_gives_no_successes() -> None:
    successes, failures = partition([failure(1), failure(0)])
    assert successes == []
    assert failures == [failure(0), failure(1)]


def test_nothing_finished_gives_empty_successes_and_no_failures() -> None:
    assert partition([]) == ([], None)


def test_counts_from_sums_leave_pending_as_the_rest() -> None:
    counts = Counts.from_sums(
        Status.IN_PROGRESS, total=10, in_progress=2, succeeded=3, failed=1, cancelled=0
    )
    assert counts == Counts(total=10, pending=4, in_progress=2, succeeded=3, failed=1)


def test_an_ended_orchestration_shows_nothing_in_progress() -> None:
    counts = Counts.from_sums(
        Status.CANCELLED, total=10, in_progress=2, succeeded=3, failed=1, cancelled=6
    )
    assert (counts.pending, counts.in_progress) == (0, 0)


def test_a_cancelled_instance_reports_the_synthetic_cancelled_error() -> None:
    stored = ErrorInfo("ValueError", "an earlier attempt")
    cancelled = ended("j", 0, {}, Status.CANCELLED, result=None, error=stored, attempts=1)
    errored = ended("j", 0, {}, Status.ERRORED, result=None, error=stored, attempts=1)
    completed = ended("j", 0, {}, Status.COMPLETED, result=4, error=None, attempts=1)
    assert isinstance(cancelled, Failure) and cancelled.error == CANCELLED_ERROR
    assert isinstance(errored, Failure) and errored.error == stored
    assert completed == Success("j", 0, {}, 4)
