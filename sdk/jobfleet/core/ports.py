"""The ports every backend implements, stated in job operations.

`Store` holds state, `Launcher` provides compute, `EventBus` carries completion
events. The local backend (SQLite, processes, an event log) and the Google Cloud
backend (Firestore, Cloud Run Jobs, Pub/Sub) both implement them, and one contract
test suite runs against every Store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from jobfleet.core.models import (
    ClaimedInstance,
    ErrorInfo,
    Failure,
    JobCompletedEvent,
    JobInstance,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    Status,
    Success,
)
from jobfleet.core.schedules import Fire, Schedule
from jobfleet.core.webhooks import WebhookDelivery
from jobfleet.log_lines import LogLine


class Store(Protocol):
    def create_orchestration(
        self, orchestration: NewOrchestration, batches: Iterable[Sequence[NewInstance]]
    ) -> int:
        """Write the orchestration and all its instances, or nothing at all; returns the total.

        `batches` is consumed lazily; an exception raised while iterating it (a bad
        parameter set) must leave no trace of the orchestration.
        """

    def get_orchestration(self, orchestration_id: str) -> OrchestrationSnapshot:
        """Raises UnknownOrchestration."""

    def list_orchestrations(
        self,
        *,
        limit: int = 50,
        job_name: str | None = None,
        status: Status | None = None,
        tag: tuple[str, str] | None = None,
        before: str | None = None,
    ) -> list[OrchestrationSnapshot]:
        """Newest first; `tag` is a (key, value) the orchestration carries; `before` is
        the id of the last orchestration of the previous page (UnknownOrchestration if
        there is none of that id)."""

    def list_instances(
        self,
        orchestration_id: str,
        *,
        status: Status | None = None,
        after_index: int = -1,
        limit: int = 100,
    ) -> list[JobInstance]:
        """Instances by index, from `after_index + 1`; raises UnknownOrchestration."""

    # Change stamps order an orchestration's instance writes (`JobInstance.changed`), so
    # that a reader can ask for what changed after a stamp. (Not to be confused with the
    # wake token below, which only says that something was written.)

    stamp_margin: float
    """How far back `changes_after` callers must look again to miss no change: 0 where
    `changed` is a commit sequence, a few seconds where it is a writer's clock."""

    def changes_after(self, orchestration_id: str, *, after: float) -> list[JobInstance]:
        """Instances whose latest write is stamped `changed > after`, in that order."""

    def change_stamp(self, orchestration_id: str) -> float:
        """A change stamp at least as late as every instance write so far."""

    def replace_execution(
        self, orchestration_id: str, expected: str | None, execution: str, *, progress: int = 0
    ) -> bool:
        """Record where the orchestration runs (Cloud Run executions, local processes),
        and `progress` as it stood when that was launched, if it still runs at `expected`
        (None: not launched yet); False if another caller recorded a launch first."""

    def unsettled_orchestrations(self) -> list[OrchestrationSnapshot]:
        """Every orchestration still InProgress or whose event is not yet recorded, oldest
        first: what a sweep looks at. Its cost follows these, not the history."""

    def progress(self, orchestration_id: str) -> int:
        """A number that grows whenever an execution moves the orchestration on: instances
        ended, attempts charged, instances isolated. A recovery that leaves it where it was
        made no progress."""

    def unfinished_shards(self, orchestration_id: str) -> list[int]:
        """The shards with an instance not yet terminal, in order."""

    def claim(
        self,
        orchestration_id: str,
        shard: int,
        owner: str,
        *,
        limit: int,
        now: float,
        lease: float,
        job_id: str | None = None,
    ) -> list[ClaimedInstance]:
        """Move up to `limit` ready Pending instances of `shard` (or just `job_id`) to
        InProgress for `owner`, counting an attempt for each. An isolated instance (see
        core/recovery.py) is only ever claimed alone."""

    def heartbeat(self, owner: str, *, now: float, lease: float) -> int:
        """Extend the lease of every instance `owner` holds; returns how many."""

    def stale_claims(
        self, orchestration_id: str, *, now: float, shard: int | None = None
    ) -> list[ClaimedInstance]:
        """InProgress instances whose lease expired, and with `shard`, every InProgress
        instance of that shard (a task attempt starting means the previous one is gone)."""

    def record_outcomes(self, orchestration_id: str, outcomes: Sequence[Outcome]) -> int:
        """Apply outcomes whose owner still holds the lease; returns how many applied. A
        Pending outcome with `refund` gives its attempt back; with `isolate`, the instance
        is claimed alone from then on."""

    def fail_unfinished(
        self, orchestration_id: str, shard: int, error: ErrorInfo, *, now: float
    ) -> int:
        """Mark every unfinished instance of `shard` Errored with `error`; returns how many."""

    def unfinished_count(self, orchestration_id: str, shard: int | None = None) -> int:
        """How many instances (of `shard`, or of all) are not yet terminal."""

    def next_ready_at(self, orchestration_id: str, shard: int) -> float | None:
        """When the earliest Pending instance of `shard` may run (a retry's backoff)."""

    def cancel(self, orchestration_id: str, *, now: float) -> bool:
        """Cancel every unfinished instance and the orchestration; False if it had ended."""

    def finish_orchestration(self, orchestration_id: str, status: Status, now: float) -> bool:
        """Flip InProgress to `status`; True for the one caller that made the flip."""

    def claim_publish(self, orchestration_id: str, *, now: float, hold: float) -> bool:
        """Take the right to publish an ended orchestration's event for `hold` seconds;
        False while another caller holds it, or once the event is recorded. A publisher
        that dies before recording its publish is replaced when its hold runs out."""

    def release_publish(self, orchestration_id: str) -> None:
        """Give the publish claim back (the publish failed): the next caller may retry."""

    def mark_event_published(self, orchestration_id: str) -> None: ...

    def note_next(self, orchestration_id: str, note: str) -> None:
        """Record why the pipeline stage after this orchestration did not start."""

    def results(self, orchestration_id: str) -> Iterator[Success | Failure]:
        """Every terminal instance, as a Success or a Failure with its original params
        (what the `Outcome`s given to `record_outcomes` came to)."""

    def wake_token(self, orchestration_id: str) -> int:
        """An opaque value that differs after any write to the orchestration or its
        instances, by any process (it may also move on other writes): something to wait
        on, not an order."""

    def wait_for_wake(self, orchestration_id: str, token: int, timeout: float) -> int:
        """Block until the wake token differs from `token` (or timeout); return it.

        Pushed where the store can (a Firestore listener), never a busy loop.
        """

    # Schedules (core/schedules.py) and their fires, keyed by (schedule, scheduled time).

    def save_schedule(self, schedule: Schedule, *, create: bool) -> None:
        """Write a schedule; with `create`, ScheduleExists if one of that name exists."""

    def get_schedule(self, name: str) -> Schedule:
        """Raises UnknownSchedule."""

    def list_schedules(self) -> list[Schedule]:
        """By name."""

    def delete_schedule(self, name: str) -> bool:
        """False if there was none (its fires stay, as history)."""

    def claim_fire(self, fire: Fire, *, now: float) -> tuple[bool, Fire]:
        """Claim one scheduled time for the caller in one conditional write: `fire` is
        stored FIRING with the next attempt number when `may_claim` allows it. Returns
        whether the caller won, and the fire as it then stands."""

    def finish_fire(self, fire: Fire) -> bool:
        """Record a fire's outcome, if the stored fire is still FIRING at `fire.attempt`
        (a claimant whose hold lapsed and was replaced records nothing)."""

    def get_fire(self, schedule: str, scheduled_at: float) -> Fire | None: ...

    def list_fires(self, schedule: str, *, limit: int = 20) -> list[Fire]:
        """Newest scheduled time first."""

    # Webhook deliveries (core/webhooks.py), one per (orchestration, URL).

    def create_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        """Write each delivery unless one of its (orchestration, URL) exists: safe to
        repeat, and a repeat changes nothing."""

    def webhook_deliveries(self, orchestration_id: str) -> list[WebhookDelivery]:
        """An orchestration's deliveries, by URL."""

    def due_webhook_deliveries(self, *, now: float, limit: int) -> list[WebhookDelivery]:
        """Pending deliveries whose next attempt is due by `now`, earliest first: an
        indexed query, whose cost follows the due deliveries, not the history."""

    def claim_webhook_delivery(
        self, orchestration_id: str, url: str, *, now: float, hold: float, claimant: str
    ) -> WebhookDelivery | None:
        """Take the next attempt of a delivery for `hold` seconds, in one conditional
        write that applies `may_claim`: of concurrent callers one gets the delivery
        (holding `claimant`), the others None."""

    def record_webhook_attempt(self, delivery: WebhookDelivery, claimant: str) -> bool:
        """Write `delivery` (its attempts, state and next attempt, claim released) if the
        stored one is still held by `claimant`; False if its hold lapsed and another
        caller claimed it since."""

    def close(self) -> None: ...


class ScheduleTimer(Protocol):
    """What makes schedules fire on time: Cloud Scheduler jobs on Google Cloud; locally
    nothing to deploy (the local scheduler reads the store)."""

    def apply(self, schedule: Schedule) -> None:
        """Create or update the timing of `schedule` (paused or not)."""

    def remove(self, name: str) -> None:
        """Delete the timing of a schedule; no error if there is none."""

    def deployed(self) -> list[str]:
        """The schedules that have a timing (Cloud Scheduler jobs), by name."""

    def ensure_sweep(self) -> None:
        """Make sure `jobfleet sweep` runs every minute (a Cloud Scheduler job)."""


class Launcher(Protocol):
    launch_grace: float
    """Seconds an orchestration may stay unlaunched before a sweep launches it (the kick-off
    that committed it is presumed dead): longer than a launch can take."""

    def launch(
        self,
        orchestration: NewOrchestration,
        task_count: int,
        jobs: list[str],
        shards: Sequence[int] | None = None,
    ) -> str:
        """Start `task_count` workers for an orchestration; returns an execution name.

        `jobs` names the modules (or script files) that workers import to find the job.
        Task i works on shard i, or on `shards[i]` for a recovery of some shards.
        """

    def cancel(self, execution: str) -> None:
        """Stop the workers of an execution."""

    def is_running(self, execution: str) -> bool:
        """False once every task of the execution has ended, for good or lost; True while
        any may still be working."""

    def stop_tasks(self, execution: str, owners: Sequence[str]) -> bool:
        """Stop the tasks whose workers are the given claim owners (hung: their leases
        expired), so that they are replaced; False where that cannot be done (Cloud Run
        stops a task only at its timeout)."""


class EventBus(Protocol):
    def publish(self, event: JobCompletedEvent) -> None:
        """Deliver the event; publishing the same event id twice must be harmless."""

    def events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """Events published so far, after cursor `after`, with their cursors."""

    def follow(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """The events after `after`, then each new one as it is published; never ends."""

    def close(self) -> None: ...


class LogReader(Protocol):
    """An orchestration's log lines: local log files, or Cloud Logging entries."""

    def lines(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, *, last: int | None = None
    ) -> list[LogLine]:
        """Oldest first, of every instance or of `job_id`; with `last`, the newest `last`."""

    def follow(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, ended: Callable[[], bool]
    ) -> Iterator[LogLine]:
        """The lines so far, then each new one, until `ended()` said so before a read."""
