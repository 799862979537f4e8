"""The production store: the Store port on Firestore, with the SQLite store's semantics.

The documents, and why counts live in per-shard counters, are in firestore_documents.py.
What it costs: a job instance is written three times in the normal path (kick-off, claim,
finish); a heartbeat writes one lease document per worker, not the instances it holds;
completion is watched with listeners, never by polling.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any

from google.api_core import exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from jobfleet.backends.gcp.firestore_changes import ChangeFeed
from jobfleet.backends.gcp.firestore_documents import (
    COMMITS_IN_FLIGHT,
    COUNTER,
    DEFAULT_RETENTION,
    IN_PROGRESS,
    JOBS,
    LEASES,
    ORCHESTRATIONS,
    RELEASED,
    SHARDS,
    TERMINAL,
    BatchedWrites,
    Snapshot,
    expire_at,
    instance_result,
    job_instance,
    new_job,
    new_orchestration,
    new_shard,
    orchestration_snapshot,
    tag_pair,
    unfinished_in,
)
from jobfleet.backends.gcp.firestore_schedules import FirestoreSchedules
from jobfleet.backends.gcp.firestore_webhooks import FirestoreWebhooks
from jobfleet.backends.gcp.firestore_worker import (
    CHUNK,
    CONFLICT_ATTEMPTS,
    FirestoreWorkerSide,
    aggregate,
    end_instances,
    field_filter,
    in_chunks,
    pause_after_race,
)
from jobfleet.core.models import (
    Failure,
    JobInstance,
    JsonObject,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Status,
    Success,
)
from jobfleet.errors import InvalidParams, JobfleetError, UnknownOrchestration

PAGE = 2000  # instances read per query page
# Instances are stamped `changed` by their writers' clocks, which may be this far apart.
CLOCK_MARGIN = 2.0


class FirestoreStore(FirestoreSchedules, FirestoreWebhooks, FirestoreWorkerSide):
    """The Store port on Firestore. Safe to share between threads: the client is, and every
    operation runs in a transaction or commit of its own."""

    def __init__(
        self, project: str, client: firestore.Client | None = None,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self._client = client if client is not None else firestore.Client(project=project)
        self._retention = retention
        self._orchestrations = self._client.collection(ORCHESTRATIONS)
        self._leases = self._client.collection(LEASES)
        self._changes = ChangeFeed(self._orchestrations)

    def close(self) -> None:
        self._changes.close()

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
        expires = expire_at(o.created_at, self._retention)
        with ThreadPoolExecutor(COMMITS_IN_FLIGHT, thread_name_prefix="jobfleet-kick-off") as pool:
            writes = BatchedWrites(self._client, pool)
            try:
                for batch in batches:
                    for instance in batch:
                        writes.set(ref.collection(JOBS).document(instance.job_id),
                                   new_job(o, instance, expires))
                        totals[instance.shard] += 1
                if not totals:
                    raise InvalidParams("no parameter sets: give at least one")
                for shard, total in totals.items():
                    shard_ref = ref.collection(SHARDS).document(str(shard))
                    writes.set(shard_ref, new_shard(total, expires))
                writes.finish()
                # set: safe to retry
                ref.set(new_orchestration(o, total=totals.total(), expires=expires))
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
            query = query.where(filter=field_filter("job_name", "==", job_name))
        if status is not None:
            query = query.where(filter=field_filter("status", "==", status.value))
        if tag is not None:
            if "=" in tag[0]:  # no tag key holds one, and "key=value" would be ambiguous
                return []
            query = query.where(filter=field_filter("tag_pairs", "array_contains", tag_pair(*tag)))
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
                pause_after_race()  # then, had it landed after all, the next read says so
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
                self._orchestrations.where(filter=field_filter("status", "==", IN_PROGRESS)),
                self._orchestrations.where(filter=field_filter("event_published", "==", False)),
            )
            for doc in query.stream()
        }
        docs = sorted(found.values(), key=lambda d: d.get("created_at"))
        with ThreadPoolExecutor(8, thread_name_prefix="jobfleet-sweep") as pool:
            return list(pool.map(self._snapshot, docs))

    def progress(self, orchestration_id: str) -> int:
        ref = self._ref(orchestration_id)
        jobs: Any = ref.collection(JOBS)
        attempts = aggregate(jobs.sum("attempts", alias="attempts"))["attempts"]
        isolated = aggregate(
            jobs.where(filter=field_filter("isolated", "==", True)).count(alias="isolated")
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

    def note_next(self, orchestration_id: str, note: str) -> None:
        self._ref(orchestration_id).update({"next_note": note})

    def mark_event_published(self, orchestration_id: str) -> None:
        self._update(orchestration_id, {"event_published": True})

    def _update(self, orchestration_id: str, fields: JsonObject) -> None:
        with contextlib.suppress(exceptions.NotFound):  # as in SQLite, updating nothing is fine
            self._ref(orchestration_id).update(fields)
            self._changes.bump(orchestration_id)

    # -- ending ---------------------------------------------------------------------------

    def cancel(self, orchestration_id: str, *, now: float) -> bool:
        """In transactions of up to CHUNK instances, the last of which also flips the
        orchestration: an orchestration of up to CHUNK unfinished instances is cancelled
        atomically, a larger one chunk by chunk."""
        ref = self._ref(orchestration_id)
        chunks = list(in_chunks(self._unfinished_refs(ref), CHUNK)) or [[]]
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
        end_instances(ref, chunk, ended, transaction)
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
            ref.collection(JOBS).where(filter=field_filter("status", "in", TERMINAL))
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
        query = ref.collection(JOBS).where(filter=field_filter("index", ">", after_index))
        if status is not None:
            query = query.where(filter=field_filter("status", "==", status.value))
        docs = query.order_by("index").limit(limit).stream() if limit > 0 else iter(())
        return [job_instance(doc) for doc in docs]

    def changes_after(self, orchestration_id: str, *, after: float) -> list[JobInstance]:
        query = self._ref(orchestration_id).collection(JOBS).where(
            filter=field_filter("changed", ">", after)
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
