"""The SDK's schedules: `JobFleet.schedules` creates, changes, fires and syncs them.

A fire is keyed by (schedule, scheduled time). It is claimed in the store before
anything starts (`Store.claim_fire`), so that a duplicate delivery, a retry or a second
scheduler creates nothing new and answers with what the first one did. A claimant that
dies is replaced when its hold lapses; the replacement first looks for the run the
dead one may have started (tagged with the scheduled time) before starting one.
"""

from __future__ import annotations

import builtins
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jobfleet.core.cron import iso
from jobfleet.core.schedules import (
    SCHEDULE_TAG,
    Fire,
    FireState,
    Origin,
    Overlap,
    Schedule,
    Trigger,
    build,
    declared_schedules,
    due_fires,
    parameter_sets,
)
from jobfleet.errors import FireInProgress

if TYPE_CHECKING:
    from jobfleet.core.ports import ScheduleTimer, Store
    from jobfleet.fleet import JobFleet

log = logging.getLogger(__name__)

SCHEDULE_TIME_TAG = "schedule_time"  # the scheduled time a run was started for (RFC 3339)
# How long a fire's claim holds before another delivery may take it over: longer than
# a kick-off takes, shorter than Cloud Scheduler goes on retrying a fire (600 s).
FIRE_HOLD_SECONDS = 240.0
PREVIOUS_RUNS_LOOKED_AT = 20
# Past this, a fire the timer owed is missed: Cloud Scheduler's retries of it are over.
CATCH_UP_AFTER = 30 * 60.0
EDITABLE = frozenset({
    "job_name", "cron", "timezone", "params", "params_provider", "parallelism", "retries",
    "timeout", "tags", "overlap", "catch_up", "description",
})


@dataclass(frozen=True, slots=True)
class FireResult:
    fire: Fire
    duplicate: bool  # True: this scheduled time was fired before; nothing new started


@dataclass(slots=True)
class SyncPlan:
    """What `sync` does to make the deployed schedules match the declared ones."""

    create: list[Schedule] = field(default_factory=list)
    update: list[Schedule] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # only with prune
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # declared no more, left without prune

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


class Schedules:
    """The schedules of one JobFleet (its store, and its timer: Cloud Scheduler on Google
    Cloud, nothing locally where the local scheduler reads the store)."""

    def __init__(self, fleet: JobFleet) -> None:
        self.fleet = fleet

    # -- declaring -----------------------------------------------------------------

    def create(self, name: str, *, job: str, cron: str, paused: bool = False,
               **options: Any) -> Schedule:
        """Create a schedule at run time (see `jobfleet.schedule` for the fields).
        Checked first; nothing is created when anything is wrong, or when the timer
        cannot be set up."""
        now = time.time()
        made = build(name=name, job_name=job, cron=cron, paused=paused,
                     created_at=now, updated_at=now, **options)
        return self._save(made, create=True)

    def update(self, name: str, **changes: Any) -> Schedule:
        """Change some fields of a schedule (`paused` through pause/resume)."""
        unknown = set(changes) - EDITABLE
        if unknown:
            raise TypeError(f"cannot change {', '.join(sorted(unknown))} of a schedule")
        current = self.get(name)
        fields = {key: getattr(current, key) for key in EDITABLE} | changes
        changed = build(name=name, paused=current.paused, origin=current.origin,
                        created_at=current.created_at, updated_at=time.time(), **fields)
        return self._save(changed, create=False, previous=current)

    def pause(self, name: str) -> Schedule:
        return self._set_paused(name, True)

    def resume(self, name: str) -> Schedule:
        return self._set_paused(name, False)

    def delete(self, name: str) -> None:
        """Delete the schedule (its timer first, so it fires no more); its history stays."""
        self.get(name)
        self._timer.remove(name)
        self._store.delete_schedule(name)

    def _set_paused(self, name: str, paused: bool) -> Schedule:
        current = self.get(name)
        if current.paused == paused:
            return current
        return self._save(replace(current, paused=paused, updated_at=time.time()),
                          create=False, previous=current)

    def _save(self, schedule: Schedule, *, create: bool,
              previous: Schedule | None = None) -> Schedule:
        """Store, then time it; when the timer refuses, the store goes back to before."""
        self._store.save_schedule(schedule, create=create)
        try:
            self._timer.apply(schedule)
        except BaseException:
            if previous is None:
                self._store.delete_schedule(schedule.name)
            else:
                self._store.save_schedule(previous, create=False)
            raise
        return schedule

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> Schedule:
        return self._store.get_schedule(name)

    def list(self) -> list[Schedule]:
        return self._store.list_schedules()

    def history(self, name: str, *, limit: int = 20) -> builtins.list[Fire]:
        """The schedule's fires, newest scheduled time first, with their runs."""
        return self._store.list_fires(name, limit=limit)

    def next(
        self, name: str, count: int = 5, *, after: float | None = None
    ) -> builtins.list[float]:
        """The next fire times (seconds since the epoch), paused or not."""
        return self.get(name).timing.next_times(time.time() if after is None else after, count)

    # -- firing --------------------------------------------------------------------

    def trigger(self, name: str) -> FireResult:
        """Run the schedule now, outside its cron (paused or not)."""
        now = time.time()
        return self.fire(name, now, trigger=Trigger.MANUAL, now=now)

    def fire(self, name: str, scheduled_at: float, *, trigger: Trigger = Trigger.CRON,
             now: float | None = None) -> FireResult:
        """Fire one scheduled time, once whatever the number of deliveries. Raises
        FireInProgress while another delivery holds it, and re-raises what made the fire
        fail (a params provider, a kick-off) after recording it: a later delivery of the
        same time may try again."""
        now = time.time() if now is None else now
        schedule = self.get(name)
        claim = Fire(schedule=name, scheduled_at=scheduled_at, trigger=trigger,
                     state=FireState.FIRING, attempt=0, fired_at=now,
                     hold_until=now + FIRE_HOLD_SECONDS)
        won, fire = self._store.claim_fire(claim, now=now)
        if not won:
            if fire.state is FireState.FIRING:
                raise FireInProgress(name, iso(scheduled_at))
            return FireResult(fire, duplicate=True)
        try:
            outcome = self._start(schedule, fire)
        except Exception as exc:
            self._store.finish_fire(replace(
                fire, state=FireState.FAILED, reason=f"{type(exc).__name__}: {exc}"
            ))
            raise
        self._store.finish_fire(outcome)
        return FireResult(outcome, duplicate=False)

    def _start(self, schedule: Schedule, fire: Fire) -> Fire:
        if schedule.paused and fire.trigger is not Trigger.MANUAL:
            return replace(fire, state=FireState.SKIPPED, reason="the schedule is paused")
        if fire.attempt > 1:
            adopted = self._run_started_for(fire)
            if adopted:
                return replace(fire, state=FireState.STARTED, orchestration_id=adopted)
        previous = self._unfinished_previous_run(schedule.name, fire)
        if previous and schedule.overlap is Overlap.SKIP:
            return replace(fire, state=FireState.SKIPPED,
                           reason=f"the previous run {previous} is unfinished")
        if previous and schedule.overlap is Overlap.CANCEL_PREVIOUS:
            self.fleet.handle(previous).cancel()
        run = self.fleet.kick_off(
            schedule.job_name, parameter_sets(schedule), parallelism=schedule.parallelism,
            retries=schedule.retries, timeout=schedule.timeout,
            tags={**schedule.tags, SCHEDULE_TAG: schedule.name,
                  SCHEDULE_TIME_TAG: iso(fire.scheduled_at)},
        )
        return replace(fire, state=FireState.STARTED, orchestration_id=run.id)

    def _run_started_for(self, fire: Fire) -> str | None:
        """The run an earlier claimant of this fire started before dying, if any."""
        runs = self.fleet.history(limit=5, tag=(SCHEDULE_TIME_TAG, iso(fire.scheduled_at)))
        for run in runs:
            if run.tags.get(SCHEDULE_TAG) == fire.schedule:
                return run.id
        return None

    def _unfinished_previous_run(self, name: str, fire: Fire) -> str | None:
        for earlier in self._store.list_fires(name, limit=PREVIOUS_RUNS_LOOKED_AT):
            if earlier.scheduled_at == fire.scheduled_at or earlier.state is not FireState.STARTED:
                continue
            assert earlier.orchestration_id is not None
            snap = self._store.get_orchestration(earlier.orchestration_id)
            return None if snap.status.terminal else snap.id
        return None

    def resume_point(self, schedule: Schedule, now: float) -> float:
        """Where a scheduler coming back picks up a schedule: its last fire by the cron
        (or a catch-up), else its last change (creation, a resume, an edit). A schedule
        owes nothing from before it was last changed."""
        changed = min(schedule.updated_at or schedule.created_at or now, now)
        for fire in self.history(schedule.name, limit=PREVIOUS_RUNS_LOOKED_AT):
            if fire.trigger is not Trigger.MANUAL:
                return max(fire.scheduled_at, changed)
        return changed

    def catch_up(self, now: float | None = None,
                 missed_after: float = CATCH_UP_AFTER) -> builtins.list[FireResult]:
        """Fire what each schedule missed by more than `missed_after` seconds, as its
        catch-up policy says. Cloud Scheduler never catches up itself; the sweep calls
        this, late enough that Cloud Scheduler's own retries of a fire are over."""
        now = time.time() if now is None else now
        fired: builtins.list[FireResult] = []
        for schedule in self.list():
            if schedule.paused:
                continue
            after = self.resume_point(schedule, now)
            owed = due_fires(schedule, after=after, now=now, missed_after=missed_after)
            for scheduled_at, trigger in owed:
                if trigger is not Trigger.CATCH_UP:
                    continue  # not missed yet: the timer's to fire
                try:
                    fired.append(self.fire(schedule.name, scheduled_at, trigger=trigger))
                except Exception as exc:  # recorded on the fire; the next sweep retries it
                    log.warning("catching up schedule %s failed: %s", schedule.name, exc)
        return fired

    # -- schedules as code ---------------------------------------------------------

    def plan(
        self, declared: builtins.list[Schedule] | None = None, *, prune: bool = False
    ) -> SyncPlan:
        """Compare the declared schedules (those of the imported jobs modules) with the
        deployed ones. Only schedules declared in code are ever pruned: those created at
        run time are not `sync`'s."""
        wanted = {s.name: s for s in (declared_schedules() if declared is None else declared)}
        deployed = {s.name: s for s in self.list()}
        plan = SyncPlan()
        for name, schedule in wanted.items():
            current = deployed.get(name)
            if current is None:
                plan.create.append(schedule)
            elif current.same_definition(replace(schedule, origin=Origin.CODE)):
                plan.unchanged.append(name)
            else:
                plan.update.append(schedule)
        for name, current in deployed.items():
            if name not in wanted and current.origin is Origin.CODE:
                (plan.delete if prune else plan.kept).append(name)
        for name in self._timer.deployed():  # a timer whose schedule is gone
            if name not in wanted and name not in deployed:
                (plan.delete if prune else plan.kept).append(name)
        return plan

    def sync(
        self, declared: builtins.list[Schedule] | None = None, *, prune: bool = False
    ) -> SyncPlan:
        """Apply `plan`: create, update (keeping a deployed schedule's paused state and
        creation time), and with `prune` delete. Unchanged schedules get their timers
        applied again, which repairs a timer deleted by hand; the sweep's timer is made
        sure of (on Google Cloud, a Cloud Scheduler job running it every minute)."""
        plan = self.plan(declared, prune=prune)
        now = time.time()
        for schedule in plan.create:
            self._save(replace(schedule, origin=Origin.CODE, created_at=now, updated_at=now),
                       create=False)
        for schedule in plan.update:
            current = self.get(schedule.name)
            self._save(replace(schedule, origin=Origin.CODE, paused=current.paused,
                               created_at=current.created_at, updated_at=now),
                       create=False, previous=current)
        for name in plan.unchanged:
            self._timer.apply(self.get(name))
        for name in plan.delete:
            self._timer.remove(name)
            self._store.delete_schedule(name)
        self._timer.ensure_sweep()
        return plan

    @property
    def _store(self) -> Store:
        return self.fleet.backend.store

    @property
    def _timer(self) -> ScheduleTimer:
        return self.fleet.backend.timer
