"""The local scheduler: fires the store's schedules on time on the embedded backend.

`jobfleet scheduler` runs one, and `jobfleet serve` runs one unless told not to. It
sleeps until the next fire time of any schedule (re-reading the schedules every few
seconds, so a schedule created, changed or paused elsewhere is seen), then fires what
is due on a small thread pool. Any number of schedulers may run on one home: every
fire is claimed in the store by (schedule, scheduled time), so each time starts once.

Every minute it also sweeps (`jobfleet sweep`), so that a laptop running a scheduler
heals itself as production does. A scheduler that starts picks up from each schedule's
last fire, so the fires missed while none was running follow the schedule's catch-up
policy (core/schedules.py). A paused schedule owes nothing for the time it was paused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobfleet.core.schedules import Schedule, Trigger, due_fires
from jobfleet.errors import FireInProgress

if TYPE_CHECKING:
    from jobfleet.fleet import JobFleet

log = logging.getLogger(__name__)

RELOAD_SECONDS = 5.0  # how stale the scheduler's view of the schedules may be
SWEEP_SECONDS = 60.0  # a scheduler also sweeps (core/sweep.py), as Cloud Scheduler does
FIRING_THREADS = 4
Fire = Callable[[str, float, Trigger], object]
Clock = Callable[[], float]


@dataclass(slots=True)
class _Tracked:
    version: tuple[str, str, bool, float]  # cron, zone, paused, updated_at
    cursor: float  # every fire up to here has been dealt with
    due_at: float  # the next fire time after the cursor


class LocalScheduler:
    def __init__(self, fleet: JobFleet, *, clock: Clock = time.time, speed: float = 1.0,
                 fire: Fire | None = None) -> None:
        """`clock` gives the scheduler's time; `speed` is how many of its seconds pass in
        one real second (a fast clock for tests and demos: `fast_clock`)."""
        self.fleet = fleet
        self.clock = clock
        self.speed = speed
        self._fire = fire or self._fire_logged
        self._tracked: dict[str, _Tracked] = {}
        self._started = time.time()  # real time: what `updated_at` is written in

    def run(self, stop: threading.Event, *, on_ready: Callable[[], None] | None = None) -> None:
        """Fire schedules until `stop` is set."""
        with ThreadPoolExecutor(FIRING_THREADS, thread_name_prefix="jobfleet-fire") as pool:
            if on_ready:
                on_ready()
            swept = time.monotonic() - SWEEP_SECONDS
            while not stop.is_set():
                if time.monotonic() - swept >= SWEEP_SECONDS:
                    swept = time.monotonic()
                    pool.submit(self._sweep)
                now = self.clock()
                wake = self.tick(now, lambda *due: pool.submit(self._fire, *due))
                sleep = min(wake - self.clock(), RELOAD_SECONDS * self.speed) / self.speed
                stop.wait(max(0.0, sleep))
        self.fleet.release_thread()

    def tick(self, now: float, submit: Callable[[str, float, Trigger], object]) -> float:
        """Hand every fire due by `now` to `submit`; return when the next one is due."""
        schedules = self.fleet.schedules.list()
        wake = now + RELOAD_SECONDS * self.speed
        for schedule in schedules:
            tracked = self._track(schedule, now)
            if schedule.paused:
                tracked.cursor = tracked.due_at = now
                continue
            if tracked.due_at <= now:
                for scheduled_at, trigger in due_fires(schedule, after=tracked.cursor, now=now):
                    submit(schedule.name, scheduled_at, trigger)
                tracked.cursor = now
                tracked.due_at = _next(schedule, now)
            wake = min(wake, tracked.due_at)
        for gone in set(self._tracked) - {s.name for s in schedules}:
            del self._tracked[gone]
        return wake

    def _track(self, schedule: Schedule, now: float) -> _Tracked:
        version = (schedule.cron, schedule.timezone, schedule.paused, schedule.updated_at)
        tracked = self._tracked.get(schedule.name)
        if tracked is None:
            # One created or changed while this scheduler runs owes nothing before now;
            # one it finds on starting picks up where its schedule last fired.
            changed_since_start = schedule.updated_at >= self._started
            cursor = now if changed_since_start else self.fleet.schedules.resume_point(
                schedule, now)
            tracked = _Tracked(version, cursor, _next(schedule, cursor))
            self._tracked[schedule.name] = tracked
        elif tracked.version != version:
            tracked.version, tracked.due_at = version, _next(schedule, tracked.cursor)
        return tracked

    def _sweep(self) -> None:
        try:
            self.fleet.sweep()
        except Exception as exc:
            log.warning("sweep failed: %s", exc)
        finally:
            self.fleet.release_thread()

    def _fire_logged(self, name: str, scheduled_at: float, trigger: Trigger) -> None:
        try:
            result = self.fleet.schedules.fire(name, scheduled_at, trigger=trigger)
        except FireInProgress:
            log.debug("schedule %s: another scheduler is firing this time", name)
        except Exception as exc:  # recorded as a failed fire; the loop goes on
            log.warning("schedule %s failed to fire: %s", name, exc)
        else:
            fire = result.fire
            log.log(logging.DEBUG if result.duplicate else logging.INFO,
                    "schedule %s fired (%s): %s %s%s", name, trigger.value, fire.state.value,
                    fire.orchestration_id or fire.reason,
                    " (by another scheduler)" if result.duplicate else "")
        finally:
            self.fleet.release_thread()


def _next(schedule: Schedule, after: float) -> float:
    return next(iter(schedule.timing.times(after)), float("inf"))


def fast_clock(speed: float, origin: float) -> Clock:
    """A clock running `speed` times faster than the real one from `origin` on (for
    tests and demos; two schedulers given the same origin agree on the time)."""
    return lambda: origin + (time.time() - origin) * speed
