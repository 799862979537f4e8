"""Completion: when an orchestration is done, and announcing it exactly once.

The local backend, the worker and the Cloud Function all call `settle`; no other
code decides that an orchestration is finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jobfleet.core.models import (
    WORKER_LOST,
    Counts,
    ErrorInfo,
    JobCompletedEvent,
    OrchestrationSnapshot,
    Status,
)
from jobfleet.core.ports import EventBus, Store


def final_status(counts: Counts) -> Status | None:
    """The orchestration's final state, or None while any instance is unfinished."""
    if counts.done < counts.total:
        return None
    if counts.cancelled:
        return Status.CANCELLED
    if counts.failed:
        return Status.ERRORED
    return Status.COMPLETED


PUBLISH_HOLD_SECONDS = 30.0
# A pipeline stage's publisher also starts the next stage (a kick-off), and a webhook
# orchestration's makes the first attempts (10 s at most each, at once), within its hold.
STAGE_HOLD_SECONDS = 300.0

Advance = Callable[[OrchestrationSnapshot], None]


def settle(
    store: Store, bus: EventBus, orchestration_id: str, advance: Advance | None = None
) -> OrchestrationSnapshot:
    """Flip a finished orchestration and publish its event; safe to call any number of times.

    The flip is a conditional write in the store, so exactly one caller wins it. Of the
    callers that then find the event unpublished, one takes a short publish claim (a
    conditional write too) and publishes; the others leave it to that one. The publish
    is recorded after it succeeds; a publisher that dies first (or whose publish fails)
    is replaced once its claim runs out, by the next settle or sweep: the event is
    published once, or again only after a death, never lost. Its id is deterministic,
    so a subscriber can drop that rare second copy.

    A pipeline stage's publisher starts the next stage (`advance`, jobfleet.pipelines),
    and an orchestration with webhooks gets its deliveries (jobfleet.webhooks), before
    the publish is recorded, so that a death between the two leaves it to the next
    settler; a caller without `advance` leaves such an orchestration to one that has it.
    """
    snap = store.get_orchestration(orchestration_id)
    if snap.status is Status.IN_PROGRESS:
        final = final_status(snap.counts)
        if final is None:
            return snap
        store.finish_orchestration(orchestration_id, final, time.time())
        snap = store.get_orchestration(orchestration_id)
    follow_up = bool(snap.then or snap.webhooks)
    if follow_up and advance is None:
        return snap
    hold = STAGE_HOLD_SECONDS if follow_up else PUBLISH_HOLD_SECONDS
    if (
        snap.status.terminal
        and not snap.event_published
        and store.claim_publish(orchestration_id, now=time.time(), hold=hold)
    ):
        try:
            bus.publish(JobCompletedEvent.for_orchestration(snap))
            if advance is not None:
                advance(snap)
        except BaseException:
            store.release_publish(orchestration_id)
            raise
        store.mark_event_published(orchestration_id)
        snap = store.get_orchestration(orchestration_id)
    return snap


def settle_after_commit(
    store: Store, bus: EventBus, orchestration_id: str, shard_unfinished: int,
    advance: Advance | None = None,
) -> OrchestrationSnapshot | None:
    """After a commit that ended instances of one shard, which left `shard_unfinished`
    of that shard's instances unfinished: settle once the shard is done.

    Only a commit that finishes a shard can be the one that finishes the orchestration,
    so the other commits cost nothing. When the last two shards finish at once, each
    caller settles after its own commit, so the later one sees every shard done.
    """
    if shard_unfinished:
        return None
    return settle(store, bus, orchestration_id, advance)


def settle_without_workers(
    store: Store, bus: EventBus, orchestration_id: str, why: str,
    advance: Advance | None = None,
) -> OrchestrationSnapshot:
    """No worker will ever run what is unfinished (a launch failed; executions stopped
    making progress): it ends Errored (WorkerLost), so that nothing stays InProgress
    forever, and the end is announced."""
    error = ErrorInfo(type=WORKER_LOST, message=why)
    for shard in store.unfinished_shards(orchestration_id):
        store.fail_unfinished(orchestration_id, shard, error, now=time.time())
    return settle(store, bus, orchestration_id, advance)
