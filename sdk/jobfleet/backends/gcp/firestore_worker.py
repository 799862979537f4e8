"""The Firestore store's worker side: what a worker writes (claims, heartbeats, outcomes,
a shard failed for good) and the plumbing every operation of the store shares.

`FirestoreStore` (firestore_store.py) adds the rest of the Store port: kick-offs,
reads, ending and the live views. The documents are in firestore_documents.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

from google.api_core import exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from jobfleet.backends.gcp.firestore_changes import ChangeFeed
from jobfleet.backends.gcp.firestore_documents import (
    COUNTER,
    IN_PROGRESS,
    JOBS,
    PENDING,
    RELEASED,
    SHARDS,
    UNFINISHED,
    ShardCounters,
    Snapshot,
    claimed_instance,
    lease_id,
    unfinished_in,
)
from jobfleet.core.models import ClaimedInstance, ErrorInfo, JsonObject, Outcome, Status
from jobfleet.errors import JobfleetError

CHUNK = 400  # instances changed per transaction, leaving room for the shard counters
CONFLICT_ATTEMPTS = 50
HELD_COUNT_SECONDS = 2.0  # how long a count of InProgress instances is reused
LEASE_RECORD = timedelta(days=7)  # then a TTL policy deletes the lease document
# The order in which SQLite applies one call's outcomes (it matters for duplicates).
OUTCOME_ORDER = {Status.COMPLETED: 0, Status.ERRORED: 1, Status.PENDING: 2}

T = TypeVar("T")


def field_filter(field: str, op: str, value: Any) -> firestore.FieldFilter:
    return firestore.FieldFilter(field, op, value)


def in_chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def pause_after_race() -> None:
    """After losing a race: a short random pause so that the racers spread out."""
    time.sleep(random.uniform(0, 0.02))


def aggregate(aggregation: Any) -> dict[str, int]:
    """The results of an aggregation query by alias. (Any: the library's annotations of
    aggregation queries are wrong; `get()` answers one list of results per query.)"""
    [results] = aggregation.get()
    return {r.alias: int(r.value) for r in results}


class HeldCounts:
    """How many instances of an orchestration are InProgress: a count query, reused for
    HELD_COUNT_SECONDS. It only shows (no decision reads it), and a watcher re-reads the
    orchestration every second and at every end: on the emulator, where a count scans
    every instance, counting each time was a fifth of its work in a 10,000-instance run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def forget(self, orchestration_id: str) -> None:
        with self._lock:
            self._counts.pop(orchestration_id, None)

    def get(self, ref: firestore.DocumentReference) -> int:
        now = time.monotonic()
        with self._lock:
            counted = self._counts.get(ref.id)
        if counted is not None and now - counted[0] < HELD_COUNT_SECONDS:
            return counted[1]
        held: Any = ref.collection(JOBS).where(filter=field_filter("status", "==", IN_PROGRESS))
        count = aggregate(held.count(alias="in_progress"))["in_progress"]
        with self._lock:
            self._counts = {
                oid: c for oid, c in self._counts.items() if now - c[0] < HELD_COUNT_SECONDS
            }
            self._counts[ref.id] = (now, count)
        return count


class FirestoreWorkerSide:
    """The operations a worker makes, on the client and collections `FirestoreStore`
    opens. Safe to share between threads: the client is, and every operation runs in a
    transaction or commit of its own."""

    _client: firestore.Client
    _orchestrations: firestore.CollectionReference
    _leases: firestore.CollectionReference
    _changes: ChangeFeed
    _held_counts: HeldCounts | None = None  # made on first use

    def _ref(self, orchestration_id: str) -> firestore.DocumentReference:
        return self._orchestrations.document(orchestration_id)

    def _moved(self, orchestration_id: str) -> None:
        """After this store moved instances: wake its watchers, count InProgress afresh."""
        if self._held_counts is not None:
            self._held_counts.forget(orchestration_id)
        self._changes.bump(orchestration_id)

    def _transact(self, work: Callable[[firestore.Transaction], T]) -> T:
        """Run `work` in a transaction. The client retries a commit that lost a lock; a read
        that lost one raises Aborted, retried here."""
        for _ in range(CONFLICT_ATTEMPTS - 1):
            with contextlib.suppress(exceptions.Aborted):
                return self._transact_once(work)
            pause_after_race()
        return self._transact_once(work)

    def _transact_once(self, work: Callable[[firestore.Transaction], T]) -> T:
        run = firestore.transactional(work)
        return cast(T, run(self._client.transaction(max_attempts=CONFLICT_ATTEMPTS)))

    def _shard_sums(self, ref: firestore.DocumentReference) -> dict[str, int]:
        """One aggregation over the shard counters (a read per 1,000 shards), not a read of
        every counter document, then, unless every instance has ended, one count of the
        instances InProgress (claims write no counter). The two are read one after the
        other, so while instances end the InProgress count may be off by those; the ended
        counts, which decide completion, are exact."""
        query: Any = ref.collection(SHARDS).sum("total", alias="total")
        for name in COUNTER.values():
            query = query.sum(name, alias=name)
        sums = aggregate(query)
        sums["in_progress"] = 0
        if unfinished_in(sums):
            if self._held_counts is None:
                self._held_counts = HeldCounts()
            sums["in_progress"] = self._held_counts.get(ref)
        return sums

    # -- the worker's side ----------------------------------------------------------------

    def claim(
        self, orchestration_id: str, shard: int, owner: str, *, limit: int, now: float,
        lease: float, job_id: str | None = None,
    ) -> list[ClaimedInstance]:
        """Optimistic rather than a transaction: every claimer of a shard reads the head of
        its queue, and read locks held until commit make them wait on each other (on the
        emulator, a lock timeout of two seconds per collision). Each instance is written on
        condition that it is unchanged since it was read, so a loser fails at once and
        reads again. A claim writes no shard counter: they count ended instances only, so
        that only commits that end instances write them (and trigger the completion
        function)."""
        ref = self._ref(orchestration_id)
        for _ in range(CONFLICT_ATTEMPTS):
            ready = self._ready(ref, shard, now, min(limit, CHUNK), job_id)
            alone = [doc for doc in ready if doc.get("isolated")]
            ready = alone[:1] or ready
            if not ready:
                return []
            writes = self._client.batch()
            claimed = []
            for doc in ready:
                attempts = int(doc.get("attempts")) + 1
                writes.update(
                    doc.reference,
                    {"status": IN_PROGRESS, "attempts": attempts, "owner": owner,
                     "lease_until": now + lease, "started_at": now, "changed": now},
                    option=self._client.write_option(last_update_time=doc.update_time),
                )
                claimed.append(claimed_instance(doc, owner, attempts))
            try:
                writes.commit()
            except (exceptions.FailedPrecondition, exceptions.Aborted):
                if not self._landed(ready, owner, now):
                    pause_after_race()
                    continue
            self._moved(orchestration_id)
            return sorted(claimed, key=lambda c: c.index)
        raise JobfleetError(
            f"could not claim instances of orchestration {orchestration_id}, shard {shard}: "
            f"{CONFLICT_ATTEMPTS} claims in a row lost to other claimers; try again"
        )

    def _ready(
        self, ref: firestore.DocumentReference, shard: int, now: float, limit: int,
        job_id: str | None,
    ) -> list[Snapshot]:
        if limit <= 0:
            return []
        jobs = ref.collection(JOBS)
        if job_id is not None:
            doc = jobs.document(job_id).get()
            ready = doc.exists and doc.get("status") == PENDING and doc.get("not_before") <= now
            return [doc] if ready else []
        query = (
            jobs.where(filter=field_filter("shard", "==", shard))
            .where(filter=field_filter("status", "==", PENDING))
            .where(filter=field_filter("not_before", "<=", now))
            .order_by("not_before")
            .order_by("index")
            .limit(limit)
        )
        return list(query.stream())

    def _landed(self, ready: list[Snapshot], owner: str, now: float) -> bool:
        """Whether a claim that failed its conditions was in fact ours: the client retries
        a commit whose answer was lost, and the retry fails on the first try's own writes."""
        docs = self._client.get_all([doc.reference for doc in ready])
        return all(
            doc.get("status") == IN_PROGRESS and doc.get("owner") == owner
            and doc.get("started_at") == now
            for doc in docs
        )

    def heartbeat(self, owner: str, *, now: float, lease: float) -> int:
        """One lease document per owner, not a write per instance it holds: `stale_claims`
        reads it next to each instance's claim-time lease."""
        held = (
            self._client.collection_group(JOBS)
            .where(filter=field_filter("owner", "==", owner))
            .where(filter=field_filter("status", "==", IN_PROGRESS))
        )
        count = aggregate(cast(Any, held).count(alias="held"))["held"]
        if count:
            expire_at = datetime.fromtimestamp(now + lease, UTC) + LEASE_RECORD
            self._leases.document(lease_id(owner)).set(
                {"owner": owner, "lease_until": now + lease, "expire_at": expire_at}
            )
        return count

    def stale_claims(
        self, orchestration_id: str, *, now: float, shard: int | None = None
    ) -> list[ClaimedInstance]:
        """A lease has expired when neither the instance's claim-time `lease_until` nor its
        owner's lease document reaches `now`."""
        held = self._ref(orchestration_id).collection(JOBS).where(
            filter=field_filter("status", "==", IN_PROGRESS)
        )
        past_claim = list(held.where(filter=field_filter("lease_until", "<", now)).stream())
        alive = self._owners_alive({doc.get("owner") for doc in past_claim}, now)
        stale = {doc.id: doc for doc in past_claim if doc.get("owner") not in alive}
        if shard is not None:
            orphans = held.where(filter=field_filter("shard", "==", shard)).stream()
            stale.update({doc.id: doc for doc in orphans})
        claims = (claimed_instance(d, d.get("owner"), int(d.get("attempts")))
                  for d in stale.values())
        return sorted(claims, key=lambda c: c.index)

    def _owners_alive(self, owners: set[str], now: float) -> set[str]:
        if not owners:
            return set()
        leases = self._client.get_all([self._leases.document(lease_id(o)) for o in owners])
        return {doc.get("owner") for doc in leases if doc.exists and doc.get("lease_until") >= now}

    def record_outcomes(self, orchestration_id: str, outcomes: Sequence[Outcome]) -> int:
        now = time.time()
        ordered = sorted(
            (o for o in outcomes if o.status in OUTCOME_ORDER),
            key=lambda o: OUTCOME_ORDER[o.status],
        )
        ref = self._ref(orchestration_id)
        applied = sum(
            self._transact(partial(self._apply_outcomes, ref, chunk, now))
            for chunk in in_chunks(ordered, CHUNK)
        )
        if applied:
            self._moved(orchestration_id)
        return applied

    def _apply_outcomes(
        self, ref: firestore.DocumentReference, outcomes: list[Outcome], now: float,
        transaction: firestore.Transaction,
    ) -> int:
        """An outcome applies while its owner still holds the instance, and only once."""
        jobs = ref.collection(JOBS)
        refs = {o.job_id: jobs.document(o.job_id) for o in outcomes}
        held = {
            doc.id: doc for doc in transaction.get_all(list(refs.values()))
            if doc.exists and doc.get("status") == IN_PROGRESS
        }
        counters = ShardCounters()
        applied = 0
        for o in outcomes:
            doc = held.get(o.job_id)
            if doc is None or doc.get("owner") != o.owner:
                continue
            del held[o.job_id]
            transaction.update(refs[o.job_id], {
                "attempts": int(doc.get("attempts")) - int(o.refund),
                **({"isolated": True} if o.isolate else {}),
                "status": o.status.value,
                "result": None if o.result is None else json.dumps(o.result),
                "error": None if o.error is None else o.error.to_json(),
                "not_before": o.not_before,
                "finished_at": None if o.status is Status.PENDING else now,
                "changed": now,
                **RELEASED,
            })
            counters.move(int(doc.get("shard")), IN_PROGRESS, o.status.value)
            applied += 1
        counters.write(transaction, ref)
        return applied

    def fail_unfinished(
        self, orchestration_id: str, shard: int, error: ErrorInfo, *, now: float
    ) -> int:
        ref = self._ref(orchestration_id)
        ended = {"status": Status.ERRORED.value, "error": error.to_json(), "finished_at": now,
                 "changed": now, **RELEASED}
        unfinished = self._unfinished_refs(ref, shard)
        failed = sum(
            self._transact(partial(end_instances, ref, chunk, ended))
            for chunk in in_chunks(unfinished, CHUNK)
        )
        if failed:
            self._moved(orchestration_id)
        return failed

    def _unfinished_refs(
        self, ref: firestore.DocumentReference, shard: int | None = None
    ) -> list[firestore.DocumentReference]:
        """Instances only ever leave the unfinished states, so this one query finds every
        instance that a give-up or cancel after it may have to end."""
        query = ref.collection(JOBS).where(filter=field_filter("status", "in", UNFINISHED))
        if shard is not None:
            query = query.where(filter=field_filter("shard", "==", shard))
        return [doc.reference for doc in query.select([FieldPath.document_id()]).stream()]

    def unfinished_count(self, orchestration_id: str, shard: int | None = None) -> int:
        """From the counters: one small read, however many instances."""
        ref = self._ref(orchestration_id)
        if shard is None:
            counts = self._shard_sums(ref)
        else:
            counts = ref.collection(SHARDS).document(str(shard)).get().to_dict() or {}
        return unfinished_in(counts)

    def next_ready_at(self, orchestration_id: str, shard: int) -> float | None:
        query = (
            self._ref(orchestration_id).collection(JOBS)
            .where(filter=field_filter("shard", "==", shard))
            .where(filter=field_filter("status", "==", PENDING))
            .order_by("not_before")
            .order_by("index")
            .limit(1)
        )
        docs = list(query.stream())
        return float(docs[0].get("not_before")) if docs else None


def end_instances(
    ref: firestore.DocumentReference, chunk: list[firestore.DocumentReference],
    ended: JsonObject, transaction: firestore.Transaction,
) -> int:
    """End the instances of `chunk` that are still unfinished, with their counters."""
    counters = ShardCounters()
    unfinished = [
        doc for doc in transaction.get_all(chunk)
        if doc.exists and doc.get("status") in UNFINISHED
    ]
    for doc in unfinished:
        transaction.update(doc.reference, ended)
        counters.move(int(doc.get("shard")), doc.get("status"), ended["status"])
    counters.write(transaction, ref)
    return len(unfinished)
