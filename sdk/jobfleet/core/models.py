"""Domain records shared by the SDK, the worker, the backends and the edges."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

JsonObject = dict[str, Any]

EVENT_NAMESPACE = uuid.UUID("5b0f6a8e-3c1d-4f7e-9a2b-6d4c8e1f0a37")


class Status(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    ERRORED = "Errored"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.ERRORED, Status.CANCELLED})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, traceback: str = "") -> ErrorInfo:
        return cls(type=type(exc).__name__, message=str(exc), traceback=traceback)

    def to_json(self) -> JsonObject:
        return asdict(self)

    @classmethod
    def from_json(cls, data: JsonObject) -> ErrorInfo:
        return cls(type=data["type"], message=data["message"], traceback=data.get("traceback", ""))


WORKER_LOST = "WorkerLost"

# A JobCompletedEvent's fields that are also its Pub/Sub attributes
# (`JobCompletedEvent.attributes`); tags become attributes beside them. `traceparent`
# (W3C trace context) is there when the kick-off's trace is known.
EVENT_ATTRIBUTES = ("event_id", "orchestration_id", "job_name", "status", "traceparent")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How the instances of one orchestration run: fixed at kick-off."""

    retries: int
    backoff: float
    timeout: float | None
    parallelism: int

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def task_count(self, total: int) -> int:
        """One task per shard; never more tasks than instances."""
        return max(1, min(self.parallelism, total))


@dataclass(frozen=True, slots=True)
class NewOrchestration:
    id: str
    job_name: str
    options: RunOptions
    tags: dict[str, str]
    created_at: float
    # The kick-off's W3C trace context (core/tracing.py): workers and the completion
    # event continue it, so that a fan-out is one trace.
    traceparent: str | None = None
    # A pipeline stage (core/pipeline.py): the stage it follows, and the stages still
    # to come after it (as JSON), started one by one as each ends.
    parent: str | None = None
    then: list[JsonObject] | None = None
    # URLs that receive its JobCompletedEvent, signed (core/webhooks.py).
    webhooks: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NewInstance:
    job_id: str
    index: int
    shard: int
    params: JsonObject


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    pending: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @classmethod
    def from_sums(
        cls, status: Status, *, total: int, in_progress: int, succeeded: int, failed: int,
        cancelled: int,
    ) -> Counts:
        """The counts of an orchestration in `status` from what the stores keep: no
        Pending counter (it is what is left) and nothing in progress once it has ended."""
        in_progress = 0 if status.terminal else in_progress
        done = succeeded + failed + cancelled
        return cls(
            total=total, pending=max(0, total - done - in_progress), in_progress=in_progress,
            succeeded=succeeded, failed=failed, cancelled=cancelled,
        )


@dataclass(frozen=True, slots=True)
class OrchestrationSnapshot:
    """An orchestration as it stands at one moment: what `status()` returns."""

    id: str
    job_name: str
    status: Status
    counts: Counts
    options: RunOptions
    tags: dict[str, str]
    created_at: float
    finished_at: float | None = None
    execution: str | None = None
    event_published: bool = False
    # What `Store.progress` said when the current execution was launched: a recovery
    # is launched only while executions keep making progress.
    launch_progress: int = 0
    traceparent: str | None = None  # the kick-off's trace context, when it had one
    parent: str | None = None  # the pipeline stage this one follows
    then: list[JsonObject] | None = None  # the stages still to come (core/pipeline.py)
    next_note: str = ""  # why the next stage did not start, when it did not
    webhooks: list[str] = field(default_factory=list)  # receive its event (core/webhooks.py)

    def to_json(self) -> JsonObject:
        c = self.counts
        return {
            "orchestration_id": self.id,
            "job_name": self.job_name,
            "status": str(self.status),
            "total": c.total,
            "pending": c.pending,
            "in_progress": c.in_progress,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "cancelled": c.cancelled,
            "tags": dict(self.tags),
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True, slots=True)
class ClaimedInstance:
    """An instance a worker holds the lease of, for one attempt."""

    job_id: str
    index: int
    params: JsonObject
    attempts: int
    owner: str
    # Claimed alone after a crash (core/recovery.py): its outcome is written before
    # anything else is claimed, even by a worker that holds outcomes back (worker.py).
    isolated: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to; the store applies it only while `owner` still holds the lease."""

    job_id: str
    index: int
    owner: str
    status: Status  # Completed, Errored, or Pending (to be retried at `not_before`)
    result: Any = None
    error: ErrorInfo | None = None
    not_before: float = 0.0
    # A Pending outcome of an attempt that never really ran (its worker died holding it
    # among others): the attempt is given back, and the instance runs alone from now on.
    refund: bool = False
    isolate: bool = False


@dataclass(frozen=True, slots=True)
class JobInstance:
    """One instance as the API and the dashboard show it.

    `changed` orders an orchestration's instances by their latest write: a commit
    sequence in SQLite, the writer's clock in Firestore (see `Store.stamp_margin`).
    """

    job_id: str
    index: int
    status: Status
    attempts: int
    params: JsonObject
    result: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    changed: float = 0.0

    def to_json(self) -> JsonObject:
        return {
            "job_id": self.job_id,
            "index": self.index,
            "status": str(self.status),
            "attempts": self.attempts,
            "params": self.params,
            "result": self.result,
            "error": None if self.error is None else self.error.to_json(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True, slots=True)
class Success:
    job_id: str
    index: int
    params: JsonObject
    result: Any

    def to_json(self) -> JsonObject:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Failure:
    job_id: str
    index: int
    params: JsonObject
    error: ErrorInfo
    attempts: int
    status: Status = Status.ERRORED

    def to_json(self) -> JsonObject:
        return {
            "job_id": self.job_id,
            "index": self.index,
            "params": self.params,
            "error": self.error.to_json(),
            "attempts": self.attempts,
            "status": str(self.status),
        }


# What a Cancelled instance reports as its error: the store keeps none for it.
CANCELLED_ERROR = ErrorInfo(type="Cancelled", message="the orchestration was cancelled")


def ended(
    job_id: str, index: int, params: JsonObject, status: Status, *, result: Any,
    error: ErrorInfo | None, attempts: int,
) -> Success | Failure:
    """A terminal instance as a result: a Success, or a Failure with its error (a
    Cancelled one gets CANCELLED_ERROR)."""
    if status is Status.COMPLETED:
        return Success(job_id, index, params, result)
    info = error if error is not None and status is Status.ERRORED else CANCELLED_ERROR
    return Failure(job_id, index, params, info, attempts, status)


@dataclass(frozen=True, slots=True)
class JobCompletedEvent:
    """Announced once per orchestration when every instance is terminal."""

    event_id: str
    orchestration_id: str
    job_name: str
    status: Status
    total: int
    succeeded: int
    failed: int
    cancelled: int
    tags: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float = 0.0
    traceparent: str | None = None  # the kick-off's W3C trace context, when known

    @staticmethod
    def event_id_for(orchestration_id: str) -> str:
        """Deterministic, so that subscribers can drop a redelivered event."""
        return str(uuid.uuid5(EVENT_NAMESPACE, f"completed:{orchestration_id}"))

    @classmethod
    def for_orchestration(cls, snap: OrchestrationSnapshot) -> JobCompletedEvent:
        return cls(
            event_id=cls.event_id_for(snap.id),
            orchestration_id=snap.id,
            job_name=snap.job_name,
            status=snap.status,
            total=snap.counts.total,
            succeeded=snap.counts.succeeded,
            failed=snap.counts.failed,
            cancelled=snap.counts.cancelled,
            tags=dict(snap.tags),
            created_at=snap.created_at,
            finished_at=snap.finished_at or 0.0,
            traceparent=snap.traceparent,
        )

    def attributes(self) -> dict[str, str]:
        """The message attributes a subscription filters on: one per tag, then the
        event's own fields (which a tag may not shadow)."""
        own = {name: getattr(self, name) for name in EVENT_ATTRIBUTES}
        return {**self.tags, **{name: str(value) for name, value in own.items() if value}}

    def to_json(self) -> JsonObject:
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_json(cls, data: JsonObject) -> JobCompletedEvent:
        return cls(**{**data, "status": Status(data["status"])})
