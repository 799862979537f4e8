"""Completion: the final status of an orchestration, and exactly one event announcing it."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobfleet.backends.local.events import LocalEventLog
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.completion import (
    final_status,
    settle,
    settle_after_commit,
    settle_without_workers,
)
from jobfleet.core.models import (
    WORKER_LOST,
    Counts,
    ErrorInfo,
    Failure,
    JobCompletedEvent,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    RunOptions,
    Status,
)

# -- final_status ---------------------------------------------------------------------


def _all_counts(max_total: int) -> list[Counts]:
    """Every way of spreading 1..max_total instances over the five statuses."""
    combos = []
    for total in range(1, max_total + 1):
        for split in itertools.product(range(total + 1), repeat=5):
            if sum(split) == total:
                pending, in_progress, succeeded, failed, cancelled = split
                combos.append(Counts(total, pending, in_progress, succeeded, failed, cancelled))
    return combos


@pytest.mark.parametrize("counts", _all_counts(3), ids=repr)
def test_final_status_for_every_count_combination(counts: Counts) -> None:
    final = final_status(counts)
    if counts.pending or counts.in_progress:
        assert final is None  # an unfinished instance keeps the orchestration open
    elif counts.cancelled:
        assert final is Status.CANCELLED  # cancelling is the user's word on the matter
    elif counts.failed:
        assert final is Status.ERRORED  # at least one instance errored
    else:
        assert final is Status.COMPLETED  # every instance succeeded


def test_final_status_examples() -> None:
    assert final_status(Counts(total=3, succeeded=3)) is Status.COMPLETED
    assert final_status(Counts(total=3, succeeded=2, failed=1)) is Status.ERRORED
    assert final_status(Counts(total=3, succeeded=1, failed=1, cancelled=1)) is Status.CANCELLED
    assert final_status(Counts(total=3, succeeded=2, in_progress=1)) is None


# -- settle against the local store and event log --------------------------------------------


def create(
    store: SqliteStore, n: int = 3, tags: dict[str, str] | None = None, shards: int = 1
) -> str:
    oid = str(uuid.uuid4())
    store.create_orchestration(
        NewOrchestration(
            id=oid,
            job_name="thumbnail",
            options=RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=shards),
            tags=tags or {},
            created_at=time.time(),
        ),
        [[NewInstance(str(uuid.uuid4()), i, i % shards, {"n": i}) for i in range(n)]],
    )
    return oid


def run_all(store: SqliteStore, oid: str, statuses: list[Status]) -> None:
    """Claim every instance and record one outcome per instance, in index order."""
    claimed = store.claim(oid, 0, "worker-a", limit=len(statuses), now=time.time(), lease=30)
    store.record_outcomes(
        oid,
        [
            Outcome(
                c.job_id,
                c.index,
                c.owner,
                status,
                result={"n": c.index} if status is Status.COMPLETED else None,
                error=None if status is Status.COMPLETED else ErrorInfo("ValueError", "bad"),
            )
            for c, status in zip(claimed, statuses, strict=True)
        ],
    )


def events_of(bus: LocalEventLog, oid: str) -> list[JobCompletedEvent]:
    return [e for _, e in bus.events() if e.orchestration_id == oid]


def test_unfinished_orchestration_is_not_announced(
    store: SqliteStore, bus: LocalEventLog
) -> None:
    oid = create(store, 3)
    run_all(store, oid, [Status.COMPLETED, Status.COMPLETED])

    snap = settle(store, bus, oid)

    assert snap.status is Status.IN_PROGRESS
    assert not snap.event_published
    assert events_of(bus, oid) == []


class CountingLog(LocalEventLog):
    """The local event log, counting publish calls (the log itself drops duplicates)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.published: list[str] = []

    def publish(self, event: JobCompletedEvent) -> None:
        self.published.append(event.event_id)
        super().publish(event)


def test_settle_many_times_publishes_exactly_one_event(
    store: SqliteStore, db_path: Path
) -> None:
    bus = CountingLog(db_path)
    oid = create(store, 3, tags={"batch": "nightly"})
    run_all(store, oid, [Status.COMPLETED] * 3)

    snaps = [settle(store, bus, oid) for _ in range(25)]

    assert bus.published == [JobCompletedEvent.event_id_for(oid)]
    assert {s.status for s in snaps} == {Status.COMPLETED}
    assert all(s.event_published for s in snaps)
    [event] = events_of(bus, oid)
    assert event.event_id == JobCompletedEvent.event_id_for(oid)
    assert (event.status, event.total, event.succeeded, event.failed, event.cancelled) == (
        Status.COMPLETED, 3, 3, 0, 0,
    )
    assert (event.job_name, event.tags) == ("thumbnail", {"batch": "nightly"})
    assert event.finished_at == snaps[0].finished_at
    bus.close()


def settle_at_once(
    db_path: Path, oid: str, deliveries: int
) -> tuple[list[OrchestrationSnapshot], list[BaseException]]:
    """Settle from `deliveries` threads released together, each with its own connections,
    like duplicate trigger deliveries reaching separate function instances."""
    barrier = threading.Barrier(deliveries, timeout=10)
    seen: list[OrchestrationSnapshot] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        own_store, own_bus = SqliteStore(db_path), LocalEventLog(db_path)
        try:
            barrier.wait()
            seen.append(settle(own_store, own_bus, oid))
        except BaseException as exc:
            errors.append(exc)
        finally:
            own_bus.close()
            own_store.close()

    threads = [threading.Thread(target=deliver) for _ in range(deliveries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen, errors


def test_settle_from_several_threads_at_once_publishes_exactly_one_event(
    store: SqliteStore, bus: LocalEventLog, db_path: Path
) -> None:
    threads_per_round, rounds = 8, 5
    oids = [create(store, 2) for _ in range(rounds)]
    for oid in oids:
        run_all(store, oid, [Status.COMPLETED, Status.ERRORED])

    for oid in oids:
        seen, errors = settle_at_once(db_path, oid, threads_per_round)

        assert errors == []
        assert {s.status for s in seen} == {Status.ERRORED}
        assert len(events_of(bus, oid)) == 1
        assert store.get_orchestration(oid).event_published
    assert len(list(bus.events())) == rounds


def test_errored_and_cancelled_orchestrations_are_announced_with_their_status(
    store: SqliteStore, bus: LocalEventLog
) -> None:
    errored = create(store, 2)
    run_all(store, errored, [Status.COMPLETED, Status.ERRORED])
    cancelled = create(store, 2)
    store.cancel(cancelled, now=time.time())

    settle(store, bus, errored)
    settle(store, bus, cancelled)

    [e1] = events_of(bus, errored)
    [e2] = events_of(bus, cancelled)
    assert (e1.status, e1.succeeded, e1.failed) == (Status.ERRORED, 1, 1)
    assert (e2.status, e2.cancelled) == (Status.CANCELLED, 2)


def test_event_id_is_deterministic_per_orchestration() -> None:
    # Subscribers de-duplicate on this id, so it must not change between releases.
    assert JobCompletedEvent.event_id_for("orch-1") == JobCompletedEvent.event_id_for("orch-1")
    assert JobCompletedEvent.event_id_for("orch-1") != JobCompletedEvent.event_id_for("orch-2")
    assert JobCompletedEvent.event_id_for("orch-1") == str(
        uuid.uuid5(uuid.UUID("5b0f6a8e-3c1d-4f7e-9a2b-6d4c8e1f0a37"), "completed:orch-1")
    )


class FailsOnce(LocalEventLog):
    """An event bus whose first publish fails, like Pub/Sub during a network blip."""

    failed = False

    def publish(self, event: JobCompletedEvent) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("pubsub unavailable")
        super().publish(event)


def test_a_failed_publish_is_retried_by_the_next_settle(
    store: SqliteStore, db_path: Path
) -> None:
    bus = FailsOnce(db_path)
    oid = create(store, 1)
    run_all(store, oid, [Status.COMPLETED])

    with pytest.raises(ConnectionError):
        settle(store, bus, oid)
    stuck = store.get_orchestration(oid)
    snap = settle(store, bus, oid)

    assert stuck.status is Status.COMPLETED and not stuck.event_published
    assert snap.event_published
    assert len(events_of(bus, oid)) == 1
    bus.close()


def test_settle_without_workers_errors_what_a_lost_execution_left_unfinished_and_announces_it(
    store: SqliteStore, bus: LocalEventLog
) -> None:
    oid = create(store, 5, shards=2)  # shard 0: 0, 2, 4; shard 1: 1, 3
    [c0] = store.claim(oid, 0, "task-0", limit=1, now=time.time(), lease=30)
    store.record_outcomes(oid, [Outcome(c0.job_id, 0, c0.owner, Status.COMPLETED, result=1)])
    store.claim(oid, 1, "task-1", limit=1, now=time.time(), lease=30)  # left InProgress

    snap = settle_without_workers(store, bus, oid, "execution local-pid-1 ended")

    assert snap.status is Status.ERRORED
    assert (snap.counts.succeeded, snap.counts.failed, store.unfinished_count(oid)) == (1, 4, 0)
    failures = [o for o in store.results(oid) if isinstance(o, Failure)]
    assert sorted(f.index for f in failures) == [1, 2, 3, 4]
    assert {f.error.type for f in failures} == {WORKER_LOST}
    assert {f.error.message for f in failures} == {"execution local-pid-1 ended"}
    [event] = events_of(bus, oid)
    assert (event.status, event.failed) == (Status.ERRORED, 4)


def test_settle_after_commit_waits_for_the_shard_then_for_every_shard(
    store: SqliteStore, bus: LocalEventLog
) -> None:
    oid = create(store, 4, shards=2)  # shard 0: #0 #2, shard 1: #1 #3
    now = time.time()

    def finish(shard: int, count: int) -> int:
        """Commit `count` ends in `shard`; what the shard has left, as its counters say."""
        claimed = store.claim(oid, shard, f"w{shard}", limit=count, now=now, lease=30)
        store.record_outcomes(oid, [
            Outcome(c.job_id, c.index, c.owner, Status.COMPLETED, result=1) for c in claimed
        ])
        return store.unfinished_count(oid, shard)

    assert settle_after_commit(store, bus, oid, finish(0, 1)) is None  # shard 0 still has #2
    snap = settle_after_commit(store, bus, oid, finish(0, 1))  # shard 0 done, shard 1 not
    assert snap is not None and snap.status is Status.IN_PROGRESS
    assert events_of(bus, oid) == []
    snap = settle_after_commit(store, bus, oid, finish(1, 2))
    assert snap is not None and snap.status is Status.COMPLETED
    assert [e.succeeded for e in events_of(bus, oid)] == [4]
    assert settle_after_commit(store, bus, oid, 0) == snap  # a duplicate delivery: no event
    assert [e.succeeded for e in events_of(bus, oid)] == [4]
