"""The Store port's contract (core/ports.py), run against every Store adapter.

Every adapter must pass this class unchanged; `store_factory` (conftest.py) opens
further connections to the same state where a test needs a second process's view.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from jobfleet.core.models import (
    ClaimedInstance,
    ErrorInfo,
    Failure,
    JobInstance,
    NewInstance,
    NewOrchestration,
    Outcome,
    RunOptions,
    Status,
    Success,
)
from jobfleet.core.params import instance_batches
from jobfleet.core.ports import Store
from jobfleet.core.registry import JobDefinition
from jobfleet.errors import InvalidParams, UnknownOrchestration

from .conftest import StoreFactory

T0 = 1_700_000_000.0
LEASE = 30.0
LOST = ErrorInfo(type="WorkerLost", message="task 0 is out of attempts")


def orchestration(
    *, job_name: str = "thumbnail", created_at: float = T0, tags: dict[str, str] | None = None
) -> NewOrchestration:
    return NewOrchestration(
        id=str(uuid.uuid4()),
        job_name=job_name,
        options=RunOptions(retries=2, backoff=1.5, timeout=60.0, parallelism=3),
        tags=tags or {},
        created_at=created_at,
    )


def instances(n: int, shards: int = 1) -> list[NewInstance]:
    return [
        NewInstance(str(uuid.uuid4()), i, i % shards, {"n": i, "tag": f"p{i}"}) for i in range(n)
    ]


def create(store: Store, n: int = 4, shards: int = 1, **kwargs: Any) -> str:
    new = orchestration(**kwargs)
    store.create_orchestration(new, [instances(n, shards)])
    return new.id


def done(claim: ClaimedInstance, result: Any = None) -> Outcome:
    return Outcome(claim.job_id, claim.index, claim.owner, Status.COMPLETED, result=result)


def errored(claim: ClaimedInstance, error: ErrorInfo) -> Outcome:
    return Outcome(claim.job_id, claim.index, claim.owner, Status.ERRORED, error=error)


def retry(claim: ClaimedInstance, not_before: float) -> Outcome:
    return Outcome(
        claim.job_id, claim.index, claim.owner, Status.PENDING,
        error=ErrorInfo("TimeoutError", "slow upstream"), not_before=not_before,
    )


def indexes(claims: Sequence[ClaimedInstance]) -> list[int]:
    return sorted(c.index for c in claims)


def by_index(store: Store, oid: str) -> dict[int, Success | Failure]:
    return {o.index: o for o in store.results(oid)}


def pages_of(store: Store, size: int, **filters: Any) -> list[list[str]]:
    """Orchestration ids page by page, each page asked for `before` the last one's end."""
    pages: list[list[str]] = []
    before: str | None = None
    for _ in range(100):  # a store that never runs dry fails the test, not the run
        page = [s.id for s in store.list_orchestrations(limit=size, before=before, **filters)]
        if not page:
            return pages
        pages.append(page)
        before = page[-1]
    raise AssertionError(f"still paging after 100 pages: {pages[-3:]}")


def assert_change_order(changes: Sequence[JobInstance]) -> None:
    keys = [(i.changed, i.index) for i in changes]
    assert keys == sorted(keys)
    assert len({i.index for i in changes}) == len(changes)  # each instance once


def changes_since(
    store: Store, oid: str, cursor: float, *, expected: set[int], touched: set[int]
) -> dict[int, JobInstance]:
    """What a poller that last saw `cursor` reads next, by index. It must hold every
    instance written since (`expected`); where `changed` is a writer's clock it may also
    hold some written just before (within `touched`), never an instance nobody wrote."""
    changes = store.changes_after(oid, after=cursor - store.stamp_margin)
    assert_change_order(changes)
    got = {i.index for i in changes}
    if store.stamp_margin == 0:
        assert got == expected
    else:
        assert expected <= got <= touched
    return {i.index: i for i in changes}


class TestStoreContract:
    # -- creating -------------------------------------------------------------------------

    def test_create_writes_the_orchestration_and_every_instance(self, store: Store) -> None:
        new = orchestration(tags={"team": "media"})

        total = store.create_orchestration(new, iter([instances(3), instances(5)[3:]]))

        snap = store.get_orchestration(new.id)
        assert total == 5
        assert (snap.id, snap.job_name, snap.status) == (new.id, "thumbnail", Status.IN_PROGRESS)
        assert (snap.counts.total, snap.counts.pending, snap.counts.done) == (5, 5, 0)
        assert snap.options == new.options
        assert snap.tags == {"team": "media"}
        assert snap.created_at == T0
        assert snap.finished_at is None and not snap.event_published
        assert store.unfinished_count(new.id) == 5

    def test_create_is_all_or_nothing_when_a_parameter_set_is_refused(self, store: Store) -> None:
        params: list[Any] = [{"n": n} for n in range(1200)]
        params[700] = "not an object"  # past the first batch, which is already written
        definition = JobDefinition(name="thumbnail", target=lambda params: None)
        new = orchestration()

        with pytest.raises(InvalidParams, match="parameter set 700"):
            store.create_orchestration(new, instance_batches(definition, params, shards=2))

        with pytest.raises(UnknownOrchestration):
            store.get_orchestration(new.id)
        assert store.list_orchestrations() == []
        # The store is still usable after the refused kick-off.
        assert store.create_orchestration(orchestration(), [instances(2)]) == 2

    def test_zero_parameter_sets_are_refused_and_nothing_is_created(self, store: Store) -> None:
        new = orchestration()

        with pytest.raises(InvalidParams, match="no parameter sets"):
            store.create_orchestration(new, iter([]))

        with pytest.raises(UnknownOrchestration):
            store.get_orchestration(new.id)
        assert store.list_orchestrations() == []

    def test_an_unknown_orchestration_is_reported_by_id(self, store: Store) -> None:
        with pytest.raises(UnknownOrchestration, match="'no-such-id'"):
            store.get_orchestration("no-such-id")
        with pytest.raises(UnknownOrchestration):
            list(store.results("no-such-id"))

    def test_set_execution_is_recorded(self, store: Store) -> None:
        oid = create(store)
        store.replace_execution(oid, None, "executions/thumbnail-abc12")
        assert store.get_orchestration(oid).execution == "executions/thumbnail-abc12"

    # -- claiming -------------------------------------------------------------------------

    def test_claim_takes_only_pending_instances_of_its_shard(self, store: Store) -> None:
        oid = create(store, n=7, shards=3)

        claimed = store.claim(oid, 1, "task-1", limit=10, now=T0, lease=LEASE)

        assert indexes(claimed) == [1, 4]
        assert all(c.owner == "task-1" and c.attempts == 1 for c in claimed)
        assert [c.params for c in sorted(claimed, key=lambda c: c.index)] == [
            {"n": 1, "tag": "p1"}, {"n": 4, "tag": "p4"},
        ]
        assert store.claim(oid, 1, "task-1b", limit=10, now=T0, lease=LEASE) == []
        counts = store.get_orchestration(oid).counts
        assert (counts.in_progress, counts.pending) == (2, 5)
        assert (store.unfinished_count(oid, 1), store.unfinished_count(oid, 0)) == (2, 3)

    def test_claim_respects_the_limit(self, store: Store) -> None:
        oid = create(store, n=5)

        first = store.claim(oid, 0, "task-0", limit=2, now=T0, lease=LEASE)
        rest = store.claim(oid, 0, "task-0", limit=10, now=T0, lease=LEASE)

        assert len(first) == 2
        assert sorted(indexes(first) + indexes(rest)) == [0, 1, 2, 3, 4]

    def test_claim_counts_attempts_across_retries(self, store: Store) -> None:
        oid = create(store, n=1)

        [first] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [retry(first, not_before=T0)])
        [second] = store.claim(oid, 0, "task-0", limit=1, now=T0 + 1, lease=LEASE)

        assert (first.attempts, second.attempts) == (1, 2)
        assert second.params == first.params

    def test_claim_waits_until_not_before(self, store: Store) -> None:
        oid = create(store, n=1)
        [first] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [retry(first, not_before=T0 + 60)])

        assert store.claim(oid, 0, "task-0", limit=1, now=T0 + 59, lease=LEASE) == []
        assert store.next_ready_at(oid, 0) == T0 + 60
        assert indexes(store.claim(oid, 0, "task-0", limit=1, now=T0 + 60, lease=LEASE)) == [0]
        assert store.next_ready_at(oid, 0) is None

    def test_claim_with_job_id_takes_just_that_instance(self, store: Store) -> None:
        new = orchestration()
        made = instances(4)
        store.create_orchestration(new, [made])

        claimed = store.claim(
            new.id, 0, "task-0", limit=10, now=T0, lease=LEASE, job_id=made[2].job_id
        )

        assert [(c.job_id, c.index) for c in claimed] == [(made[2].job_id, 2)]
        assert store.claim(
            new.id, 0, "task-0", limit=10, now=T0, lease=LEASE, job_id=made[2].job_id
        ) == []
        assert store.get_orchestration(new.id).counts.pending == 3

    def test_concurrent_owners_never_claim_the_same_instance(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        oid = create(store, n=300)
        owners = 4
        stores = [store_factory.open() for _ in range(owners)]
        barrier = threading.Barrier(owners, timeout=10)
        got: dict[str, list[ClaimedInstance]] = {}
        errors: list[BaseException] = []

        def work(own: Store, owner: str) -> None:
            mine: list[ClaimedInstance] = []
            try:
                barrier.wait()
                while batch := own.claim(oid, 0, owner, limit=7, now=T0, lease=LEASE):
                    mine += batch
            except BaseException as exc:
                errors.append(exc)
            got[owner] = mine

        threads = [
            threading.Thread(target=work, args=(s, f"task-{i}")) for i, s in enumerate(stores)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert errors == []
        claimed = [c.index for batch in got.values() for c in batch]
        assert sorted(claimed) == list(range(300))  # each exactly once
        assert all(c.attempts == 1 for batch in got.values() for c in batch)

    # -- recording outcomes -------------------------------------------------------------------

    def test_record_outcomes_applies_and_counts(self, store: Store) -> None:
        oid = create(store, n=4)
        c0, c1, c2, _ = sorted(
            store.claim(oid, 0, "task-0", limit=4, now=T0, lease=LEASE), key=lambda c: c.index
        )

        applied = store.record_outcomes(
            oid, [done(c0, {"url": "t0.png"}), errored(c1, LOST), retry(c2, T0 + 5)]
        )

        counts = store.get_orchestration(oid).counts
        assert applied == 3
        assert (counts.succeeded, counts.failed, counts.in_progress, counts.pending) == (1, 1, 1, 1)
        assert store.unfinished_count(oid) == 2

    def test_a_stale_owners_write_is_dropped(self, store: Store) -> None:
        oid = create(store, n=1)
        [slow] = store.claim(oid, 0, "task-0/attempt-0", limit=1, now=T0, lease=10)
        # The lease expires; the reaper turns the claim back into a retry.
        [stale] = store.stale_claims(oid, now=T0 + 11)
        assert stale.owner == "task-0/attempt-0"
        assert store.record_outcomes(oid, [retry(stale, not_before=T0 + 11)]) == 1
        [fresh] = store.claim(oid, 0, "task-0/attempt-1", limit=1, now=T0 + 11, lease=10)

        late = store.record_outcomes(oid, [done(slow, "from the lost worker")])
        assert late == 0
        assert store.get_orchestration(oid).counts.succeeded == 0

        assert store.record_outcomes(oid, [done(fresh, "from the new worker")]) == 1
        [outcome] = store.results(oid)
        assert isinstance(outcome, Success)
        assert outcome.result == "from the new worker"
        assert store.get_orchestration(oid).counts.succeeded == 1

    def test_an_outcome_after_cancel_is_dropped(self, store: Store) -> None:
        oid = create(store, n=1)
        [claim] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.cancel(oid, now=T0 + 1)

        assert store.record_outcomes(oid, [done(claim, "too late")]) == 0
        counts = store.get_orchestration(oid).counts
        assert (counts.succeeded, counts.cancelled) == (0, 1)

    def test_an_instance_finishes_once(self, store: Store) -> None:
        oid = create(store, n=1)
        [claim] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)

        assert store.record_outcomes(oid, [done(claim, 1)]) == 1
        assert store.record_outcomes(oid, [done(claim, 2), errored(claim, LOST)]) == 0
        counts = store.get_orchestration(oid).counts
        assert (counts.succeeded, counts.failed) == (1, 0)

    # -- leases -----------------------------------------------------------------------------

    def test_heartbeat_extends_the_leases_an_owner_holds(self, store: Store) -> None:
        oid = create(store, n=3)
        store.claim(oid, 0, "task-0", limit=2, now=T0, lease=10)

        assert store.heartbeat("task-0", now=T0 + 8, lease=10) == 2
        assert store.heartbeat("someone-else", now=T0 + 8, lease=10) == 0
        assert store.stale_claims(oid, now=T0 + 12) == []
        assert indexes(store.stale_claims(oid, now=T0 + 19)) == [0, 1]

    def test_heartbeat_no_longer_covers_finished_instances(self, store: Store) -> None:
        oid = create(store, n=2)
        claims = store.claim(oid, 0, "task-0", limit=2, now=T0, lease=10)
        store.record_outcomes(oid, [done(claims[0])])

        assert store.heartbeat("task-0", now=T0 + 5, lease=10) == 1

    def test_stale_claims_are_the_expired_leases(self, store: Store) -> None:
        oid = create(store, n=4, shards=2)
        store.claim(oid, 0, "task-0", limit=10, now=T0, lease=5)
        store.claim(oid, 1, "task-1", limit=10, now=T0, lease=100)

        stale = store.stale_claims(oid, now=T0 + 6)

        assert indexes(stale) == [0, 2]
        assert {(c.owner, c.attempts) for c in stale} == {("task-0", 1)}
        assert {c.index: c.params for c in stale} == {
            0: {"n": 0, "tag": "p0"}, 2: {"n": 2, "tag": "p2"},
        }
        assert store.stale_claims(oid, now=T0 + 1) == []

    def test_stale_claims_of_a_shard_are_all_its_in_progress_instances(self, store: Store) -> None:
        oid = create(store, n=6, shards=2)
        store.claim(oid, 0, "task-0/attempt-0", limit=2, now=T0, lease=100)
        store.claim(oid, 1, "task-1/attempt-0", limit=3, now=T0, lease=100)

        # A new attempt of task 0 starting means the previous one is gone, lease or not.
        orphans = store.stale_claims(oid, now=T0 + 1, shard=0)

        assert indexes(orphans) == [0, 2]  # not the Pending 4, not shard 1's live claims
        assert {c.owner for c in orphans} == {"task-0/attempt-0"}

    def test_fail_unfinished_errors_every_unfinished_instance_of_a_shard(
        self, store: Store
    ) -> None:
        oid = create(store, n=6, shards=2)  # shard 0: 0, 2, 4
        c0, c2 = sorted(
            store.claim(oid, 0, "task-0", limit=2, now=T0, lease=LEASE), key=lambda c: c.index
        )
        store.record_outcomes(oid, [done(c0, "ok")])

        assert store.fail_unfinished(oid, 0, LOST, now=T0 + 9) == 2

        counts = store.get_orchestration(oid).counts
        assert (counts.succeeded, counts.failed, counts.pending) == (1, 2, 3)
        assert (store.unfinished_count(oid, 0), store.unfinished_count(oid, 1)) == (0, 3)
        results = by_index(store, oid)
        assert isinstance(results[0], Success)
        for index in (2, 4):
            failure = results[index]
            assert isinstance(failure, Failure)
            assert failure.error == LOST
            assert failure.status is Status.ERRORED
        assert store.record_outcomes(oid, [done(c2, "too late")]) == 0
        assert store.fail_unfinished(oid, 0, LOST, now=T0 + 10) == 0

    # -- ending -----------------------------------------------------------------------------

    def test_cancel_ends_every_unfinished_instance_once(self, store: Store) -> None:
        oid = create(store, n=4)
        c0, _ = sorted(
            store.claim(oid, 0, "task-0", limit=2, now=T0, lease=LEASE), key=lambda c: c.index
        )
        store.record_outcomes(oid, [done(c0, "kept")])

        assert store.cancel(oid, now=T0 + 5) is True
        assert store.cancel(oid, now=T0 + 6) is False

        snap = store.get_orchestration(oid)
        assert snap.status is Status.CANCELLED
        assert snap.finished_at == T0 + 5
        c = snap.counts
        assert (c.succeeded, c.failed, c.cancelled, c.pending, c.in_progress) == (1, 0, 3, 0, 0)
        assert store.unfinished_count(oid) == 0
        assert store.stale_claims(oid, now=T0 + 1000) == []
        results = by_index(store, oid)
        assert results[0] == Success(c0.job_id, 0, {"n": 0, "tag": "p0"}, "kept")
        cancelled = [results[i] for i in (1, 2, 3)]
        assert all(isinstance(r, Failure) and r.status is Status.CANCELLED for r in cancelled)

    def test_a_finished_orchestration_cannot_be_cancelled(self, store: Store) -> None:
        oid = create(store, n=1)
        [claim] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [done(claim)])
        store.finish_orchestration(oid, Status.COMPLETED, T0 + 1)

        assert store.cancel(oid, now=T0 + 2) is False
        snap = store.get_orchestration(oid)
        assert (snap.status, snap.counts.cancelled, snap.finished_at) == (
            Status.COMPLETED, 0, T0 + 1,
        )

    def test_finish_orchestration_flips_exactly_once(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        oid = create(store, n=1)
        others = [store_factory.open() for _ in range(6)]
        barrier = threading.Barrier(len(others), timeout=10)
        flips: list[bool] = []

        def finish(own: Store, status: Status, at: float) -> None:
            barrier.wait()
            flips.append(own.finish_orchestration(oid, status, at))

        statuses = [Status.COMPLETED, Status.ERRORED, Status.CANCELLED] * 2
        threads = [
            threading.Thread(target=finish, args=(s, status, T0 + i))
            for i, (s, status) in enumerate(zip(others, statuses, strict=True))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert sorted(flips) == [False] * 5 + [True]
        winner = store.get_orchestration(oid)
        assert winner.status.terminal
        assert store.finish_orchestration(oid, Status.COMPLETED, T0 + 99) is False
        assert store.get_orchestration(oid) == winner

    def test_the_published_event_is_remembered(self, store: Store) -> None:
        oid = create(store, n=1)
        store.cancel(oid, now=T0)
        assert not store.get_orchestration(oid).event_published

        store.mark_event_published(oid)

        assert store.get_orchestration(oid).event_published

    # -- results ----------------------------------------------------------------------------

    def test_results_carry_params_results_errors_and_attempts(self, store: Store) -> None:
        oid = create(store, n=4)
        c0, c1, c2, _ = sorted(
            store.claim(oid, 0, "task-0", limit=4, now=T0, lease=LEASE), key=lambda c: c.index
        )
        boom = ErrorInfo(
            type="ValueError",
            message="width must be positive",
            traceback='Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError',
        )
        store.record_outcomes(
            oid,
            [
                done(c0, {"thumb": "t0.png", "sizes": [1, 2.5, None]}),
                retry(c1, T0),
                errored(c2, boom),
            ],
        )
        [again] = store.claim(oid, 0, "task-0", limit=1, now=T0 + 1, lease=LEASE)
        store.record_outcomes(oid, [errored(again, boom)])

        results = by_index(store, oid)

        assert sorted(results) == [0, 1, 2]  # instance 3 is still running
        assert results[0] == Success(
            c0.job_id, 0, {"n": 0, "tag": "p0"}, {"thumb": "t0.png", "sizes": [1, 2.5, None]}
        )
        assert results[1] == Failure(c1.job_id, 1, {"n": 1, "tag": "p1"}, boom, attempts=2)
        assert results[2] == Failure(c2.job_id, 2, {"n": 2, "tag": "p2"}, boom, attempts=1)

    def test_a_success_after_a_retry_keeps_no_error(self, store: Store) -> None:
        oid = create(store, n=1)
        [first] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [retry(first, T0)])
        [second] = store.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [done(second, None)])

        [outcome] = store.results(oid)

        assert outcome == Success(first.job_id, 0, {"n": 0, "tag": "p0"}, None)
        counts = store.get_orchestration(oid).counts
        assert (counts.succeeded, counts.failed) == (1, 0)

    # -- history ----------------------------------------------------------------------------

    def test_list_orchestrations_is_newest_first_and_filters(self, store: Store) -> None:
        old = create(store, job_name="thumbnail", created_at=T0 + 100)
        newest = create(store, job_name="report", created_at=T0 + 300)
        middle = create(store, job_name="thumbnail", created_at=T0 + 200)
        store.cancel(middle, now=T0 + 400)

        def ids(**kwargs: Any) -> list[str]:
            return [s.id for s in store.list_orchestrations(**kwargs)]

        assert ids() == [newest, middle, old]
        assert ids(limit=2) == [newest, middle]
        assert ids(job_name="thumbnail") == [middle, old]
        assert ids(status=Status.CANCELLED) == [middle]
        assert ids(status=Status.IN_PROGRESS, job_name="thumbnail") == [old]
        assert ids(job_name="nothing-by-this-name") == []

    def test_paging_with_before_yields_every_orchestration_once_newest_first(
        self, store: Store
    ) -> None:
        made = [create(store, n=1, created_at=T0 + i) for i in range(5)]

        pages = pages_of(store, 2)

        assert [len(p) for p in pages] == [2, 2, 1]
        assert [oid for page in pages for oid in page] == made[::-1]

    def test_orchestrations_created_at_the_same_instant_are_each_paged_once(
        self, store: Store
    ) -> None:
        made = {create(store, n=1, created_at=T0 + (i >= 2)) for i in range(6)}  # 2 at T0

        paged = [oid for page in pages_of(store, 2) for oid in page]

        assert sorted(paged) == sorted(made)  # no orchestration skipped or repeated
        assert paged == [s.id for s in store.list_orchestrations()]
        created = [store.get_orchestration(oid).created_at for oid in paged]
        assert created == [T0 + 1] * 4 + [T0] * 2

    def test_paging_keeps_the_filters(self, store: Store) -> None:
        nightly = ("run", "nightly")
        made = [
            create(
                store, n=1, created_at=T0 + i,
                job_name="thumbnail" if i % 2 else "report",
                tags={"run": "nightly" if i % 3 else "adhoc"},
            )
            for i in range(12)
        ]
        wanted = [
            made[i] for i in reversed(range(12)) if i % 2 and i % 3
        ]  # thumbnail and nightly: 11, 7, 5, 1

        assert pages_of(store, 3, job_name="thumbnail", tag=nightly) == [wanted[:3], wanted[3:]]

        store.cancel(made[7], now=T0 + 50)
        running = [made[i] for i in reversed(range(12)) if i % 2 and i != 7]
        by_status = pages_of(store, 1, job_name="thumbnail", status=Status.IN_PROGRESS)
        assert by_status == [[oid] for oid in running]

    def test_paging_from_an_unknown_orchestration_is_refused(self, store: Store) -> None:
        create(store, n=1)

        with pytest.raises(UnknownOrchestration, match="'no-such-id'"):
            store.list_orchestrations(before="no-such-id")
        with pytest.raises(UnknownOrchestration):
            store.list_orchestrations(before="no-such-id", job_name="thumbnail", limit=5)

    def test_the_tag_filter_matches_key_and_value_exactly(self, store: Store) -> None:
        media = create(store, n=1, created_at=T0 + 1, tags={"team": "media", "run": "nightly"})
        create(store, n=1, created_at=T0 + 2, tags={"team": "media-ops"})
        create(store, n=1, created_at=T0 + 3, tags={"team": "Media"})
        create(store, n=1, created_at=T0 + 4, tags={"owner": "media"})
        odd = create(store, n=1, created_at=T0 + 5, tags={"team/owner": "a=b c", "é": "ü ✓"})
        create(store, n=1, created_at=T0 + 6)

        def ids(key: str, value: str) -> list[str]:
            return [s.id for s in store.list_orchestrations(tag=(key, value))]

        assert ids("team", "media") == [media]
        assert ids("run", "nightly") == [media]
        assert ids("team/owner", "a=b c") == [odd]
        assert ids("é", "ü ✓") == [odd]
        assert [s.tags for s in store.list_orchestrations(tag=("team/owner", "a=b c"))] == [
            {"team/owner": "a=b c", "é": "ü ✓"}
        ]
        assert ids("team/owner", "a=b") == []
        assert ids("team", "med") == []
        assert ids("media", "team") == []
        assert ids("nothing", "here") == []

    def test_the_tag_filter_knows_where_a_key_ends(self, store: Store) -> None:
        # Tag values may hold "=", and the API's `?tag=a=b:c` asks for key "a=b": a key
        # no orchestration can carry, so nothing may match.
        tagged = create(store, n=1, tags={"a": "b=c"})

        assert [s.id for s in store.list_orchestrations(tag=("a", "b=c"))] == [tagged]
        assert store.list_orchestrations(tag=("a=b", "c")) == []
        assert store.list_orchestrations(tag=("a", "b")) == []

    def test_history_survives_closing_and_reopening(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        oid = create(store, n=3, tags={"run": "nightly"})
        claims = sorted(
            store.claim(oid, 0, "task-0", limit=3, now=T0, lease=LEASE), key=lambda c: c.index
        )
        store.record_outcomes(oid, [done(claims[0], "a"), errored(claims[1], LOST)])
        store.cancel(oid, now=T0 + 1)
        store.mark_event_published(oid)
        before = store.get_orchestration(oid)
        results_before = list(store.results(oid))
        store.close()

        reopened = store_factory.open()

        assert reopened.get_orchestration(oid) == before
        assert list(reopened.results(oid)) == results_before
        assert [s.id for s in reopened.list_orchestrations()] == [oid]

    # -- instances ---------------------------------------------------------------------------

    def test_list_instances_is_by_index_and_pages_with_after_index(self, store: Store) -> None:
        new = orchestration()
        made = instances(12)
        shuffled = random.Random(7).sample(made, len(made))
        store.create_orchestration(new, [shuffled[:5], shuffled[5:]])

        def page(**kwargs: Any) -> list[int]:
            return [i.index for i in store.list_instances(new.id, **kwargs)]

        assert page() == list(range(12))  # numeric order: 10 and 11 come after 9
        assert page(limit=5) == [0, 1, 2, 3, 4]
        assert page(after_index=4, limit=5) == [5, 6, 7, 8, 9]
        assert page(after_index=9, limit=5) == [10, 11]
        assert page(after_index=11, limit=5) == []
        listed = store.list_instances(new.id)
        assert [(i.job_id, i.params) for i in listed] == [(m.job_id, m.params) for m in made]
        assert all(
            (i.status, i.attempts, i.result, i.error, i.started_at, i.finished_at)
            == (Status.PENDING, 0, None, None, None, None)
            for i in listed
        )

    def test_list_instances_filters_by_status(self, store: Store) -> None:
        oid = create(store, n=6)
        c0, c1, _ = sorted(
            store.claim(oid, 0, "task-0", limit=3, now=T0, lease=LEASE), key=lambda c: c.index
        )
        store.record_outcomes(oid, [done(c0, "ok"), errored(c1, LOST)])

        def page(status: Status, **kwargs: Any) -> list[int]:
            listed = store.list_instances(oid, status=status, **kwargs)
            assert all(i.status is status for i in listed)
            return [i.index for i in listed]

        assert page(Status.COMPLETED) == [0]
        assert page(Status.ERRORED) == [1]
        assert page(Status.IN_PROGRESS) == [2]
        assert page(Status.PENDING) == [3, 4, 5]
        assert page(Status.CANCELLED) == []
        assert page(Status.PENDING, after_index=3, limit=1) == [4]
        assert page(Status.PENDING, after_index=4) == [5]

    def test_list_instances_carry_params_results_errors_and_attempts(self, store: Store) -> None:
        oid = create(store, n=5)
        c0, c1, c2, c3 = sorted(
            store.claim(oid, 0, "task-0", limit=4, now=T0, lease=LEASE), key=lambda c: c.index
        )
        boom = ErrorInfo("ValueError", "width must be positive", "Traceback ...\nValueError")
        before_outcomes = time.time()
        store.record_outcomes(
            oid,
            [
                done(c0, {"thumb": "t0.png", "sizes": [1, 2.5, None]}),
                errored(c1, boom),
                retry(c2, T0 + 5),
            ],
        )
        store.claim(oid, 0, "task-0", limit=1, now=T0 + 5, lease=LEASE, job_id=c2.job_id)

        i0, i1, i2, i3, i4 = store.list_instances(oid)

        assert (i0.job_id, i0.status, i0.attempts) == (c0.job_id, Status.COMPLETED, 1)
        assert i0.params == {"n": 0, "tag": "p0"}
        assert i0.result == {"thumb": "t0.png", "sizes": [1, 2.5, None]}
        assert i0.error is None
        assert i0.started_at == T0
        assert i0.finished_at is not None and i0.finished_at >= before_outcomes
        assert (i1.job_id, i1.status, i1.attempts, i1.result) == (
            c1.job_id, Status.ERRORED, 1, None,
        )
        assert i1.error == boom
        assert i1.finished_at is not None
        assert (i2.job_id, i2.status, i2.attempts) == (c2.job_id, Status.IN_PROGRESS, 2)
        assert (i2.started_at, i2.finished_at) == (T0 + 5, None)
        assert (i3.job_id, i3.status, i3.attempts, i3.result) == (
            c3.job_id, Status.IN_PROGRESS, 1, None,
        )
        assert (i4.status, i4.attempts, i4.params) == (Status.PENDING, 0, {"n": 4, "tag": "p4"})

    def test_list_instances_of_an_unknown_orchestration_is_refused(self, store: Store) -> None:
        create(store, n=1)

        with pytest.raises(UnknownOrchestration, match="'no-such-id'"):
            store.list_instances("no-such-id")
        with pytest.raises(UnknownOrchestration):
            store.list_instances("no-such-id", status=Status.PENDING, after_index=3)

    # -- instance changes (what a dashboard polls) ---------------------------------------------
    # Claims, give-ups and cancels are stamped with real clock times here: Firestore stamps
    # outcomes with its own clock, so only real times keep the writes in their true order.

    def test_changes_after_are_empty_until_an_instance_is_written(self, store: Store) -> None:
        oid = create(store, n=4)

        assert store.changes_after(oid, after=0) == []

        store.claim(oid, 0, "task-0", limit=2, now=time.time(), lease=LEASE)
        seen = store.changes_after(oid, after=0)

        assert [(i.index, i.status, i.attempts) for i in seen] == [
            (0, Status.IN_PROGRESS, 1), (1, Status.IN_PROGRESS, 1),
        ]
        assert all(i.changed > 0 for i in seen)
        assert_change_order(seen)

    def test_changes_after_a_stamp_include_each_later_write(self, store: Store) -> None:
        oid = create(store, n=4)
        c0, c1 = sorted(
            store.claim(oid, 0, "task-0", limit=2, now=time.time(), lease=LEASE),
            key=lambda c: c.index,
        )
        cursor = max(i.changed for i in store.changes_after(oid, after=0))

        store.record_outcomes(oid, [done(c0, "t0.png")])
        seen = changes_since(store, oid, cursor, expected={0}, touched={0, 1})

        assert (seen[0].status, seen[0].result, seen[0].attempts) == (
            Status.COMPLETED, "t0.png", 1,
        )
        assert seen[0].changed > cursor
        cursor = max(i.changed for i in seen.values())

        store.record_outcomes(oid, [retry(c1, not_before=time.time())])  # back to Pending
        seen = changes_since(store, oid, cursor, expected={1}, touched={0, 1})

        assert (seen[1].status, seen[1].attempts) == (Status.PENDING, 1)
        assert seen[1].changed > cursor
        cursor = max(i.changed for i in seen.values())

        store.claim(oid, 0, "task-0", limit=1, now=time.time(), lease=LEASE, job_id=c1.job_id)
        seen = changes_since(store, oid, cursor, expected={1}, touched={0, 1})

        assert (seen[1].status, seen[1].attempts) == (Status.IN_PROGRESS, 2)
        cursor = max(i.changed for i in seen.values())

        changes_since(store, oid, cursor, expected=set(), touched={0, 1})  # nothing new

    def test_cancel_stamps_the_instances_it_ends(self, store: Store) -> None:
        oid = create(store, n=4)
        [c0] = store.claim(oid, 0, "task-0", limit=1, now=time.time(), lease=LEASE)
        store.claim(oid, 0, "task-0", limit=1, now=time.time(), lease=LEASE)
        store.record_outcomes(oid, [done(c0, "kept")])
        cursor = max(i.changed for i in store.changes_after(oid, after=0))

        cancelled_at = time.time()
        store.cancel(oid, now=cancelled_at)
        seen = changes_since(store, oid, cursor, expected={1, 2, 3}, touched={0, 1, 2, 3})

        for index in (1, 2, 3):
            assert seen[index].status is Status.CANCELLED
            assert seen[index].finished_at == cancelled_at
            assert seen[index].changed > cursor
        if 0 in seen:
            assert (seen[0].status, seen[0].result) == (Status.COMPLETED, "kept")

    def test_fail_unfinished_stamps_the_instances_it_errors(self, store: Store) -> None:
        oid = create(store, n=6, shards=2)  # shard 0: 0, 2, 4
        store.claim(oid, 0, "task-0", limit=2, now=time.time(), lease=LEASE)
        store.claim(oid, 1, "task-1", limit=1, now=time.time(), lease=LEASE)
        cursor = max(i.changed for i in store.changes_after(oid, after=0))

        store.fail_unfinished(oid, 0, LOST, now=time.time())
        seen = changes_since(store, oid, cursor, expected={0, 2, 4}, touched={0, 1, 2, 4})

        for index in (0, 2, 4):
            assert (seen[index].status, seen[index].error) == (Status.ERRORED, LOST)
            assert seen[index].changed > cursor
        if 1 in seen:
            assert seen[1].status is Status.IN_PROGRESS

    # -- watching for changes -------------------------------------------------------------------

    @pytest.mark.timeout(20)
    def test_wait_for_wake_sees_a_write_from_another_connection(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        oid = create(store)
        other = store_factory.open()
        token = store.wake_token(oid)
        writer = threading.Timer(0.1, other.replace_execution, args=(oid, None, "executions/e-1"))

        started = time.monotonic()
        writer.start()
        new_token = store.wait_for_wake(oid, token, timeout=10.0)
        waited = time.monotonic() - started
        writer.join()

        assert new_token != token
        assert waited < 5.0
        assert store.get_orchestration(oid).execution == "executions/e-1"
        assert store.wake_token(oid) == new_token  # nothing has changed since

    @pytest.mark.timeout(20)
    def test_wait_for_wake_times_out_without_writes(self, store: Store) -> None:
        oid = create(store)
        token = store.wake_token(oid)

        started = time.monotonic()
        after = store.wait_for_wake(oid, token, timeout=0.3)
        waited = time.monotonic() - started

        assert after == token
        assert 0.25 <= waited < 2.0

    def test_wake_token_moves_after_a_write_through_the_same_store(self, store: Store) -> None:
        oid = create(store)
        token = store.wake_token(oid)

        store.cancel(oid, now=T0)

        assert store.wake_token(oid) != token

    # -- one store object shared by threads (the SDK's *_async methods use threads) -----------

    def test_one_store_can_be_written_from_several_threads(self, store: Store) -> None:
        inside, release = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def slow_batches() -> Any:
            yield instances(2)
            inside.set()  # the first kick-off is mid-transaction
            release.wait(timeout=5)

        first, second = orchestration(), orchestration()

        def kick_off(new: NewOrchestration, batches: Any) -> None:
            try:
                store.create_orchestration(new, batches)
            except BaseException as exc:
                errors.append(exc)

        a = threading.Thread(target=kick_off, args=(first, slow_batches()))
        a.start()
        assert inside.wait(timeout=5)
        b = threading.Thread(target=kick_off, args=(second, [instances(3)]))
        b.start()
        time.sleep(0.2)
        release.set()
        a.join()
        b.join()

        assert errors == []
        assert store.get_orchestration(first.id).counts.total == 2
        assert store.get_orchestration(second.id).counts.total == 3


class TestFaultRecoveryContract:
    """What the sweep and the reapers rely on (core/recovery.py, core/sweep.py)."""

    def test_a_released_instance_gets_its_attempt_back_and_is_claimed_alone(
        self, store: Store
    ) -> None:
        oid = create(store, 6)
        claimed = store.claim(oid, 0, "lost", limit=3, now=T0, lease=LEASE)
        store.record_outcomes(oid, [
            Outcome(c.job_id, c.index, c.owner, Status.PENDING, not_before=T0,
                    refund=True, isolate=True)
            for c in claimed
        ])

        first = store.claim(oid, 0, "next", limit=10, now=T0 + 1, lease=LEASE)
        assert indexes(first) == [0]  # isolated: alone, though ten were asked for
        assert first[0].isolated  # so a worker writes its outcome before claiming more
        assert first[0].attempts == 1  # the lost worker's claim was given back
        store.record_outcomes(oid, [done(first[0])])
        assert indexes(store.claim(oid, 0, "next", limit=10, now=T0 + 2, lease=LEASE)) == [1]

    def test_instances_never_isolated_are_claimed_together(self, store: Store) -> None:
        oid = create(store, 6)
        lone = store.claim(oid, 0, "lost", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [
            Outcome(lone[0].job_id, 0, "lost", Status.PENDING, not_before=T0 + 100, isolate=True)
        ])
        # #0 waits out its backoff; the rest are claimed as one batch meanwhile.
        assert indexes(store.claim(oid, 0, "w", limit=10, now=T0 + 1, lease=LEASE)) == [
            1, 2, 3, 4, 5
        ]

    def test_progress_grows_with_attempts_ends_and_isolation(self, store: Store) -> None:
        oid = create(store, 4)
        start = store.progress(oid)
        [c] = store.claim(oid, 0, "w", limit=1, now=T0, lease=LEASE)
        after_claim = store.progress(oid)
        store.record_outcomes(oid, [done(c)])
        after_end = store.progress(oid)
        batch = store.claim(oid, 0, "lost", limit=2, now=T0, lease=LEASE)
        store.record_outcomes(oid, [
            Outcome(b.job_id, b.index, b.owner, Status.PENDING, refund=True, isolate=True)
            for b in batch
        ])
        assert start < after_claim < after_end < store.progress(oid)

    def test_unfinished_shards_are_those_with_work_left(self, store: Store) -> None:
        oid = create(store, 6, shards=3)  # shard s holds #s and #s+3
        assert store.unfinished_shards(oid) == [0, 1, 2]
        claimed = store.claim(oid, 1, "w", limit=2, now=T0, lease=LEASE)
        store.record_outcomes(oid, [done(c) for c in claimed])
        assert store.unfinished_shards(oid) == [0, 2]

    def test_replace_execution_is_a_compare_and_set(self, store: Store) -> None:
        oid = create(store)
        assert store.replace_execution(oid, None, "e-1", progress=3)
        assert not store.replace_execution(oid, None, "e-2")  # a launch was recorded first
        snap = store.get_orchestration(oid)
        assert (snap.execution, snap.launch_progress) == ("e-1", 3)
        assert store.replace_execution(oid, "e-1", "e-1,e-3", progress=5)
        assert store.get_orchestration(oid).execution == "e-1,e-3"

    def test_unsettled_orchestrations_are_the_unfinished_and_the_unannounced(
        self, store: Store
    ) -> None:
        running = create(store, 1)
        ended = create(store, 1)
        announced = create(store, 1)
        for oid in (ended, announced):
            [c] = store.claim(oid, 0, "w", limit=1, now=T0, lease=LEASE)
            store.record_outcomes(oid, [done(c)])
            store.finish_orchestration(oid, Status.COMPLETED, T0 + 1)
        store.mark_event_published(announced)
        found = {s.id for s in store.unsettled_orchestrations()}
        assert {running, ended} <= found and announced not in found

    def test_one_caller_at_a_time_holds_the_publish_claim(self, store: Store) -> None:
        oid = create(store, 1)
        assert not store.claim_publish(oid, now=T0, hold=30)  # not ended yet
        [c] = store.claim(oid, 0, "w", limit=1, now=T0, lease=LEASE)
        store.record_outcomes(oid, [done(c)])
        store.finish_orchestration(oid, Status.COMPLETED, T0)
        assert store.claim_publish(oid, now=T0, hold=30)
        assert not store.claim_publish(oid, now=T0 + 29, hold=30)  # held
        assert store.claim_publish(oid, now=T0 + 31, hold=30)  # its holder died: taken over
        store.release_publish(oid)
        assert store.claim_publish(oid, now=T0 + 32, hold=30)  # given back after a failure
        store.mark_event_published(oid)
        assert not store.claim_publish(oid, now=T0 + 100, hold=30)  # announced: never again
