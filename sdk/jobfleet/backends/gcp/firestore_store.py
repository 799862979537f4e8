"""The production store: the Store port on Firestore, with the SQLite store's semantics.

The documents, and why counts live in per-shard counters, are in firestore_documents.py.
What it costs: a job instance is written three times in the normal path (kick-off, claim,
finish); a heartbeat writes one lease document per worker, not the instances it holds;
completion is watched with listeners, never by polling.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

from google.api_core import exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from jobfleet.backends.gcp.firestore_changes import ChangeFeed
from jobfleet.backends.gcp.firestore_documents import (
    COMMITS_IN_FLIGHT,
    COUNTER,
    IN_PROGRESS,
    JOBS,
    LEASES,
    ORCHESTRATIONS,
    PENDING,
    RELEASED,
    SHARDS,
    TERMINAL,
    UNFINISHED,
    BatchedWrites,
    ShardCounters,
    Snapshot,
    claimed_instance,
    instance_result,
    job_instance,
    lease_id,
    new_job,
    new_orchestration,
    new_shard,
    orchestration_snapshot,
    tag_pair,
    unfinished_in,
)
from jobfleet.core.models import (
    ClaimedInstance,
    ErrorInfo,
    Failure,
    JobInstance,
    JsonObject,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    Status,
    Success,
)
from jobfleet.errors import InvalidParams, JobfleetError, UnknownOrchestration

CHUNK = 400  # instances changed per transaction, leaving room for the shard counters
PAGE = 2000  # instances read per query page
CONFLICT_ATTEMPTS = 50
LEASE_RECORD = timedelta(days=7)  # then a TTL policy deletes the lease document
# Instances are stamped `changed` by their writers' clocks, which may be this far apart.
CLOCK_MARGIN = 2.0
# The order in which SQLite applies one call's outcomes (it matters for duplicates).
OUTCOME_ORDER = {Status.COMPLETED: 0, Status.ERRORED: 1, Status.PENDING: 2}

T = TypeVar("T")


def _where(field: str, op: str, value: Any) -> firestore.FieldFilter:
    return firestore.FieldFilter(field, op, value)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _pause() -> None:
    """After losing a race: a short random pause so that the racers spread out."""
    time.sleep(random.uniform(0, 0.02))


def _aggregate(aggregation: Any) -> dict[str, int]:
    """The results of an aggregation query by alias. (Any: the library's annotations of
    aggregation queries are wrong; `get()` answers one list of results per query.)"""
    [results] = aggregation.get()
    return {r.alias: int(r.value) for r in results}


class FirestoreStore:
    """The Store port on Firestore. Safe to share between threads: the client is, and every
    operation runs in a transaction or commit of its own."""

    def __init__(self, project: str, client: firestore.Client | None = None) -> None:
        self._client = client if client is not None else firestore.Client(project=project)
        self._orchestrations = self._client.collection(ORCHESTRATIONS)
        self._leases = self._client.collection(LEASES)
        self._changes = ChangeFeed(self._orchestrations)

    def close(self) -> None:
        self._changes.close()

    def _ref(self, orchestration_id: str) -> firestore.DocumentReference:
        return self._orchestrations.document(orchestration_id)

    def _transact(self, work: Callable[[firestore.Transaction], T]) -> T:
        """Run `work` in a transaction. The client retries a commit that lost a lock; a read
        that lost one raises Aborted, retried here."""
        for _ in range(CONFLICT_ATTEMPTS - 1):
            with contextlib.suppress(exceptions.Aborted):
                return self._transact_once(work)
            _pause()
        return self._transact_once(work)

    def _transact_once(self, work: Callable[[firestore.Transaction], T]) -> T:
        run = firestore.transactional(work)
        return cast(T, run(self._client.transaction(max_attempts=CONFLICT_ATTEMPTS)))

    def _shard_sums(self, ref: firestore.DocumentReference) -> dict[str, int]:
        """One aggregation over the shard counters (a read per 1,000 shards), not a read of
        every counter document."""
        query: Any = ref.collection(SHARDS).sum("total", alias="total")
        for name in COUNTER.values():
            query = query.sum(name, alias=name)
        return _aggregate(query)

    # -- orchestrations -------------------------------------------------------------------

    def create_orchestration(
        self, orchestration: NewOrchestration, batches: Iterable[Sequence[NewInstance]]
    ) -> int:
        """Instances stream out in batched commits as `batches` yields them, then the shard
        counters; the orchestration document goes last, so nothing is visible before all
        of it is written. A failure deletes what was written."""
        o = orchestration
        ref = self._ref(o.id)
        totals: Counter[int] = Counter()
        with ThreadPoolExecutor(COMMITS_IN_FLIGHT, thread_name_prefix="jobfleet-kick-off") as pool:
            writes = BatchedWrites(self._client, pool)
            try:
                for batch in batches:
                    for instance in batch:
                        writes.set(ref.collection(JOBS).document(instance.job_id),
                                   new_job(o, instance))
                        totals[instance.shard] += 1
                if not totals:
                    raise InvalidParams("no parameter sets: give at least one")
                for shard, total in totals.items():
                    writes.set(ref.collection(SHARDS).document(str(shard)), new_shard(total))
                writes.finish()
                ref.set(new_orchestration(o, total=totals.total()))  # set: safe to retry
            except BaseException as exc:
                writes.abandon()
                try:
                    self._delete_instances(ref, pool)
                except Exception as cleanup:  # the first error is the one to report
                    exc.add_note(f"the instances written could not be deleted: {cleanup}")
                raise
        return totals.total()

    def _delete_instances(self, ref: firestore.DocumentReference, pool: ThreadPoolExecutor) -> None:
        deletes = BatchedWrites(self._client, pool)
        for name in (JOBS, SHARDS):
            for doc in ref.collection(name).select([FieldPath.document_id()]).stream():
                deletes.delete(doc.reference)
        deletes.finish()

    def get_orchestration(self, orchestration_id: str) -> OrchestrationSnapshot:
        doc = self._ref(orchestration_id).get()
        if not doc.exists:
            raise UnknownOrchestration(orchestration_id)
        return self._snapshot(doc)

    def _snapshot(self, doc: Snapshot) -> OrchestrationSnapshot:
        return orchestration_snapshot(doc, self._shard_sums(doc.reference))

    def list_orchestrations(
        self,
        *,
        limit: int = 50,
        job_name: str | None = None,
        status: Status | None = None,
        tag: tuple[str, str] | None = None,
        before: str | None = None,
    ) -> list[OrchestrationSnapshot]:
        query = self._orchestrations.order_by("created_at", direction=firestore.Query.DESCENDING)
        if job_name is not None:
            query = query.where(filter=_where("job_name", "==", job_name))
        if status is not None:
            query = query.where(filter=_where("status", "==", status.value))
        if tag is not None:
            if "=" in tag[0]:  # no tag key holds one, and "key=value" would be ambiguous
                return []
            query = query.where(filter=_where("tag_pairs", "array_contains", tag_pair(*tag)))
        if before is not None:
            last = self._ref(before).get()
            if not last.exists:
                raise UnknownOrchestration(before)
            query = query.start_after(last)
        docs = list(query.limit(limit).stream()) if limit > 0 else []
        with ThreadPoolExecutor(8, thread_name_prefix="jobfleet-list") as pool:
            return list(pool.map(self._snapshot, docs))

    def replace_execution(
        self, orchestration_id: str, expected: str | None, execution: str, *, progress: int = 0
    ) -> bool:
        return self._update_if(
            orchestration_id,
            lambda doc: doc.get("execution") == expected,
            {"execution": execution, "launch_progress": progress},
        )

    def claim_publish(self, orchestration_id: str, *, now: float, hold: float) -> bool:
        def free(doc: Snapshot) -> bool:
            data = doc.to_dict() or {}
            claim = data.get("publish_claim")
            return (
                data.get("status") != IN_PROGRESS
                and not data.get("event_published")
                and (claim is None or claim < now)
            )

        return self._update_if(orchestration_id, free, {"publish_claim": now + hold})

    def _update_if(
        self, orchestration_id: str, condition: Callable[[Snapshot], bool], fields: JsonObject
    ) -> bool:
        """Update the orchestration if `condition` holds of it, as one conditional write:
        of concurrent callers that all see it hold, exactly one wins. Optimistic rather
        than a transaction, for the reason finish_orchestration gives."""
        ref = self._ref(orchestration_id)
        for _ in range(CONFLICT_ATTEMPTS):
            doc = ref.get()
            if not doc.exists or not condition(doc):
                return False
            try:
                ref.update(
                    fields, option=self._client.write_option(last_update_time=doc.update_time)
                )
            except (exceptions.FailedPrecondition, exceptions.Aborted):
                _pause()  # then, had it landed after all, the next read says so
                continue
            self._changes.bump(orchestration_id)
            return True
        raise JobfleetError(
            f"could not update orchestration {orchestration_id}: its document changed "
            f"{CONFLICT_ATTEMPTS} times in a row while being read; try again"
        )

    def unsettled_orchestrations(self) -> list[OrchestrationSnapshot]:
        """Two equality queries (single-field indexes): the unfinished ones, and the ended
        ones whose event is not recorded."""
        found = {
            doc.id: doc
            for query in (
                self._orchestrations.where(filter=_where("status", "==", IN_PROGRESS)),
                self._orchestrations.where(filter=_where("event_published", "==", False)),
            )
            for doc in query.stream()
        }
        docs = sorted(found.values(), key=lambda d: d.get("created_at"))
        with ThreadPoolExecutor(8, thread_name_prefix="jobfleet-sweep") as pool:
            return list(pool.map(self._snapshot, docs))

    def progress(self, orchestration_id: str) -> int:
        ref = self._ref(orchestration_id)
        jobs: Any = ref.collection(JOBS)
        attempts = _aggregate(jobs.sum("attempts", alias="attempts"))["attempts"]
        isolated = _aggregate(
            jobs.where(filter=_where("isolated", "==", True)).count(alias="isolated")
        )["isolated"]
        sums = self._shard_sums(ref)
        return attempts + isolated + sum(int(sums.get(COUNTER[s], 0)) for s in TERMINAL)

    def unfinished_shards(self, orchestration_id: str) -> list[int]:
        shards = []
        for doc in self._ref(orchestration_id).collection(SHARDS).stream():
            if unfinished_in(doc.to_dict() or {}) > 0:
                shards.append(int(doc.id))
        return sorted(shards)

    def release_publish(self, orchestration_id: str) -> None:
        self._update(orchestration_id, {"publish_claim": None})

    def mark_event_published(self, orchestration_id: str) -> None:
        self._update(orchestration_id, {"event_published": True})

    def _update(self, orchestration_id: str, fields: JsonObject) -> None:
        with contextlib.suppress(exceptions.NotFound):  # as in SQLite, updating nothing is fine
            self._ref(orchestration_id).update(fields)
            self._changes.bump(orchestration_id)

    # -- the worker's side ----------------------------------------------------------------

    def claim(
        self, orchestration_id: str, shard: int, owner: str, *, limit: int, now: float,
        lease: float, job_id: str | None = None,
    ) -> list[ClaimedInstance]:
        """Optimistic rather than a transaction: every claimer of a shard reads the head of
        its queue, and read locks held until commit make them wait on each other (on the
        emulator, a lock timeout of two seconds per collision). Each instance is written on
        condition that it is unchanged since it was read, so a loser fails at once and
        reads again; the commit is atomic, counters included."""
        ref = self._ref(orchestration_id)
        for _ in range(CONFLICT_ATTEMPTS):
            ready = self._ready(ref, shard, now, min(limit, CHUNK), job_id)
            alone = [doc for doc in ready if doc.get("isolated")]
            ready = alone[:1] or ready
            if not ready:
                return []
            writes = self._client.batch()
            counters = ShardCounters()
            claimed = []
            for doc in ready:
                attempts = int(doc.get("attempts")) + 1
                writes.update(
                    doc.reference,
                    {"status": IN_PROGRESS, "attempts": attempts, "owner": owner,
                     "lease_until": now + lease, "started_at": now, "changed": now},
                    option=self._client.write_option(last_update_time=doc.update_time),
                )
                counters.move(int(doc.get("shard")), PENDING, IN_PROGRESS)
                claimed.append(claimed_instance(doc, owner, attempts))
            counters.write(writes, ref)
            try:
                writes.commit()
            except (exceptions.FailedPrecondition, exceptions.Aborted):
                if not self._landed(ready, owner, now):
                    _pause()
                    continue
            self._changes.bump(orchestration_id)
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
            jobs.where(filter=_where("shard", "==", shard))
            .where(filter=_where("status", "==", PENDING))
            .where(filter=_where("not_before", "<=", now))
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
            .where(filter=_where("owner", "==", owner))
            .where(filter=_where("status", "==", IN_PROGRESS))
        )
        count = _aggregate(cast(Any, held).count(alias="held"))["held"]
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
            filter=_where("status", "==", IN_PROGRESS)
        )
        past_claim = list(held.where(filter=_where("lease_until", "<", now)).stream())
        alive = self._owners_alive({doc.get("owner") for doc in past_claim}, now)
        stale = {doc.id: doc for doc in past_claim if doc.get("owner") not in alive}
        if shard is not None:
            orphans = held.where(filter=_where("shard", "==", shard)).stream()
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
            for chunk in _chunks(ordered, CHUNK)
        )
        if applied:
            self._changes.bump(orchestration_id)
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
            self._transact(partial(_end_instances, ref, chunk, ended))
            for chunk in _chunks(unfinished, CHUNK)
        )
        if failed:
            self._changes.bump(orchestration_id)
        return failed

    def _unfinished_refs(
        self, ref: firestore.DocumentReference, shard: int | None = None
    ) -> list[firestore.DocumentReference]:
        """Instances only ever leave the unfinished states, so this one query finds every
        instance that a give-up or cancel after it may have to end."""
        query = ref.collection(JOBS).where(filter=_where("status", "in", UNFINISHED))
        if shard is not None:
            query = query.where(filter=_where("shard", "==", shard))
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
            .where(filter=_where("shard", "==", shard))
            .where(filter=_where("status", "==", PENDING))
            .order_by("not_before")
            .order_by("index")
            .limit(1)
        )
        docs = list(query.stream())
        return float(docs[0].get("not_before")) if docs else None

    # -- ending ---------------------------------------------------------------------------

    def cancel(self, orchestration_id: str, *, now: float) -> bool:
        """In transactions of up to CHUNK instances, the last of which also flips the
        orchestration: an orchestration of up to CHUNK unfinished instances is cancelled
        atomically, a larger one chunk by chunk."""
        ref = self._ref(orchestration_id)
        chunks = list(_chunks(self._unfinished_refs(ref), CHUNK)) or [[]]
        for number, chunk in enumerate(chunks, start=1):
            flip = number == len(chunks)
            if not self._transact(partial(self._cancel_some, ref, chunk, now, flip)):
                return number > 1  # another caller ended it between two of our chunks
            self._changes.bump(orchestration_id)
        return True

    def _cancel_some(
        self, ref: firestore.DocumentReference, chunk: list[firestore.DocumentReference],
        now: float, flip: bool, transaction: firestore.Transaction,
    ) -> bool:
        doc = ref.get(transaction=transaction)
        if not doc.exists:
            raise UnknownOrchestration(ref.id)
        if doc.get("status") != IN_PROGRESS:
            return False
        ended = {"status": Status.CANCELLED.value, "finished_at": now, "changed": now,
                 **RELEASED}
        _end_instances(ref, chunk, ended, transaction)
        if flip:
            transaction.update(ref, {"status": Status.CANCELLED.value, "finished_at": now})
        return True

    def finish_orchestration(self, orchestration_id: str, status: Status, now: float) -> bool:
        """Of concurrent callers, in any process, exactly one sees InProgress and flips it.

        Optimistic, as `claim` is, rather than a transaction: duplicate triggers run
        this at once, and on the emulator transactions that read the same document wait
        on each other's locks until a two-second timeout, again and again while more
        callers arrive. The flip is written on condition that the document is unchanged
        since it was read; a loser fails at once and reads again."""
        return self._update_if(
            orchestration_id,
            lambda doc: doc.get("status") == IN_PROGRESS,
            {"status": status.value, "finished_at": now},
        )

    def results(self, orchestration_id: str) -> Iterator[Success | Failure]:
        """Page by page in index order, so that a slow reader holds no stream open."""
        ref = self._ref(orchestration_id)
        if not ref.get().exists:
            raise UnknownOrchestration(orchestration_id)
        query = (
            ref.collection(JOBS).where(filter=_where("status", "in", TERMINAL))
            .order_by("index").limit(PAGE)
        )
        page = list(query.stream())
        while page:
            yield from (instance_result(doc) for doc in page)
            page = list(query.start_after(page[-1]).stream()) if len(page) == PAGE else []

    # -- instances and their changes -----------------------------------------------------

    def list_instances(
        self,
        orchestration_id: str,
        *,
        status: Status | None = None,
        after_index: int = -1,
        limit: int = 100,
    ) -> list[JobInstance]:
        ref = self._ref(orchestration_id)
        if not ref.get().exists:
            raise UnknownOrchestration(orchestration_id)
        query = ref.collection(JOBS).where(filter=_where("index", ">", after_index))
        if status is not None:
            query = query.where(filter=_where("status", "==", status.value))
        docs = query.order_by("index").limit(limit).stream() if limit > 0 else iter(())
        return [job_instance(doc) for doc in docs]

    def changes_after(self, orchestration_id: str, *, after: float) -> list[JobInstance]:
        query = self._ref(orchestration_id).collection(JOBS).where(
            filter=_where("changed", ">", after)
        )
        changed = [job_instance(doc) for doc in query.order_by("changed").stream()]
        return sorted(changed, key=lambda i: (i.changed, i.index))

    def change_stamp(self, orchestration_id: str) -> float:
        return time.time()  # writers' clocks: `stamp_margin` covers their skew

    # -- changes --------------------------------------------------------------------------

    stamp_margin = CLOCK_MARGIN

    def wake_token(self, orchestration_id: str) -> int:
        return self._changes.token(orchestration_id)

    def wait_for_wake(self, orchestration_id: str, token: int, timeout: float) -> int:
        return self._changes.wait(orchestration_id, token, timeout)


def _end_instances(
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
