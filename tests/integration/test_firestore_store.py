"""What the Firestore store costs, checked on the emulator from what Firestore shows.

The contract suite (test_store_contract.py) holds the Firestore store to the port's
behaviour; these tests hold it to the cost rules of the production shape (docs/design.md):
how often each document is written, where the counts come from, how a kick-off streams.
They count document versions with listeners and update times, never by wrapping code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, cast

import pytest
from google.cloud import firestore

from jobfleet.backends.gcp import firestore_changes
from jobfleet.backends.gcp.firestore_documents import JOBS, LEASES, ORCHESTRATIONS, SHARDS
from jobfleet.backends.gcp.firestore_schedules import FIRES, SCHEDULES
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.core.models import (
    ClaimedInstance,
    NewInstance,
    NewOrchestration,
    Outcome,
    RunOptions,
    Status,
)
from jobfleet.core.params import instance_batches
from jobfleet.core.registry import JobDefinition
from jobfleet.core.schedules import Fire, FireState, Schedule, Trigger
from jobfleet.errors import InvalidParams, InvalidSchedule, UnknownOrchestration

T0 = 1_700_000_000.0
LEASE = 30.0
WAIT = 15.0
Document = dict[str, Any]


@pytest.fixture
def project(gcp_env: object) -> str:
    """A project of its own: the emulator keeps projects apart."""
    return f"jobfleet-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def client(project: str) -> firestore.Client:
    """A plain client, to look at the documents the store writes."""
    return firestore.Client(project=project)


@pytest.fixture
def fs(project: str) -> Iterator[FirestoreStore]:
    store = FirestoreStore(project)
    yield store
    store.close()


def new_orchestration(parallelism: int) -> NewOrchestration:
    return NewOrchestration(
        id=str(uuid.uuid4()), job_name="thumbnail",
        options=RunOptions(retries=0, backoff=1.0, timeout=None, parallelism=parallelism),
        tags={}, created_at=T0,
    )


def batches_of(n: int, size: int, shards: int) -> Iterator[list[NewInstance]]:
    for start in range(0, n, size):
        yield [
            NewInstance(str(uuid.uuid4()), i, i % shards, {"n": i, "url": f"s3://b/{i}.png"})
            for i in range(start, min(n, start + size))
        ]


def kick_off(store: FirestoreStore, n: int, shards: int = 1) -> str:
    new = new_orchestration(parallelism=shards)
    store.create_orchestration(new, batches_of(n, 500, shards))
    return new.id


def done(claim: ClaimedInstance) -> Outcome:
    return Outcome(claim.job_id, claim.index, claim.owner, Status.COMPLETED, result=claim.index)


class Versions:
    """What a listener sees of a collection: every version of each document (by update
    time) and its latest fields."""

    def __init__(self, collection: firestore.CollectionReference) -> None:
        self._changed = threading.Condition()
        self._seen: defaultdict[str, set[datetime]] = defaultdict(set)
        self.latest: dict[str, Document] = {}
        self._watch = collection.on_snapshot(self._on_snapshot)

    def _on_snapshot(self, docs: list[Any], changes: Any, read_time: Any) -> None:
        with self._changed:
            for doc in docs:
                self._seen[doc.id].add(doc.update_time)
                self.latest[doc.id] = doc.to_dict()
            self._changed.notify_all()

    def wait_until(self, condition: Callable[[dict[str, Document]], bool]) -> None:
        """Waiting for each step to be seen keeps two steps from merging into one version."""
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self.latest), WAIT), self.latest

    def counts(self) -> dict[str, int]:
        with self._changed:
            return {doc_id: len(times) for doc_id, times in self._seen.items()}

    def stop(self) -> None:
        self._watch.unsubscribe()  # type: ignore[no-untyped-call]  # unannotated upstream


def all_in(status: Status, n: int) -> Callable[[dict[str, Document]], bool]:
    return lambda docs: len(docs) == n and {d["status"] for d in docs.values()} == {status.value}


def update_times(collection: firestore.CollectionReference) -> dict[str, datetime]:
    return {doc.id: doc.update_time for doc in collection.stream()}


def test_a_job_instance_is_written_three_times_in_its_life(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    oid = kick_off(fs, n=20, shards=2)
    jobs = Versions(client.collection(ORCHESTRATIONS).document(oid).collection(JOBS))
    try:
        jobs.wait_until(all_in(Status.PENDING, 20))
        claims = [
            *fs.claim(oid, 0, "task-0", limit=20, now=T0, lease=LEASE),
            *fs.claim(oid, 1, "task-1", limit=20, now=T0, lease=LEASE),
        ]
        jobs.wait_until(all_in(Status.IN_PROGRESS, 20))
        for beat in (1, 2, 3):
            assert fs.heartbeat("task-0", now=T0 + 10 * beat, lease=LEASE) == 10
            assert fs.heartbeat("task-1", now=T0 + 10 * beat, lease=LEASE) == 10
        assert fs.stale_claims(oid, now=T0 + 40) == []
        assert fs.record_outcomes(oid, [done(c) for c in claims]) == 20
        jobs.wait_until(all_in(Status.COMPLETED, 20))
        assert fs.finish_orchestration(oid, Status.COMPLETED, T0 + 50)

        assert jobs.counts() == {c.job_id: 3 for c in claims}  # kick-off, claim, finish
    finally:
        jobs.stop()


def test_heartbeats_write_one_lease_document_per_worker_and_no_instance(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    oid = kick_off(fs, n=50)
    jobs = client.collection(ORCHESTRATIONS).document(oid).collection(JOBS)
    fs.claim(oid, 0, "task-0/attempt-0", limit=50, now=T0, lease=10)
    claimed_at = update_times(jobs)

    for beat in (5, 10, 15):
        assert fs.heartbeat("task-0/attempt-0", now=T0 + beat, lease=10) == 50

    assert update_times(jobs) == claimed_at
    [lease] = client.collection(LEASES).stream()
    assert lease.get("owner") == "task-0/attempt-0"
    assert lease.get("lease_until") == T0 + 25
    # The claims' own leases ended at T0 + 10; the lease document keeps them alive.
    assert fs.stale_claims(oid, now=T0 + 24) == []
    assert len(fs.stale_claims(oid, now=T0 + 26)) == 50


def test_counts_come_from_shard_counters_written_only_by_commits_that_end_instances(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    """A claim and a retry leave the counters alone (InProgress is counted from the
    instances), so each counter write is a commit that ended instances: one event for
    the completion function."""
    oid = kick_off(fs, n=30, shards=3)
    orchestration = client.collection(ORCHESTRATIONS).document(oid)
    created = orchestration.get().update_time
    shards = Versions(orchestration.collection(SHARDS))
    try:
        shards.wait_until(lambda docs: len(docs) == 3)
        claims = fs.claim(oid, 0, "task-0", limit=10, now=T0, lease=LEASE)
        held = fs.claim(oid, 1, "task-1", limit=4, now=T0, lease=LEASE)
        assert fs.get_orchestration(oid).counts.in_progress == 14
        retried = Outcome(held[0].job_id, held[0].index, held[0].owner, Status.PENDING,
                          not_before=T0)
        assert fs.record_outcomes(oid, [retried]) == 1
        fs.record_outcomes(oid, [done(c) for c in claims])
        shards.wait_until(lambda docs: docs["0"]["succeeded"] == 10)

        counters = {shard: {k: v for k, v in doc.items() if k != "expire_at"}
                    for shard, doc in shards.latest.items()}
        assert counters == {
            "0": {"total": 10, "succeeded": 10, "failed": 0, "cancelled": 0},
            "1": {"total": 10, "succeeded": 0, "failed": 0, "cancelled": 0},
            "2": {"total": 10, "succeeded": 0, "failed": 0, "cancelled": 0},
        }
        # Created at kick-off; then only the commit that finished ten instances.
        assert shards.counts() == {"0": 2, "1": 1, "2": 1}
    finally:
        shards.stop()
    assert orchestration.get().update_time == created  # never written per instance
    counts = fs.get_orchestration(oid).counts
    assert (counts.succeeded, counts.in_progress, counts.pending) == (10, 3, 17)
    # What the store reports is the counters' sum: move one and the report moves.
    orchestration.collection(SHARDS).document("2").update({"failed": firestore.Increment(1)})
    assert fs.get_orchestration(oid).counts.failed == 1


def test_a_kick_off_streams_and_shows_nothing_until_it_is_complete(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    new = new_orchestration(parallelism=3)
    jobs = client.collection(ORCHESTRATIONS).document(new.id).collection(JOBS)
    written_meanwhile: list[int] = []

    def batches() -> Iterator[list[NewInstance]]:
        for number, batch in enumerate(batches_of(3_000, 500, shards=3), start=1):
            if number == 6:  # five commits are out, at most four of them still in flight
                with pytest.raises(UnknownOrchestration):
                    fs.get_orchestration(new.id)
                [[written]] = cast(Any, jobs).count().get()
                written_meanwhile.append(written.value)
            yield batch

    assert fs.create_orchestration(new, batches()) == 3_000

    assert written_meanwhile[0] >= 500  # streamed while the caller was still producing
    assert fs.get_orchestration(new.id).counts.pending == 3_000


def test_ten_thousand_instances_kick_off_whole_across_every_shard(fs: FirestoreStore) -> None:
    """Its speed is measured in benchmarks/gcp_fanout.py, not asserted here."""
    new = new_orchestration(parallelism=10)

    total = fs.create_orchestration(new, batches_of(10_000, 1_000, shards=10))

    snap = fs.get_orchestration(new.id)
    assert total == snap.counts.total == snap.counts.pending == 10_000
    assert sum(fs.unfinished_count(new.id, shard) for shard in range(10)) == 10_000


def test_a_refused_kick_off_leaves_no_document_behind(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    params: list[Any] = [{"n": n} for n in range(2_400)]
    params[2_000] = "not an object"  # four commits of 500 are written before this
    definition = JobDefinition(name="thumbnail", target=lambda params: None)
    new = new_orchestration(parallelism=4)

    with pytest.raises(InvalidParams, match="parameter set 2000"):
        fs.create_orchestration(new, instance_batches(definition, params, shards=4))

    leftovers = client.collection_group(JOBS).where(
        filter=firestore.FieldFilter("orchestration_id", "==", new.id)
    )
    assert list(leftovers.stream()) == []
    assert list(client.collection(ORCHESTRATIONS).document(new.id).collections()) == []


FINISH = """
import sys, time
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.core.models import Status
project, orchestration_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = FirestoreStore(project)
store.get_orchestration(orchestration_id)  # connected before the start line
time.sleep(max(0.0, start - time.time()))
print(store.finish_orchestration(orchestration_id, Status.COMPLETED, time.time()))
store.close()
"""


def test_exactly_one_process_flips_the_orchestration(fs: FirestoreStore, project: str) -> None:
    """The completion function relies on it: duplicate triggers run in separate processes."""
    oid = kick_off(fs, n=1)
    start = time.time() + 3
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FINISH, project, oid, str(start)],
            stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    answers = [p.communicate(timeout=60)[0].strip() for p in processes]

    assert sorted(answers) == ["False", "False", "False", "True"]
    assert fs.get_orchestration(oid).status is Status.COMPLETED


@pytest.mark.timeout(30)
def test_a_waiter_hears_instances_end_in_another_process(
    fs: FirestoreStore, project: str
) -> None:
    """Ends are pushed by the shard counters' listener; a claim writes no counter, so a
    watcher sees it at its next re-read (`watch` re-reads every second), not at once."""
    oid = kick_off(fs, n=3)
    worker = FirestoreStore(project)
    try:
        [claim] = worker.claim(oid, 0, "task-0", limit=1, now=T0, lease=LEASE)
        token = fs.wake_token(oid)
        finisher = threading.Timer(0.2, worker.record_outcomes, args=(oid, [done(claim)]))
        finisher.start()
        moved = fs.wait_for_wake(oid, token, timeout=10.0)
        finisher.join()
    finally:
        worker.close()

    assert moved != token  # pushed by the shard counters' listener
    counts = fs.get_orchestration(oid).counts
    assert (counts.succeeded, counts.in_progress) == (1, 0)


def test_close_stops_the_listeners(project: str) -> None:
    def listening() -> int:
        return sum(t.name == "Thread-ConsumeBidirectionalStream" for t in threading.enumerate())

    store = FirestoreStore(project)
    before = listening()
    for _ in range(3):
        store.wake_token(kick_off(store, n=1))
    assert listening() >= before + 3

    store.close()

    deadline = time.monotonic() + WAIT
    while listening() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening() == before


def test_listeners_of_orchestrations_nobody_asks_about_stop(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived API server follows orchestration after orchestration."""
    monkeypatch.setattr(firestore_changes, "LISTEN_IDLE", 0.5)
    store, other = FirestoreStore(project), FirestoreStore(project)
    try:
        old, kept = kick_off(store, n=1), kick_off(store, n=1)
        token = store.wake_token(old)
        store.wake_token(kept)
        time.sleep(0.6)

        store.wake_token(kept)  # any use prunes the idle ones

        assert store._changes.listening == 1
        store.replace_execution(old, None, "executions/e-9")  # its own writes still count...
        moved = store.wake_token(old)  # ...and asking again listens again
        assert moved != token and store._changes.listening == 2
        writer = threading.Timer(0.2, other.replace_execution,
                                 args=(old, "executions/e-9", "executions/e-10"))
        writer.start()
        assert store.wait_for_wake(old, moved, timeout=WAIT) != moved  # pushed again
        writer.join()
    finally:
        store.close()
        other.close()


def test_schedules_and_fires_live_where_the_design_says(
    fs: FirestoreStore, client: firestore.Client
) -> None:
    """docs/design.md, Storage layout: what an operator finds in the console."""
    nested = [{"name": "ada", "count": 1, "path": [[1, 2], [3]]}]
    fs.save_schedule(Schedule(name="nightly", job_name="greet", cron="0 3 * * *",
                              params=nested), create=True)
    fire = Fire(schedule="nightly", scheduled_at=T0, trigger=Trigger.CRON,
                state=FireState.FIRING, attempt=0, fired_at=T0, hold_until=T0 + 60)
    fs.claim_fire(fire, now=T0)
    doc = client.collection(SCHEDULES).document("nightly").get().to_dict() or {}
    assert json.loads(doc["params"]) == nested  # JSON text: Firestore holds no nested arrays
    fires = client.collection(SCHEDULES).document("nightly").collection(FIRES)
    [stored] = list(fires.stream())
    assert stored.id == repr(T0)
    assert (stored.get("state"), stored.get("attempt")) == ("firing", 1)


def test_a_schedule_too_big_for_a_document_is_refused_with_what_to_do(
    fs: FirestoreStore,
) -> None:
    huge = [{"name": "x" * 1000, "count": n} for n in range(1100)]  # over 1 MiB
    with pytest.raises(InvalidSchedule, match="params provider"):
        fs.save_schedule(Schedule(name="huge", job_name="greet", cron="0 3 * * *",
                                  params=huge), create=True)
    assert fs.list_schedules() == []


def test_every_document_of_history_carries_its_expiry_for_the_ttl_policies(
    project: str, client: firestore.Client
) -> None:
    """History retention: the TTL policies (infra/) delete by `expire_at`. An
    orchestration's documents share one expiry, so that they go together; a fire and a
    webhook delivery expire the retention after they began."""
    from datetime import UTC, timedelta

    from jobfleet.core.webhooks import new_delivery

    store = FirestoreStore(project, retention=timedelta(days=9))
    try:
        new = new_orchestration(parallelism=3)
        store.create_orchestration(new, batches_of(7, 3, 3))
        fire = Fire(schedule="nightly", scheduled_at=T0 + 60, trigger=Trigger.CRON,
                    state=FireState.FIRING, attempt=0, fired_at=T0, hold_until=T0 + 120)
        store.save_schedule(Schedule(name="nightly", job_name="greet", cron="0 3 * * *"),
                            create=True)
        store.claim_fire(fire, now=T0)
        store.create_webhook_deliveries(
            [new_delivery(new.id, "https://hooks.example/a", "event-1", "{}", T0 + 5)]
        )
    finally:
        store.close()
    day = timedelta(days=9)
    started = datetime.fromtimestamp(T0, UTC)
    ref = client.collection(ORCHESTRATIONS).document(new.id)
    history = [ref.get(), *ref.collection(JOBS).stream(), *ref.collection(SHARDS).stream()]
    assert len(history) == 1 + 7 + 3
    assert {doc.get("expire_at") for doc in history} == {started + day}
    [stored_fire] = client.collection(SCHEDULES).document("nightly").collection(FIRES).stream()
    assert stored_fire.get("expire_at") == started + timedelta(seconds=60) + day
    [delivery] = client.collection("jobfleet_webhooks").stream()
    assert delivery.get("expire_at") == started + timedelta(seconds=5) + day
    schedule = client.collection(SCHEDULES).document("nightly").get().to_dict() or {}
    assert "expire_at" not in schedule  # a definition is not history
