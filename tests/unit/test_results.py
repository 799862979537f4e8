"""Results: successes and failures, each in index order; no failures means None."""

from __future__ import annotations

from jobfleet.core.models import ErrorInfo, Failure, Status, Success
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
