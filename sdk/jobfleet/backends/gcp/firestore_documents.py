"""jobfleet's documents in Firestore: where they live, what they hold, how they are counted.

    jobfleet_orchestrations/{orchestration_id}                written at kick-off and at the end
    jobfleet_orchestrations/{orchestration_id}/jobs/{job_id}   one per job instance
    jobfleet_orchestrations/{orchestration_id}/shards/{shard}  counters of a shard's ended instances
    jobfleet_leases/{owner hash}                               a worker's heartbeat
    jobfleet_schedules/{name}[/fires/{scheduled_at}]          schedules (firestore_schedules.py)
    jobfleet_webhooks/{hash of orchestration, url}            deliveries (firestore_webhooks.py)

Firestore sustains about one write per second per document, so no document is written
once per job instance: an orchestration's counts live in its shards' counter documents,
changed with `Increment` in the same commit as the instances that end, and summed on
read. Only ends are counted there (a claim or a retry writes no counter), and a worker
commits its ends at most once a second (`Backend.commit_spacing`), so a counter is
written about once a second at most, and each write is one event for the completion
function (cloud_function.py), whose trigger is on these documents. Job documents also
carry `orchestration_id` and `job_name` for collection-group queries.
infra/firestore.tf holds the composite indexes the queries need (tests/infra/test_drift.py
checks them against the queries this code runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter, defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from jobfleet.core import models, states
from jobfleet.core.models import (
    ClaimedInstance,
    Counts,
    ErrorInfo,
    Failure,
    JobInstance,
    JsonObject,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    RunOptions,
    Status,
    Success,
    ended,
)
from jobfleet.core.states import in_order

ORCHESTRATIONS = "jobfleet_orchestrations"
JOBS = "jobs"
SHARDS = "shards"
LEASES = "jobfleet_leases"

MAX_WRITES = 500  # Firestore's limit per commit
COMMITS_IN_FLIGHT = 4  # batched commits sent at once while a kick-off streams

# The statuses of the core state machine (core/states.py) as the stored values that the
# queries and conditional writes compare with.
PENDING, IN_PROGRESS = Status.PENDING.value, Status.IN_PROGRESS.value
UNFINISHED = in_order(states.UNFINISHED)  # what a cancel or a failed shard ends (`sources`)
TERMINAL = in_order(models.TERMINAL)
# The shard counter an instance in a status counts towards. Pending and InProgress have
# none: a claim writes no counter (InProgress is counted from the instances, Pending is
# what is left), so that the counters are written only by commits that end instances.
COUNTER = {
    Status.COMPLETED.value: "succeeded",
    Status.ERRORED.value: "failed",
    Status.CANCELLED.value: "cancelled",
}
RELEASED = {"owner": None, "lease_until": None}

Snapshot = DocumentSnapshot[firestore.DocumentReference]


def lease_id(owner: str) -> str:
    """Owners contain slashes, which document ids may not."""
    return hashlib.sha256(owner.encode()).hexdigest()[:40]


class ShardCounters:
    """Counter changes per shard, to be written in the same commit as the instances that
    move: the counts can then never disagree with the instances."""

    def __init__(self) -> None:
        self._deltas: defaultdict[int, Counter[str]] = defaultdict(Counter)

    def move(self, shard: int, before: str, after: str) -> None:
        delta = self._deltas[shard]
        if before in COUNTER:
            delta[COUNTER[before]] -= 1
        if after in COUNTER:
            delta[COUNTER[after]] += 1

    def write(self, writes: firestore.WriteBatch, ref: firestore.DocumentReference) -> None:
        """Into the commit, a batch or a transaction, of the orchestration `ref`."""
        for shard, delta in self._deltas.items():
            fields = {name: firestore.Increment(n) for name, n in delta.items() if n}
            if fields:
                writes.update(ref.collection(SHARDS).document(str(shard)), fields)


class BatchedWrites:
    """Commits of up to MAX_WRITES, a few in flight at once, for writes that need no
    transaction: a kick-off's documents stay invisible until its orchestration exists."""

    def __init__(self, client: firestore.Client, pool: ThreadPoolExecutor) -> None:
        self._client, self._pool = client, pool
        self._batch = client.batch()
        self._in_flight: deque[Future[Any]] = deque()

    def set(self, ref: firestore.DocumentReference, data: JsonObject) -> None:
        self._batch.set(ref, data)
        self._send_when_full()

    def delete(self, ref: firestore.DocumentReference) -> None:
        self._batch.delete(ref)
        self._send_when_full()

    def _send_when_full(self) -> None:
        if len(self._batch) >= MAX_WRITES:
            self._send()

    def _send(self) -> None:
        if len(self._batch):
            self._in_flight.append(self._pool.submit(self._batch.commit))
            self._batch = self._client.batch()
        while len(self._in_flight) > COMMITS_IN_FLIGHT:
            self._in_flight.popleft().result()

    def finish(self) -> None:
        """Send what is left and wait for every commit; raises the first failure."""
        self._send()
        while self._in_flight:
            self._in_flight.popleft().result()

    def abandon(self) -> None:
        """Wait for the commits in flight, whatever their fate, so that a clean-up after
        them finds everything they wrote."""
        for commit in self._in_flight:
            with contextlib.suppress(Exception):
                commit.result()
        self._in_flight.clear()


# -- writing --------------------------------------------------------------------------------

DEFAULT_RETENTION = timedelta(days=30)
EXPIRE_AT = "expire_at"  # the field the TTL policies (infra/) delete documents by


def expire_at(since: float, retention: timedelta) -> datetime:
    """When Firestore's TTL may delete a document of history started at `since`: all the
    documents of one orchestration share it, so that they go together."""
    return datetime.fromtimestamp(since, UTC) + retention


def new_orchestration(o: NewOrchestration, *, total: int, expires: datetime) -> JsonObject:
    return {
        EXPIRE_AT: expires,
        "job_name": o.job_name,
        "status": IN_PROGRESS,
        "total": total,
        "parallelism": o.options.parallelism,
        "retries": o.options.retries,
        "backoff": o.options.backoff,
        "timeout": o.options.timeout,
        "tags": dict(o.tags),
        "tag_pairs": [tag_pair(k, v) for k, v in o.tags.items()],
        "created_at": o.created_at,
        "finished_at": None,
        "execution": None,
        "event_published": False,
        "launch_progress": 0,
        "publish_claim": None,
        "traceparent": o.traceparent,
        "parent": o.parent,
        "then": None if o.then is None else json.dumps(o.then),  # no nested arrays
        "next_note": "",
        "webhooks": list(o.webhooks),
    }


def tag_pair(key: str, value: str) -> str:
    """Tags are also kept as "key=value" strings, so that one composite index
    (array-contains, then created_at) serves a filter on any tag."""
    return f"{key}={value}"


def new_shard(total: int, expires: datetime) -> JsonObject:
    return {"total": total, **dict.fromkeys(COUNTER.values(), 0), EXPIRE_AT: expires}


def unfinished_in(counters: JsonObject) -> int:
    """How many instances a shard's counters (or their sums) say are not yet terminal."""
    done = sum(int(counters.get(COUNTER[status], 0)) for status in TERMINAL)
    return int(counters.get("total", 0)) - done


def new_job(o: NewOrchestration, instance: NewInstance, expires: datetime) -> JsonObject:
    """Params and results are JSON text, as in SQLite: Firestore holds no nested arrays
    and does not keep a map's key order."""
    return {
        EXPIRE_AT: expires,
        "index": instance.index,
        "shard": instance.shard,
        "params": json.dumps(instance.params),
        "status": PENDING,
        "attempts": 0,
        "not_before": 0.0,
        "owner": None,
        "lease_until": None,
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
        "changed": 0.0,
        "isolated": False,
        "orchestration_id": o.id,
        "job_name": o.job_name,
    }


# -- reading --------------------------------------------------------------------------------


def orchestration_snapshot(doc: Snapshot, sums: dict[str, int]) -> OrchestrationSnapshot:
    """`sums` are the shard counters added up (see `Counts.from_sums`)."""
    data = doc.to_dict() or {}
    status = Status(data["status"])
    return OrchestrationSnapshot(
        id=doc.id,
        job_name=data["job_name"],
        status=status,
        counts=Counts.from_sums(
            status, total=int(data["total"]), in_progress=sums["in_progress"],
            succeeded=sums["succeeded"], failed=sums["failed"], cancelled=sums["cancelled"],
        ),
        options=RunOptions(
            retries=data["retries"], backoff=data["backoff"], timeout=data["timeout"],
            parallelism=data["parallelism"],
        ),
        tags=dict(data["tags"]),
        created_at=data["created_at"],
        finished_at=data["finished_at"],
        execution=data["execution"],
        event_published=bool(data["event_published"]),
        launch_progress=int(data.get("launch_progress") or 0),
        traceparent=data.get("traceparent") or None,
        parent=data.get("parent") or None,
        then=json.loads(data["then"]) if data.get("then") else None,
        next_note=data.get("next_note") or "",
        webhooks=list(data.get("webhooks") or []),
    )


def claimed_instance(doc: Snapshot, owner: str, attempts: int) -> ClaimedInstance:
    return ClaimedInstance(
        doc.id, int(doc.get("index")), json.loads(doc.get("params")), attempts, owner,
        isolated=bool(doc.get("isolated")),
    )


def job_instance(doc: Snapshot) -> JobInstance:
    data = doc.to_dict() or {}
    return JobInstance(
        job_id=doc.id,
        index=int(data["index"]),
        status=Status(data["status"]),
        attempts=int(data["attempts"]),
        params=json.loads(data["params"]),
        result=None if data["result"] is None else json.loads(data["result"]),
        error=None if data["error"] is None else ErrorInfo.from_json(data["error"]),
        started_at=data["started_at"],
        finished_at=data["finished_at"],
        changed=float(data.get("changed") or 0.0),
    )


def instance_result(doc: Snapshot) -> Success | Failure:
    data = doc.to_dict() or {}
    return ended(
        doc.id, data["index"], json.loads(data["params"]), Status(data["status"]),
        result=json.loads(data["result"] or "null"),
        error=ErrorInfo.from_json(data["error"]) if data["error"] else None,
        attempts=data["attempts"],
    )
