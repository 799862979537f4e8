"""Starting a pipeline's next stage when a stage ends (rules in core/pipeline.py).

`settle` calls `advance` between publishing a stage's completion event and recording
that publish, while it holds the publish claim (core/completion.py): one caller at a
time, and a caller that dies there leaves the event unrecorded, so the next settle or
sweep publishes again and starts the stage. The next stage's id (and its instances'
ids) derive from the finished stage's, so a second starter finds it, or writes the
same documents, never a second stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from jobfleet.core.models import OrchestrationSnapshot
from jobfleet.core.pipeline import (
    MAX_STAGES,
    PIPELINE_TAG,
    STAGE_TAG,
    StageResults,
    next_stage_id,
    runs_next,
    stage_params,
)
from jobfleet.core.registry import import_jobs
from jobfleet.core.results import partition
from jobfleet.errors import JobfleetError, UnknownOrchestration

if TYPE_CHECKING:
    from jobfleet.config import Settings
    from jobfleet.fleet import JobFleet

log = logging.getLogger(__name__)

Advance = Callable[[OrchestrationSnapshot], None]


def advance(fleet: JobFleet, stage: OrchestrationSnapshot) -> None:
    """Start the stage after `stage` (ended), once; or note on `stage` why not."""
    if not stage.then or not stage.status.terminal:
        return
    from jobfleet.fleet import LINK_TAGS, Lineage

    store = fleet.backend.store
    spec, rest = stage.then[0], stage.then[1:]
    child = next_stage_id(stage.id)
    try:
        store.get_orchestration(child)
        return  # started already, by this stage's end delivered before
    except UnknownOrchestration:
        pass
    if not runs_next(spec, stage.status):
        store.note_next(stage.id, f"the pipeline stops: this stage ended {stage.status}")
        return
    try:
        import_jobs(spec.get("sources") or [])
        params = stage_params(spec, _results(fleet, stage))
    except Exception as exc:
        store.note_next(stage.id, f"the next stage's params failed: {type(exc).__name__}: "
                                  f"{exc}")
        return
    if not params:
        store.note_next(stage.id, "the next stage got no parameter sets: the pipeline stops")
        return
    position = int(stage.tags.get(STAGE_TAG, "1")) + 1
    tags = {k: v for k, v in stage.tags.items() if k not in LINK_TAGS}
    tags |= dict(spec.get("tags") or {})
    tags |= {PIPELINE_TAG: stage.tags.get(PIPELINE_TAG, stage.id), STAGE_TAG: str(position)}
    try:
        fleet._kick_off(
            spec["job"], params, parallelism=spec.get("parallelism"), tags=tags,
            retries=spec.get("retries"), timeout=spec.get("timeout"),
            traceparent=stage.traceparent or "",
            lineage=Lineage(id=child, parent=stage.id, then=rest or None),
        )
    except JobfleetError as exc:  # bad params, an unknown job, a failed launch
        store.note_next(stage.id, f"the next stage could not start: {exc}")


def _results(fleet: JobFleet, stage: OrchestrationSnapshot) -> StageResults:
    successes, failures = partition(fleet.backend.store.results(stage.id))
    return StageResults(stage=stage, successes=successes, failures=failures or [])


def advancer(settings: Settings) -> Advance:
    """An `advance` for a process that has no JobFleet (a worker, the completion
    function): it opens one on first use only, since most orchestrations are no stage
    and have no webhooks. It does what `JobFleet.advance` does."""
    opened: list[JobFleet] = []

    def run(stage: OrchestrationSnapshot) -> None:
        if not (stage.then or stage.webhooks):
            return
        if not opened:
            from jobfleet.fleet import JobFleet

            opened.append(JobFleet(backend=settings.backend, home=settings.home,
                                   jobs_modules=list(settings.jobs_modules)))
        opened[0].advance(stage)

    return run


def stages(fleet: JobFleet, stage: OrchestrationSnapshot) -> list[OrchestrationSnapshot]:
    """Every stage started so far of the pipeline `stage` belongs to, in order."""
    root = stage.tags.get(PIPELINE_TAG)
    if root is None:
        return [stage]
    found = fleet.history(limit=MAX_STAGES + 1, tag=(PIPELINE_TAG, root))
    return sorted(found, key=lambda s: int(s.tags.get(STAGE_TAG, "1")))


def wait_pipeline(
    fleet: JobFleet, orchestration_id: str, timeout: float | None = None
) -> list[OrchestrationSnapshot]:
    """Wait for this stage and every stage after it to end; the stages from this one
    on, in order. The pipeline ends at a stage with none after it, or whose next stage
    did not start (its `next_note` says why)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done: list[OrchestrationSnapshot] = []
    current = orchestration_id
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        snap = fleet.handle(current).wait(left)
        done.append(snap)
        if not snap.then or snap.next_note:
            return done
        current = next_stage_id(snap.id)
