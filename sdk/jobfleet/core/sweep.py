"""The sweep: bring back whatever a fault left behind, on either backend.

A fault can leave an orchestration with nobody to move it on: a kick-off killed between
commit and launch, a hung worker whose lease ran out, an execution that ended (its tasks
out of retries, cancelled from outside, its supervisor killed) with work left, an ended
orchestration whose event was never published. `sweep_orchestration` looks at one such
orchestration and does the one thing it needs; `sweep` does it for every orchestration
not yet settled, so its cost follows those, not the history.

Liveness is decided from leases and from the execution's state, never from a quiet
period: a sweep never fails work that is still alive, so it is safe to run at any time,
any number of times, concurrently with itself and with workers (every write it makes is
conditional, and a launch that loses a race is cancelled).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass

from jobfleet.core.completion import Advance, settle, settle_without_workers
from jobfleet.core.models import NewOrchestration, OrchestrationSnapshot, Status
from jobfleet.core.ports import EventBus, Launcher, Store
from jobfleet.core.recovery import Owner, held_by, lost_worker_outcomes
from jobfleet.core.registry import job_sources
from jobfleet.core.retry import RetryPolicy

log = logging.getLogger(__name__)

LEASE_EXPIRED = "its worker stopped renewing its lease (hung or lost)"
CONFIRM_SECONDS = 2.0  # longer than a worker's pause after a heartbeat that failed

# What sweep_orchestration did.
ANNOUNCED = "announced"  # published an event that was never recorded
LAUNCHED = "launched"  # an orchestration its kick-off never launched
REAPED = "reaped"  # hung workers' claims recovered (and their tasks stopped)
RECOVERED = "recovered"  # a recovery execution for shards left without a live task
ENDED = "ended"  # executions stopped making progress: what was left ended Errored
NOTHING = "nothing"
FAILED = "failed"  # could not be swept this time; the next sweep tries again
ACTIONS = (ANNOUNCED, LAUNCHED, REAPED, RECOVERED, ENDED, FAILED)


@dataclass(frozen=True, slots=True)
class Ports:
    store: Store
    launcher: Launcher
    bus: EventBus
    advance: Advance | None = None  # starts a pipeline's next stage (jobfleet.pipelines)


def sweep(ports: Ports, *, now: float | None = None) -> Counter[str]:
    """Sweep every unsettled orchestration; returns how many got each action. One that
    cannot be swept now (its store busy) counts as FAILED and does not stop the others:
    the next sweep tries it again."""
    done: Counter[str] = Counter()
    for snap in ports.store.unsettled_orchestrations():
        try:
            done[sweep_orchestration(ports, snap, now=now)] += 1
        except Exception as exc:
            log.warning("sweeping orchestration %s failed: %s", snap.id, exc)
            done[FAILED] += 1
    return done


def report(done: Counter[str]) -> dict[str, int]:
    """A sweep's counts as the CLI and the API show them."""
    return {"looked_at": sum(done.values()), **{a: done.get(a, 0) for a in ACTIONS}}


def sweep_orchestration(
    ports: Ports, snap: OrchestrationSnapshot, *, now: float | None = None
) -> str:
    now = time.time() if now is None else now
    store, launcher = ports.store, ports.launcher
    if snap.status.terminal:
        if snap.event_published:
            return NOTHING
        settled = settle(store, ports.bus, snap.id, ports.advance)
        return ANNOUNCED if settled.event_published else NOTHING
    if not snap.execution:
        if now - snap.created_at < launcher.launch_grace:
            return NOTHING  # its kick-off may still be launching it
        return LAUNCHED if relaunch(ports, snap, None) else NOTHING
    reaped = reap_expired(ports, snap, now=now)
    if launcher.is_running(snap.execution):
        if reaped and not launcher.stop_tasks(snap.execution, reaped):
            # Their tasks cannot be stopped and replaced: other tasks take their shards.
            shards = sorted({o.task_index for o in map(Owner.parse, reaped) if o})
            relaunch(ports, snap, shards, keep=True)
            return RECOVERED
        return REAPED if reaped else NOTHING
    return execution_ended(ports, snap, f"execution {snap.execution} ended")


def reap_expired(ports: Ports, snap: OrchestrationSnapshot, *, now: float) -> list[str]:
    """Recover the claims whose lease expired; returns the owners that held them.

    An expired lease is confirmed by a second look CONFIRM_SECONDS later: when the store
    was unwritable for a while (another process held SQLite's lock), every lease ran out
    although every worker lives, and their held-up heartbeats land within a second of
    the store's return. Only the claims still expired and still held by the same owner
    are reaped."""
    stale = ports.store.stale_claims(snap.id, now=now)
    if not stale:
        return []
    time.sleep(CONFIRM_SECONDS)
    still = {(c.job_id, c.owner) for c in ports.store.stale_claims(snap.id, now=time.time())}
    stale = [c for c in stale if (c.job_id, c.owner) in still]
    if not stale:
        return []
    outcomes = lost_worker_outcomes(stale, RetryPolicy.of(snap.options), LEASE_EXPIRED, now)
    ports.store.record_outcomes(snap.id, outcomes)
    settle(ports.store, ports.bus, snap.id, ports.advance)
    return sorted({c.owner for c in stale})


def execution_ended(ports: Ports, snap: OrchestrationSnapshot, why: str) -> str:
    """Every task of the execution has ended: what they held is recovered, and what is
    left runs again in a recovery execution while executions keep making progress (each
    crash charges or isolates an instance, so this ends); when one made none, it ends
    Errored."""
    store = ports.store
    # Every worker of the execution is gone: each of their leases counts as expired.
    assert snap.execution is not None
    stale = held_by(store.stale_claims(snap.id, now=sys.float_info.max), snap.execution)
    if stale:
        policy = RetryPolicy.of(snap.options)
        store.record_outcomes(snap.id, lost_worker_outcomes(stale, policy, why))
    shards = store.unfinished_shards(snap.id)
    if not shards:
        settle(store, ports.bus, snap.id, ports.advance)
        return NOTHING
    current = store.get_orchestration(snap.id)
    if current.status is not Status.IN_PROGRESS or current.execution != snap.execution:
        # Ended, or another caller launched already.
        settle(store, ports.bus, snap.id, ports.advance)
        return NOTHING
    if store.progress(snap.id) > current.launch_progress:
        return RECOVERED if relaunch(ports, current, shards) else NOTHING
    settle_without_workers(
        store, ports.bus, snap.id,
        f"{why} and made no progress since it was launched; the workers' output says"
        " why (`jobfleet logs` or the execution's logs)", ports.advance,
    )
    return ENDED


def relaunch(
    ports: Ports, snap: OrchestrationSnapshot, shards: list[int] | None, *, keep: bool = False
) -> bool:
    """Launch workers for `shards` (None: all of them) and record the execution unless
    another caller launched first, in which case ours is cancelled. With `keep`, the new
    execution joins the running one instead of replacing it."""
    store, launcher = ports.store, ports.launcher
    orchestration = NewOrchestration(
        id=snap.id, job_name=snap.job_name, options=snap.options, tags=snap.tags,
        created_at=snap.created_at, traceparent=snap.traceparent,
    )
    count = snap.options.task_count(snap.counts.total) if shards is None else len(shards)
    progress = store.progress(snap.id)  # before its workers move it on
    execution = launcher.launch(orchestration, count, job_sources([snap.job_name]), shards)
    recorded = f"{snap.execution},{execution}" if keep and snap.execution else execution
    if store.replace_execution(snap.id, snap.execution, recorded, progress=progress):
        return True
    launcher.cancel(execution)
    return False
