"""Completion: when an orchestration is done, and announcing it exactly once.

The local backend, the worker and the Cloud Function all call `settle`; no other
code decides that an orchestration is finished.
"""

from __future__ import annotations

import time

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


def settle(store: Store, bus: EventBus, orchestration_id: str) -> OrchestrationSnapshot:
    """Flip a finished orchestration and publish its event; safe to call any number of times.

    The flip is a conditional write in the store, so exactly one caller wins it. The
    publish is recorded after it succeeds; a caller that finds a terminal orchestration
    whose event is not recorded publishes again (the event id is deterministic, so a
    subscriber drops the rare duplicate) — a failed publish is retried, never lost.
    """
    snap = store.get_orchestration(orchestration_id)
    if snap.status is Status.IN_PROGRESS:
        final = final_status(snap.counts)
        if final is None:
            return snap
        store.finish_orchestration(orchestration_id, final, time.time())
        snap = store.get_orchestration(orchestration_id)
    if snap.status.terminal and not snap.event_published:
        bus.publish(JobCompletedEvent.for_orchestration(snap))
        store.mark_event_published(orchestration_id)
        snap = store.get_orchestration(orchestration_id)
    return snap


def settle_after_instance(
    store: Store, bus: EventBus, orchestration_id: str, shard: int
) -> OrchestrationSnapshot | None:
    """After an instance of `shard` became terminal: settle once its shard is done.

    Only the write that finishes a shard can be the one that finishes the
    orchestration, so the other writes cost one cheap look at their shard. When the
    last two shards finish at once, each caller settles after its own write is
    committed, so the later one sees every shard done.
    """
    if store.unfinished(orchestration_id, shard):
        return None
    return settle(store, bus, orchestration_id)


def abandon(store: Store, bus: EventBus, orchestration_id: str, why: str) -> OrchestrationSnapshot:
    """The execution is gone with instances unfinished: they end Errored (WorkerLost),
    so that nothing stays InProgress forever, and the end is announced."""
    snap = store.get_orchestration(orchestration_id)
    error = ErrorInfo(type=WORKER_LOST, message=why)
    for shard in range(snap.options.parallelism):
        store.give_up(orchestration_id, shard, error, now=time.time())
    return settle(store, bus, orchestration_id)
