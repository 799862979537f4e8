"""The SDK: `JobFleet.kick_off` and the `Orchestration` handle it returns."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobfleet import tracing
from jobfleet.backends import Backend, default_parallelism, open_backend
from jobfleet.config import Settings
from jobfleet.core import params as param_sets
from jobfleet.core.completion import settle, settle_without_workers
from jobfleet.core.models import (
    Failure,
    JobCompletedEvent,
    JobInstance,
    JsonObject,
    NewOrchestration,
    OrchestrationSnapshot,
    RunOptions,
    Status,
    Success,
)
from jobfleet.core.options import check_options
from jobfleet.core.pipeline import PIPELINE_TAG, STAGE_TAG, Stage, check_stages
from jobfleet.core.registry import get_launchable_job, import_jobs, job_sources
from jobfleet.core.results import Results, partition
from jobfleet.core.sweep import Ports, sweep, sweep_orchestration
from jobfleet.errors import (
    InvalidOption,
    LaunchFailed,
    NoEventHistory,
    NothingToRerun,
    WaitTimeout,
)
from jobfleet.log_lines import LogLine
from jobfleet.pipelines import advance, stages, wait_pipeline
from jobfleet.scheduling import Schedules
from jobfleet.webhooks import check_webhooks, deliver_due, enqueue

log = logging.getLogger(__name__)

WATCH_SLICE_SECONDS = 1.0
# Tags jobfleet sets to link runs; a re-run does not inherit them from what it re-runs.
RERUN_TAG = "rerun_of"
LINK_TAGS = frozenset({RERUN_TAG, "schedule", "schedule_time", PIPELINE_TAG, STAGE_TAG})
RERUN_CHOICES = {"failed": Status.ERRORED, "cancelled": Status.CANCELLED}
EVENT_HISTORY = 200  # orchestrations looked at when the event bus keeps no history
# With no change for this long, a watcher sweeps the orchestration (core/sweep.py): it
# never fails live work, and it brings back what a dead execution or publisher left.
SWEEP_WHEN_QUIET_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a new run sits among others: a pipeline stage's derived id, the stage it
    follows and the stages to come; a re-run's original indexes."""

    id: str | None = None
    parent: str | None = None
    then: list[JsonObject] | None = None
    indexes: Sequence[int] | None = None


def rerun_statuses(which: str | Iterable[str]) -> frozenset[Status]:
    """The statuses a re-run takes, from "failed", "cancelled" or both."""
    names = [which] if isinstance(which, str) else list(which)
    unknown = [n for n in names if n not in RERUN_CHOICES]
    if unknown or not names:
        raise InvalidOption(
            f"a re-run takes 'failed', 'cancelled' or both, got {unknown or names!r}"
        )
    return frozenset(RERUN_CHOICES[n] for n in names)


class Orchestration:
    """A handle on one fan-out: follow it, wait for it, collect it, cancel it."""

    def __init__(self, fleet: JobFleet, orchestration_id: str) -> None:
        self.fleet = fleet
        self.id = orchestration_id

    def __repr__(self) -> str:
        return f"Orchestration({self.id!r})"

    def status(self) -> OrchestrationSnapshot:
        return self.fleet.backend.store.get_orchestration(self.id)

    def watch(self, timeout: float | None = None) -> Iterator[OrchestrationSnapshot]:
        """Yield the current state, then each change as the store reports it, ending
        with the terminal state."""
        store = self.fleet.backend.store
        deadline = None if timeout is None else time.monotonic() + timeout
        token = store.wake_token(self.id)
        snap = self.status()
        yield snap
        quiet_since = time.monotonic()
        while not (snap.status.terminal and snap.event_published):
            left = WATCH_SLICE_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(self.id, timeout or 0.0)
            token = store.wait_for_wake(self.id, token, min(left, WATCH_SLICE_SECONDS))
            current = self.status()
            if current != snap:
                snap, quiet_since = current, time.monotonic()
                yield snap
            elif time.monotonic() - quiet_since >= SWEEP_WHEN_QUIET_SECONDS:
                self._sweep(snap)
                quiet_since = time.monotonic()

    def _sweep(self, snap: OrchestrationSnapshot) -> None:
        """A watcher's sweep is a courtesy: a failure of it (a store busy with the very
        writers it watches) is logged and tried again at the next quiet spell, never
        raised to the one who is only waiting."""
        try:
            sweep_orchestration(self.fleet.ports, snap)
        except Exception as exc:
            log.warning("sweeping orchestration %s failed (%s); trying again later",
                        self.id, exc)

    def wait(self, timeout: float | None = None) -> OrchestrationSnapshot:
        """Block until every instance is terminal and the completion event is out."""
        *_, last = self.watch(timeout)
        return last

    def results(self, timeout: float | None = None) -> Results:
        """Wait, then `(successes, failures)`; `failures` is None when all succeeded."""
        self.wait(timeout)
        return self.results_so_far()

    def instances(
        self, *, status: Status | None = None, after_index: int = -1, limit: int = 100
    ) -> list[JobInstance]:
        """A page of instances by index, as they stand now."""
        return self.fleet.backend.store.list_instances(
            self.id, status=status, after_index=after_index, limit=limit
        )

    def results_so_far(self) -> Results:
        """The instances that have finished, without waiting for the rest."""
        return partition(self.fleet.backend.store.results(self.id))

    def status_and_results(self) -> tuple[OrchestrationSnapshot, Results]:
        """The orchestration as it stands, then the instances finished so far: read in
        that order, so that when the status is terminal the results are all of them."""
        return self.status(), self.results_so_far()

    def change_stamp(self) -> float:
        """A change stamp at least as late as every instance write so far: where
        following `transitions` starts."""
        return self.fleet.backend.store.change_stamp(self.id)

    def transitions(self, *, after: float) -> list[JobInstance]:
        """The instances written after change stamp `after`, in stamp order, with those
        stamped up to the store's margin before it (writers' clocks may disagree): a
        follower drops what it has already seen."""
        store = self.fleet.backend.store
        return store.changes_after(self.id, after=after - store.stamp_margin)

    def cancel(self) -> OrchestrationSnapshot:
        """Stop unfinished instances (they end Cancelled) and announce the end."""
        backend = self.fleet.backend
        if backend.store.cancel(self.id, now=time.time()):
            execution = backend.store.get_orchestration(self.id).execution
            if execution:
                backend.launcher.cancel(execution)
        return settle(backend.store, backend.bus, self.id, self.fleet.advance)

    def logs(
        self, job_id: str | None = None, *, last: int | None = None, follow: bool = False
    ) -> Iterator[LogLine]:
        """The orchestration's log lines, oldest first, of every instance or of `job_id`:
        locally its log files, on Google Cloud its Cloud Logging entries. `last` keeps the
        newest lines only; `follow` goes on with new lines until the orchestration has
        ended and its workers are gone."""
        snap = self.status()
        reader = self.fleet.backend.logs
        if follow:
            return reader.follow(snap, job_id, self._finished_running)
        return iter(reader.lines(snap, job_id, last=last))

    def _finished_running(self) -> bool:
        snap = self.status()
        if not snap.status.terminal:
            return False
        return not (snap.execution and self.fleet.backend.launcher.is_running(snap.execution))

    def rerun(
        self, which: str | Iterable[str] = "failed", *, parallelism: int | None = None
    ) -> Orchestration:
        """A new orchestration of the same job over exactly the instances of this one
        that ended `which` ("failed" = Errored, "cancelled", or both), with their
        original params and indexes, the same options and tags, and the tag
        `rerun_of=<this id>`. `merged_results` reads a run and its re-runs as one."""
        wanted = rerun_statuses(which)
        snap = self.status()
        if not snap.status.terminal:
            raise InvalidOption(
                f"orchestration {self.id} is still running; wait for it or cancel it, "
                "then re-run what failed"
            )
        chosen = [f for f in self.fleet.backend.store.results(self.id)
                  if isinstance(f, Failure) and f.status in wanted]
        if not chosen:
            names = " or ".join(sorted(s.value for s in wanted))
            raise NothingToRerun(f"orchestration {self.id} has no {names} instance to re-run")
        chosen.sort(key=lambda f: f.index)
        tags = {k: v for k, v in snap.tags.items() if k not in LINK_TAGS} | {RERUN_TAG: self.id}
        with tracing.kick_off_span(snap.job_name) as trace:
            return self.fleet._kick_off(
                snap.job_name, [f.params for f in chosen],
                parallelism=parallelism or min(snap.options.parallelism, len(chosen)),
                tags=tags, retries=snap.options.retries, timeout=snap.options.timeout,
                traceparent=trace.traceparent,
                lineage=Lineage(indexes=[f.index for f in chosen]), webhooks=snap.webhooks,
            )

    def reruns(self) -> list[OrchestrationSnapshot]:
        """The re-runs of this orchestration (not of its re-runs), oldest first."""
        found = self.fleet.history(limit=1000, tag=(RERUN_TAG, self.id))
        return sorted(found, key=lambda s: s.created_at)

    def merged_results(self) -> Results:
        """This run's results with its re-runs' (and theirs') laid over them: the last
        outcome of each original index."""
        last: dict[int, Success | Failure] = {}
        pending = [self.id]
        while pending:
            current = pending.pop(0)
            for outcome in self.fleet.backend.store.results(current):
                last[outcome.index] = outcome
            pending.extend(s.id for s in self.fleet.handle(current).reruns())
        return partition(last.values())

    def stages(self) -> list[OrchestrationSnapshot]:
        """The stages started so far of the pipeline this orchestration is a stage of
        (just itself when it is none), in order."""
        return stages(self.fleet, self.status())

    def wait_pipeline(self, timeout: float | None = None) -> list[OrchestrationSnapshot]:
        """Wait for this stage and every stage after it; them, in order."""
        return wait_pipeline(self.fleet, self.id, timeout)

    async def wait_async(self, timeout: float | None = None) -> OrchestrationSnapshot:
        return await asyncio.to_thread(self.fleet.orchestration(self.id).wait, timeout)

    async def results_async(self, timeout: float | None = None) -> Results:
        return await asyncio.to_thread(self.fleet.orchestration(self.id).results, timeout)


class JobFleet:
    """Entry point of the SDK. Settings default to the environment (docs/design.md)."""

    def __init__(
        self,
        backend: str | None = None,
        *,
        home: str | Path | None = None,
        jobs_modules: list[str] | None = None,
    ) -> None:
        self.settings = Settings.from_env(backend=backend, home=home, jobs_modules=jobs_modules)
        tracing.configure(self.settings.trace_export, self.settings.project)
        import_jobs(self.settings.jobs_modules)
        self._backend: Backend | None = None
        self._opening = threading.Lock()

    @property
    def backend(self) -> Backend:
        """The store, launcher and bus, opened on first use: input refused before then
        creates nothing, not even a local home."""
        with self._opening:
            if self._backend is None:
                self._backend = open_backend(self.settings)
            return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    @property
    def schedules(self) -> Schedules:
        """Create, change, fire and sync schedules (jobfleet.scheduling)."""
        return Schedules(self)

    @property
    def ports(self) -> Ports:
        backend = self.backend
        return Ports(backend.store, backend.launcher, backend.bus, self.advance)

    def advance(self, stage: OrchestrationSnapshot) -> None:
        """What follows an orchestration's end: the pipeline stage after it
        (jobfleet.pipelines), then its webhooks' first attempts (jobfleet.webhooks)."""
        advance(self, stage)
        enqueue(self, stage)

    def sweep(self, *, now: float | None = None) -> Counter[str]:
        """Bring back whatever faults left behind, in every unsettled orchestration (see
        core/sweep.py); returns how many orchestrations got each action. Safe to run at
        any time, from any number of processes. On Google Cloud it also fires what
        schedules missed (Cloud Scheduler never catches up; locally the scheduler does).
        It retries the webhook deliveries that are due by `now` (a test's clock)."""
        done = sweep(self.ports, now=now)
        if self.settings.backend == "gcp":
            self.schedules.catch_up()
        try:
            deliver_due(self, now)
        except Exception as exc:  # the next sweep retries them; the rest was swept
            log.warning("webhook retries failed: %s", exc)
        return done

    def __enter__(self) -> JobFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kick_off(
        self,
        job_name: str,
        params: Iterable[Any],
        *,
        parallelism: int | None = None,
        tags: dict[str, str] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        then: Sequence[Stage] | None = None,
        webhooks: Sequence[str] | None = None,
    ) -> Orchestration:
        """Create one instance per parameter set and start the workers.

        Every parameter set is checked while it streams into the store in batches;
        a bad one raises InvalidParams naming its index, and nothing is created. The
        kick-off runs in a span whose trace the workers and the event continue.

        `then` makes it the first stage of a pipeline: each Stage starts when the one
        before it ends (on Completed only, or on any end), once, over a fixed list of
        parameter sets or what a function of the previous stage's results returns.
        Every stage is tagged `pipeline=<this id>` and `stage=<position>`.

        `webhooks` (default: the job's) receive the JobCompletedEvent, signed
        (jobfleet.webhooks); https URLs outside private ranges, unless
        JOBFLEET_WEBHOOK_ALLOW says otherwise.
        """
        lineage = Lineage()
        tags = dict(tags or {})
        if then:
            lineage = Lineage(id=str(uuid.uuid4()), then=check_stages(list(then)))
            tags |= {PIPELINE_TAG: lineage.id or "", STAGE_TAG: "1"}
        with tracing.kick_off_span(job_name) as trace:
            return self._kick_off(job_name, params, parallelism=parallelism, tags=tags,
                                  retries=retries, timeout=timeout, traceparent=trace.traceparent,
                                  lineage=lineage, webhooks=webhooks)

    def _kick_off(
        self,
        job_name: str,
        params: Iterable[Any],
        *,
        parallelism: int | None,
        tags: dict[str, str] | None,
        retries: int | None,
        timeout: float | None,
        traceparent: str,
        lineage: Lineage,
        webhooks: Sequence[str] | None = None,
    ) -> Orchestration:
        definition = get_launchable_job(job_name)
        options = RunOptions(
            retries=definition.retries if retries is None else retries,
            backoff=definition.backoff,
            timeout=definition.timeout if timeout is None else timeout,
            parallelism=default_parallelism(self.settings) if parallelism is None else parallelism,
        )
        check_options(options, tags or {})
        hooks = check_webhooks(definition.webhooks if webhooks is None else webhooks,
                               self.settings)
        new = NewOrchestration(
            id=lineage.id or str(uuid.uuid4()),
            job_name=job_name,
            options=options,
            tags=dict(tags or {}),
            created_at=time.time(),
            traceparent=traceparent,
            parent=lineage.parent,
            then=lineage.then,
            webhooks=hooks,
        )
        batches = param_sets.instance_batches(
            definition, params, shards=options.parallelism, indexes=lineage.indexes,
            ids_from=new.id if lineage.parent else None,
        )
        # The first batch is checked before the backend opens, so that a bad parameter set
        # in it creates nothing at all; a later one rolls the orchestration back.
        first = next(batches, [])
        batches = itertools.chain([first] if first else [], batches)
        backend = self.backend
        total = backend.store.create_orchestration(new, batches)
        try:
            execution = backend.launcher.launch(
                new, options.task_count(total), job_sources([job_name])
            )
        except Exception as exc:
            # Nothing may stay InProgress with no worker to finish it.
            settle_without_workers(backend.store, backend.bus, new.id, f"launch failed: {exc}",
                                   self.advance)
            raise LaunchFailed(new.id, exc) from exc
        except BaseException:
            # Interrupted (Ctrl-C) between commit and launch: what the user stopped ends
            # Cancelled, announced. (A kick-off killed outright is launched by a sweep.)
            Orchestration(self, new.id).cancel()
            raise
        if not backend.store.replace_execution(new.id, None, execution):
            backend.launcher.cancel(execution)  # a sweep took this one for dead and launched it
        return Orchestration(self, new.id)

    async def kick_off_async(
        self, job_name: str, params: Iterable[Any], **options: Any
    ) -> Orchestration:
        return await asyncio.to_thread(self.kick_off, job_name, params, **options)

    def orchestration(self, orchestration_id: str) -> Orchestration:
        """A handle on an existing orchestration; raises UnknownOrchestration."""
        self.backend.store.get_orchestration(orchestration_id)
        return self.handle(orchestration_id)

    def handle(self, orchestration_id: str) -> Orchestration:
        """A handle without reading the orchestration first, for a call that reads it
        anyway: that call raises UnknownOrchestration if there is none."""
        return Orchestration(self, orchestration_id)

    def release_thread(self) -> None:
        """The calling thread is done with the backend: close what the store holds open
        for it (SQLite connections; nothing on Google Cloud)."""
        if self._backend is not None:
            release = getattr(self._backend.store, "release_thread", None)
            if release is not None:
                release()

    def history(
        self,
        *,
        limit: int = 50,
        job_name: str | None = None,
        status: Status | None = None,
        tag: tuple[str, str] | None = None,
        before: str | None = None,
    ) -> list[OrchestrationSnapshot]:
        """Newest first; `before` is the last id of the previous page."""
        return self.backend.store.list_orchestrations(
            limit=limit, job_name=job_name, status=status, tag=tag, before=before
        )

    def events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """Events published so far, oldest first. Pub/Sub keeps no history, so on Google
        Cloud these are rebuilt from the store: the recently announced orchestrations."""
        try:
            yield from self.backend.bus.events(after=after)
        except NoEventHistory:
            announced = [s for s in self.history(limit=EVENT_HISTORY) if s.event_published]
            announced.sort(key=lambda s: s.finished_at or 0.0)
            for cursor, snap in enumerate(announced, start=1):
                if cursor > after:
                    yield cursor, JobCompletedEvent.for_orchestration(snap)

    def follow_events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """Every event after `after`, then each new one as it is published; never ends."""
        return self.backend.bus.follow(after=after)

