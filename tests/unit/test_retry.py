"""Retry policy: exponential backoff with equal jitter, capped, and what a failure becomes."""

from __future__ import annotations

import random

from hypothesis import assume, given
from hypothesis import strategies as st

from jobfleet.core.models import WORKER_LOST, ClaimedInstance, ErrorInfo, RunOptions, Status
from jobfleet.core.retry import MAX_BACKOFF, RetryPolicy

NOW = 1_700_000_000.0
ERROR = ErrorInfo(type="ConnectionError", message="upstream reset", traceback="Traceback ...")

backoffs = st.floats(min_value=0.01, max_value=60.0)
seeds = st.integers(min_value=0, max_value=2**32)


def step(policy: RetryPolicy, attempts: int) -> float:
    """The full exponential step of the documented policy: backoff * 2^(attempts-1), capped."""
    return min(policy.max_backoff, policy.backoff * 2.0 ** (attempts - 1))


def claim(attempts: int) -> ClaimedInstance:
    return ClaimedInstance(
        job_id="job-7", index=7, params={"url": "a.png"}, attempts=attempts, owner="task-0"
    )


@given(backoff=backoffs, attempts=st.integers(min_value=1, max_value=1000), seed=seeds)
def test_delay_is_between_half_and_all_of_the_step(
    backoff: float, attempts: int, seed: int
) -> None:
    policy = RetryPolicy(retries=attempts, backoff=backoff)
    delay = policy.delay(attempts, random.Random(seed))
    full = step(policy, attempts)
    assert full / 2 <= delay <= full


@given(
    backoff=backoffs,
    attempts=st.integers(min_value=1, max_value=30),
    later=st.integers(min_value=1, max_value=6),
    seed_a=seeds,
    seed_b=seeds,
)
def test_delay_grows_exponentially_until_capped(
    backoff: float, attempts: int, later: int, seed_a: int, seed_b: int
) -> None:
    policy = RetryPolicy(retries=100, backoff=backoff)
    assume(backoff * 2.0 ** (attempts + later - 1) <= policy.max_backoff)
    earlier_delay = policy.delay(attempts, random.Random(seed_a))
    later_delay = policy.delay(attempts + later, random.Random(seed_b))
    # Whatever the jitter, `later` more attempts wait at least 2^(later-1) times as long.
    assert later_delay >= 2 ** (later - 1) * earlier_delay * (1 - 1e-12)


@given(
    backoff=st.floats(min_value=0.01, max_value=1000.0),
    cap=st.floats(min_value=1.0, max_value=600.0),
    attempts=st.integers(min_value=1, max_value=1000),
    seed=seeds,
)
def test_delay_never_exceeds_the_cap(backoff: float, cap: float, attempts: int, seed: int) -> None:
    policy = RetryPolicy(retries=attempts, backoff=backoff, max_backoff=cap)
    assert policy.delay(attempts, random.Random(seed)) <= cap


def test_by_default_a_retry_waits_at_most_five_minutes() -> None:
    policy = RetryPolicy(retries=50, backoff=1.0)
    assert 150.0 <= policy.delay(40, random.Random(1)) <= 300.0


def test_delay_is_capped_however_many_attempts_were_made() -> None:
    policy = RetryPolicy(retries=5000, backoff=1.0)
    assert policy.delay(1025, random.Random(0)) <= MAX_BACKOFF


def test_siblings_that_failed_together_do_not_retry_in_lockstep() -> None:
    policy = RetryPolicy(retries=3, backoff=2.0)
    delays = {policy.delay(2, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 10


def test_delay_without_an_rng_stays_within_bounds() -> None:
    policy = RetryPolicy(retries=3, backoff=2.0)
    assert all(2.0 <= policy.delay(2) <= 4.0 for _ in range(50))


def test_zero_backoff_retries_at_once() -> None:
    assert RetryPolicy(retries=3, backoff=0.0).delay(3) == 0.0


@given(
    retries=st.integers(min_value=0, max_value=10),
    attempts=st.integers(min_value=1, max_value=12),
    backoff=backoffs,
    seed=seeds,
)
def test_after_failure_retries_while_attempts_remain_then_errors(
    retries: int, attempts: int, backoff: float, seed: int
) -> None:
    policy = RetryPolicy(retries=retries, backoff=backoff)
    outcome = policy.after_failure(claim(attempts), ERROR, NOW, random.Random(seed))

    assert (outcome.job_id, outcome.index, outcome.owner) == ("job-7", 7, "task-0")
    assert outcome.error == ERROR
    if attempts <= retries:
        assert outcome.status is Status.PENDING
        full = step(policy, attempts)
        assert NOW < outcome.not_before
        assert NOW + full / 2 <= outcome.not_before <= NOW + full
    else:
        assert outcome.status is Status.ERRORED


def test_retries_two_means_three_attempts_in_all() -> None:
    policy = RetryPolicy.of(RunOptions(retries=2, backoff=1.0, timeout=None, parallelism=1))
    statuses = [policy.after_failure(claim(n), ERROR, NOW).status for n in (1, 2, 3)]
    assert statuses == [Status.PENDING, Status.PENDING, Status.ERRORED]


def test_no_retries_errors_on_the_first_failure() -> None:
    outcome = RetryPolicy(retries=0, backoff=1.0).after_failure(claim(1), ERROR, NOW)
    assert outcome.status is Status.ERRORED
    assert outcome.error == ERROR


def test_a_lost_worker_counts_as_a_failed_attempt() -> None:
    policy = RetryPolicy(retries=1, backoff=1.0)
    retried = policy.after_worker_lost(claim(1), NOW, "task 0 attempt 0 was lost")
    given_up = policy.after_worker_lost(claim(2), NOW, "task 0 attempt 1 was lost")

    assert retried.status is Status.PENDING
    assert given_up.status is Status.ERRORED
    assert given_up.error == ErrorInfo(type=WORKER_LOST, message="task 0 attempt 1 was lost")
