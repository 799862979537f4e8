"""The worker: `jobfleet worker`, the same entrypoint locally and in a Cloud Run task.

A worker runs its share (shard) of an orchestration's instances: it claims ready
instances in small batches, runs each attempt with a timeout, records the
outcomes, and settles the orchestration after each batch (locally). On Google Cloud
its commits of outcomes are spaced by at least `commit_spacing` (a second): each
writes its shard's counter document and invokes the completion function. A failing
instance is recorded (and retried after a backoff), never crashed on; a heartbeat thread
keeps the leases of what it holds alive so that a lost worker is noticed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from jobfleet import tracing
from jobfleet.backends import open_backend, open_store
from jobfleet.config import DEFAULT_LEASE_SECONDS, Settings
from jobfleet.core import payloads
from jobfleet.core.completion import settle
from jobfleet.core.models import ClaimedInstance, Outcome, Status
from jobfleet.core.params import to_argument
from jobfleet.core.ports import EventBus, Store
from jobfleet.core.recovery import Owner, held_by, lost_worker_outcomes
from jobfleet.core.registry import JobDefinition, get_job, import_jobs
from jobfleet.core.retry import RetryPolicy
from jobfleet.errors import JobfleetError, JobTimeout
from jobfleet.log_lines import WorkerOutput, context
from jobfleet.pipelines import Advance, advancer

log = logging.getLogger("jobfleet.worker")

MAX_BATCH = 256
BATCH_SECONDS = 0.05  # aim a claim at about this much work
FLUSH_SECONDS = 0.1  # record outcomes at least this often while a batch runs
IDLE_POLL_SECONDS = 1.0
# Held outcomes are committed at this many, due or not: the Firestore store writes at most
# this many in one transaction (its CHUNK), and each of its transactions writes the shard
# counter once.
MAX_OUTCOMES_PER_COMMIT = 400

EXIT_OK = 0
EXIT_CANNOT_WORK = 3


@dataclass(frozen=True, slots=True)
class Assignment:
    """What the environment contract (docs/design.md) tells a worker to do."""

    job_name: str
    orchestration_id: str
    task_index: int
    task_count: int
    task_attempt: int
    job_id: str | None
    execution: str = ""
    trace: tracing.TraceContext | None = None  # the kick-off's (TRACEPARENT)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Assignment:
        missing = [k for k in ("JOB_NAME", "ORCHESTRATION_ID") if not env.get(k)]
        if missing:
            raise JobfleetError(f"worker needs {' and '.join(missing)} in its environment")
        task = int(env.get("CLOUD_RUN_TASK_INDEX", "0"))
        shards = env.get("JOBFLEET_SHARDS")
        if shards:  # a recovery execution: task i takes over the i-th listed shard
            shard = int(shards.split(",")[task])
        else:  # an orchestration split over several executions numbers its shards on
            shard = int(env.get("JOBFLEET_SHARD_OFFSET", "0")) + task
        return cls(
            job_name=env["JOB_NAME"],
            orchestration_id=env["ORCHESTRATION_ID"],
            task_index=shard,
            task_count=int(env.get("CLOUD_RUN_TASK_COUNT", "1")),
            task_attempt=int(env.get("CLOUD_RUN_TASK_ATTEMPT", "0")),
            job_id=env.get("JOB_ID") or None,
            execution=env.get("CLOUD_RUN_EXECUTION", "").replace("/", "-"),
            trace=tracing.TraceContext.parse(env.get("TRACEPARENT")),
        )

    @property
    def owner(self) -> str:
        host = os.environ.get("HOSTNAME", "local").replace("/", "-")
        return str(Owner(
            self.orchestration_id, self.execution, self.task_index, self.task_attempt, host,
            os.getpid(),
        ))


def next_batch(batch: int, per_item: float) -> int:
    """How many instances to claim next: about BATCH_SECONDS of work, growing fourfold
    at most from one claim to the next."""
    return max(1, min(MAX_BATCH, batch * 4, int(BATCH_SECONDS / max(per_item, 1e-6))))


class AttemptRunner:
    """Runs one attempt of a job, sync or async, under the attempt timeout."""

    def __init__(self, definition: JobDefinition, timeout: float | None) -> None:
        self.definition = definition
        self.timeout = timeout
        self._loop = asyncio.Runner() if definition.is_async else None

    def run(self, params: dict[str, Any]) -> Any:
        fn = self.definition.function
        argument = to_argument(self.definition, params)
        if self._loop is not None:
            return self._loop.run(asyncio.wait_for(fn(argument), self.timeout))
        if self.timeout is None:
            return fn(argument)
        return _with_alarm(self.timeout, lambda: fn(argument))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


def _with_alarm(timeout: float, call: Any) -> Any:
    """Interrupt a sync attempt that overruns: SIGALRM raises JobTimeout inside it."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise JobTimeout(timeout)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _as_json(result: Any) -> Any:
    return payloads.result_json(result)


class Heartbeat(threading.Thread):
    """Extends the worker's leases on a connection of its own."""

    def __init__(self, store: Store, owner: str, lease: float) -> None:
        super().__init__(name="jobfleet-heartbeat", daemon=True)
        self.store, self.owner, self.lease = store, owner, lease
        self.stopped = threading.Event()

    def run(self) -> None:
        pause = self.lease / 3
        while not self.stopped.wait(pause):
            try:
                self.store.heartbeat(self.owner, now=time.time(), lease=self.lease)
                pause = self.lease / 3
            except Exception as exc:  # a missed beat is retried soon; expiry is the backstop
                log.warning("heartbeat failed: %s", exc)
                pause = min(1.0, self.lease / 3)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.store.close()


class Worker:
    def __init__(
        self,
        assignment: Assignment,
        definition: JobDefinition,
        store: Store,
        bus: EventBus,
        *,
        lease: float = DEFAULT_LEASE_SECONDS,
        settles: bool = True,
        commit_spacing: float = 0.0,
        output: WorkerOutput | None = None,
        advance: Advance | None = None,
    ) -> None:
        self.assignment = assignment
        self.definition = definition
        self.store, self.bus, self.lease, self.settles = store, bus, lease, settles
        self.commit_spacing = commit_spacing
        self.last_commit = -commit_spacing  # monotonic time of the last commit of outcomes
        self.committing = 0.0  # seconds spent in spaced commits since the batch started
        self.owner = assignment.owner
        snap = store.get_orchestration(assignment.orchestration_id)
        self.policy = RetryPolicy.of(snap.options)
        self.runner = AttemptRunner(definition, snap.options.timeout)
        self.output = output
        self.advance = advance  # starts a pipeline's next stage when this one ends
        self.spans = tracing.recording()

    def run(self) -> None:
        self.recover_previous_attempt()
        if self.assignment.job_id is not None:
            self.run_one(self.assignment.job_id)
            return
        batch = 1
        pending: list[Outcome] = []
        while True:
            now = time.time()
            claimed = self.store.claim(
                self.assignment.orchestration_id, self.assignment.task_index, self.owner,
                limit=batch, now=now, lease=self.lease,
            )
            if not claimed:
                self.record(pending)  # before counting what is left, which reads the counters
                pending = []
                if not self.wait_for_ready_work():
                    break
                continue
            alone = any(claim.isolated for claim in claimed)
            if alone:  # a suspect runs with nothing else held, and is written at once
                self.record(pending)
                pending = []
            started = last_flush = time.monotonic()
            self.committing = 0.0
            for claim in claimed:
                pending.append(self.attempt(claim))
                if (
                    time.monotonic() - last_flush >= FLUSH_SECONDS and self.commit_due()
                ) or len(pending) >= MAX_OUTCOMES_PER_COMMIT:
                    self.record(pending)
                    pending, last_flush = [], time.monotonic()
            so_far = (time.monotonic() - started - self.committing) / len(claimed)
            if not alone and self.carry(next_batch(batch, so_far) * so_far):
                if self.output is not None:
                    self.output.flush()
            else:
                self.record(pending)
                pending = []
            per_item = (time.monotonic() - started - self.committing) / len(claimed)
            batch = next_batch(batch, per_item)
        self.runner.close()

    def attempt(self, claim: ClaimedInstance) -> Outcome:
        """Lines written meanwhile carry the instance's job id (log_lines.py)."""
        context.job_id = claim.job_id
        try:
            if not self.spans:
                return self.run_attempt(claim)
            assignment = self.assignment
            with tracing.attempt_span(assignment.trace, assignment.job_name, claim.job_id) as span:
                previous, context.span_id = context.span_id, span
                try:
                    return self.run_attempt(claim)
                finally:
                    context.span_id = previous
        finally:
            context.job_id = None

    def run_attempt(self, claim: ClaimedInstance) -> Outcome:
        try:
            result = _as_json(self.runner.run(claim.params))
        except Exception as exc:
            error = payloads.error_info(exc, traceback.format_exc())
            outcome = self.policy.after_failure(claim, error, time.time())
            if outcome.status is Status.PENDING:
                log.warning("attempt %d failed, retried in %.1f s: %s",
                            claim.attempts, max(0.0, outcome.not_before - time.time()),
                            error.traceback.rstrip() or f"{error.type}: {error.message}")
            else:
                log.error("attempt %d failed, the last: %s", claim.attempts,
                          error.traceback.rstrip() or f"{error.type}: {error.message}")
            return outcome
        return Outcome(claim.job_id, claim.index, claim.owner, Status.COMPLETED, result=result)

    def commit_due(self) -> bool:
        return time.monotonic() - self.last_commit >= self.commit_spacing

    def carry(self, next_batch_seconds: float) -> bool:
        """Whether to keep a batch's outcomes for a later commit rather than wait for the
        spacing to pass: only when the next batch is expected to end before the commit
        falls due (never locally). The next batch then commits them, after its first
        attempt that ends once it is due. Like a batch's own outcomes, they wait for a
        slow attempt that a fast batch did not foresee."""
        due_in = self.last_commit + self.commit_spacing - time.monotonic()
        return next_batch_seconds < due_in

    def record(self, outcomes: list[Outcome]) -> None:
        """Commit outcomes, waiting out the rest of `commit_spacing` first. Locally the
        commit's time counts in the batch's time per instance, as it always has; spaced
        (on Google Cloud), neither the wait nor the commit does: a slow store would
        otherwise shrink claims to one instance, each its own commit."""
        if self.output is not None:
            self.output.flush()  # once a batch: what the jobs printed reaches the log
        if outcomes:
            began = time.monotonic()
            wait = self.last_commit + self.commit_spacing - began
            if wait > 0:
                time.sleep(wait)
            self.store.record_outcomes(self.assignment.orchestration_id, outcomes)
            self.last_commit = time.monotonic()
            if self.commit_spacing:  # spaced commits are not the work a batch is sized to
                self.committing += self.last_commit - began
            if self.settles:
                settle(self.store, self.bus, self.assignment.orchestration_id, self.advance)

    def recover_previous_attempt(self) -> None:
        """A retried task takes back what its dead predecessor held (Cloud Run runs one
        attempt of a task at a time, so anything InProgress in this shard is orphaned)."""
        if self.assignment.task_attempt == 0:
            return
        now = time.time()
        stale = held_by(
            self.store.stale_claims(
                self.assignment.orchestration_id, now=now, shard=self.assignment.task_index
            ),
            self.assignment.execution,
        )
        task, attempt = self.assignment.task_index, self.assignment.task_attempt
        why = f"task {task} attempt {attempt - 1} was lost"
        self.record(lost_worker_outcomes(stale, self.policy, why, now))

    def wait_for_ready_work(self) -> bool:
        """Sleep until the next retry is due; False when this share has nothing left."""
        oid, shard = self.assignment.orchestration_id, self.assignment.task_index
        if self.store.unfinished_count(oid, shard) == 0:
            return False
        ready = self.store.next_ready_at(oid, shard)
        delay = IDLE_POLL_SECONDS if ready is None else ready - time.time()
        time.sleep(min(IDLE_POLL_SECONDS, max(0.0, delay)))
        return True

    def run_one(self, job_id: str) -> None:
        """JOB_ID mode: every attempt of exactly one instance, waiting out its backoff."""
        while claimed := self.store.claim(
            self.assignment.orchestration_id, self.assignment.task_index, self.owner,
            limit=1, now=time.time(), lease=self.lease, job_id=job_id,
        ):
            outcome = self.attempt(claimed[0])
            self.record([outcome])
            if outcome.status is not Status.PENDING:
                break
            time.sleep(max(0.0, outcome.not_before - time.time()))
        self.runner.close()


def main(env: Mapping[str, str] | None = None) -> int:
    """Exit 0 when the share is done (failed instances are recorded, not crashed on);
    non-zero only when the worker could not do its work at all."""
    env = os.environ if env is None else env
    try:
        assignment = Assignment.from_env(env)
        settings = Settings.from_env(env)
        tracing.configure(settings.trace_export, settings.project)
        import_jobs(settings.jobs_modules)
        definition = get_job(assignment.job_name)
        backend = open_backend(settings)
    except JobfleetError as exc:
        print(f"jobfleet worker: {exc}", file=sys.stderr)
        return EXIT_CANNOT_WORK
    label_lines(assignment, settings)
    output = WorkerOutput(settings.line_format)
    heartbeat = Heartbeat(open_store(settings), assignment.owner, settings.lease_seconds)
    heartbeat.start()
    try:
        Worker(
            assignment, definition, backend.store, backend.bus,
            lease=settings.lease_seconds, settles=backend.worker_settles,
            commit_spacing=backend.commit_spacing, output=output, advance=advancer(settings),
        ).run()
    except Exception:
        log.exception("the worker of shard %d stopped", assignment.task_index)
        raise
    finally:
        heartbeat.stop()
        backend.close()
        output.close()
    return EXIT_OK


def label_lines(assignment: Assignment, settings: Settings) -> None:
    """What this worker's log lines say besides their message (log_lines.py)."""
    context.orchestration_id = assignment.orchestration_id
    context.job_name = assignment.job_name
    context.source = f"shard {assignment.task_index}"
    context.project = settings.project
    if assignment.trace is not None:
        context.trace_id = assignment.trace.trace_id
        context.span_id = assignment.trace.span_id
        context.trace_sampled = assignment.trace.sampled
