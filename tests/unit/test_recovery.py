"""What a dead worker's claims become: charged only when the dead worker held one."""

from __future__ import annotations

from jobfleet.core.models import WORKER_LOST, ClaimedInstance, Status
from jobfleet.core.recovery import Owner, held_by, lost_worker_outcomes
from jobfleet.core.retry import RetryPolicy

NOW = 1_700_000_000.0


def claims(owner: str, *indexes: int, attempts: int = 1) -> list[ClaimedInstance]:
    return [ClaimedInstance(f"j{i}", i, {"n": i}, attempts, owner) for i in indexes]


def test_the_only_instance_a_dead_worker_held_is_charged_and_runs_alone_after() -> None:
    [outcome] = lost_worker_outcomes(claims("w1", 7), RetryPolicy(retries=1, backoff=1), "lost",
                                     NOW)
    assert outcome.status is Status.PENDING and not outcome.refund
    assert outcome.isolate  # it may be the poison: it never crashes a batch again
    assert outcome.error is not None and outcome.error.type == WORKER_LOST
    assert outcome.not_before > NOW  # a charged attempt waits out its backoff


def test_a_charged_instance_out_of_retries_ends_errored() -> None:
    [outcome] = lost_worker_outcomes(claims("w1", 7, attempts=2), RetryPolicy(1, 1), "lost", NOW)
    assert outcome.status is Status.ERRORED
    assert outcome.error is not None and outcome.error.message == "lost"


def test_a_batch_of_a_dead_worker_is_released_uncharged_and_isolated() -> None:
    outcomes = lost_worker_outcomes(claims("w1", 1, 2, 3), RetryPolicy(0, 1), "lost", NOW)
    assert [o.index for o in outcomes] == [1, 2, 3]
    assert all(o.status is Status.PENDING and o.refund and o.isolate for o in outcomes)
    assert all(o.error is None and o.not_before == NOW for o in outcomes)


def test_each_dead_worker_is_judged_on_what_it_held() -> None:
    stale = [*claims("w1", 1, 2), *claims("w2", 3)]
    by_index = {o.index: o for o in lost_worker_outcomes(stale, RetryPolicy(0, 1), "x", NOW)}
    assert by_index[1].refund and by_index[2].refund
    assert by_index[3].status is Status.ERRORED


def test_an_owner_names_its_task_attempt_and_process() -> None:
    owner = Owner("0b6f-id", "jobfleet-worker-x1", 12, 3, "host-a", 4242)
    assert Owner.parse(str(owner)) == owner
    assert Owner.parse("not an owner") is None
    assert Owner.parse("o/task-x/attempt-1/h/1") is None
    assert owner.works_for("projects/p/locations/r/jobs/j/executions/jobfleet-worker-x1,e-2")
    assert not owner.works_for("projects/p/locations/r/jobs/j/executions/jobfleet-worker-x2")


def test_only_the_ended_executions_workers_are_known_dead() -> None:
    ours = str(Owner("o", "local-pid-7", 0, 1, "h", 11))
    theirs = str(Owner("o", "local-pid-9", 0, 0, "h", 12))
    stale = [*claims(ours, 1), *claims(theirs, 2), *claims("written-by-an-old-release", 3)]
    assert [c.index for c in held_by(stale, "local-pid-7")] == [1, 3]
