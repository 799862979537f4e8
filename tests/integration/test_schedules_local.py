"""Firing schedules on the embedded backend through the SDK: once per scheduled time
whatever the deliveries, the overlap policies, failures that a later delivery retries,
and the local scheduler's tick with an injected clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobfleet import JobFleet, Status
from jobfleet.core import schedules
from jobfleet.core.cron import iso, parse_iso
from jobfleet.core.schedules import Fire, FireState, Trigger
from jobfleet.errors import FireInProgress
from jobfleet.local_scheduler import LocalScheduler
from jobfleet.scheduling import SCHEDULE_TIME_TAG

T0 = parse_iso("2025-01-01T10:00:00Z")  # before these tests run: schedules are backdated


def runs_of(fleet: JobFleet, name: str) -> list[Any]:
    return fleet.history(limit=100, tag=("schedule", name))


def test_a_scheduled_time_delivered_twice_starts_one_run(fleet: JobFleet) -> None:
    fleet.schedules.create("greetings", job="greet", cron="0 * * * *",
                           params=[{"name": "a", "count": 1}])
    first = fleet.schedules.fire("greetings", T0)
    again = fleet.schedules.fire("greetings", T0)
    assert not first.duplicate and again.duplicate
    assert again.fire.orchestration_id == first.fire.orchestration_id
    run = fleet.orchestration(first.fire.orchestration_id or "").wait(60)
    assert run.status is Status.COMPLETED
    assert run.tags == {"schedule": "greetings", SCHEDULE_TIME_TAG: iso(T0)}
    assert len(runs_of(fleet, "greetings")) == 1


def test_concurrent_deliveries_of_one_time_start_exactly_one_run(fleet: JobFleet) -> None:
    fleet.schedules.create("busy", job="greet", cron="0 * * * *",
                           params=[{"name": "b", "count": 1}])
    answers: list[str] = []
    barrier = threading.Barrier(12)

    def deliver() -> None:
        barrier.wait()
        try:
            result = fleet.schedules.fire("busy", T0)
            answers.append("dup" if result.duplicate else "new")
        except FireInProgress:
            answers.append("in-progress")
        finally:
            fleet.release_thread()

    threads = [threading.Thread(target=deliver) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers.count("new") == 1, answers
    assert len(runs_of(fleet, "busy")) == 1


def test_overlap_skip_records_the_skip_and_starts_nothing(fleet: JobFleet) -> None:
    fleet.schedules.create("slow", job="sleepy", cron="0 * * * *",
                           params=[{"n": 1, "seconds": 30}])
    first = fleet.schedules.fire("slow", T0).fire
    second = fleet.schedules.fire("slow", T0 + 3600).fire
    assert second.state is FireState.SKIPPED
    assert first.orchestration_id and first.orchestration_id in second.reason
    assert len(runs_of(fleet, "slow")) == 1
    fleet.orchestration(first.orchestration_id).cancel()
    third = fleet.schedules.fire("slow", T0 + 7200).fire
    assert third.state is FireState.STARTED  # the previous run has ended
    fleet.orchestration(third.orchestration_id or "").cancel()


def test_overlap_allow_and_cancel_previous(fleet: JobFleet) -> None:
    fleet.schedules.create("both", job="sleepy", cron="0 * * * *",
                           params=[{"n": 1, "seconds": 30}], overlap="allow")
    one = fleet.schedules.fire("both", T0).fire
    two = fleet.schedules.fire("both", T0 + 3600).fire
    assert one.state is two.state is FireState.STARTED
    fleet.schedules.update("both", overlap="cancel_previous")
    three = fleet.schedules.fire("both", T0 + 7200).fire
    assert three.state is FireState.STARTED
    assert fleet.orchestration(two.orchestration_id or "").status().status is Status.CANCELLED
    for fire in (one, three):
        fleet.orchestration(fire.orchestration_id or "").cancel()


def test_a_failed_fire_is_recorded_and_a_later_delivery_fires_it(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"yes": True}

    def customers() -> list[dict[str, Any]]:
        if broken["yes"]:
            raise ConnectionError("the customer database is down")
        return [{"name": "c", "count": 2}]

    monkeypatch.setitem(schedules._PROVIDERS, "customers", customers)
    fleet.schedules.create("per_customer", job="greet", cron="0 * * * *",
                           params_provider="customers")
    with pytest.raises(ConnectionError):
        fleet.schedules.fire("per_customer", T0)
    [failed] = fleet.schedules.history("per_customer")
    assert failed.state is FireState.FAILED
    assert "the customer database is down" in failed.reason
    broken["yes"] = False
    retried = fleet.schedules.fire("per_customer", T0).fire
    assert (retried.state, retried.attempt) == (FireState.STARTED, 2)
    assert fleet.orchestration(retried.orchestration_id or "").wait(60).status is Status.COMPLETED


def test_a_claimant_that_died_after_starting_the_run_is_not_doubled(fleet: JobFleet) -> None:
    fleet.schedules.create("orphan", job="greet", cron="0 * * * *",
                           params=[{"name": "o", "count": 1}])
    # As a delivery leaves it when killed between the kick-off and recording it: the
    # run exists (tagged with its scheduled time), the fire is still FIRING, hold lapsed.
    run = fleet.kick_off("greet", [{"name": "o", "count": 1}],
                         tags={"schedule": "orphan", SCHEDULE_TIME_TAG: iso(T0)})
    dead = Fire(schedule="orphan", scheduled_at=T0, trigger=Trigger.CRON,
                state=FireState.FIRING, attempt=0, fired_at=T0, hold_until=T0 + 1)
    fleet.backend.store.claim_fire(dead, now=T0)
    with pytest.raises(FireInProgress):
        fleet.schedules.fire("orphan", T0, now=T0 + 0.5)  # the holder may still be alive
    taken = fleet.schedules.fire("orphan", T0, now=T0 + 2).fire
    assert (taken.state, taken.orchestration_id, taken.attempt) == (
        FireState.STARTED, run.id, 2)
    assert len(runs_of(fleet, "orphan")) == 1


def test_a_paused_schedule_skips_its_cron_fires_but_runs_when_triggered(
    fleet: JobFleet,
) -> None:
    fleet.schedules.create("quiet", job="greet", cron="0 * * * *",
                           params=[{"name": "q", "count": 1}])
    fleet.schedules.pause("quiet")
    assert fleet.schedules.fire("quiet", T0).fire.state is FireState.SKIPPED
    manual = fleet.schedules.trigger("quiet").fire
    assert manual.trigger is Trigger.MANUAL and manual.state is FireState.STARTED
    assert fleet.orchestration(manual.orchestration_id or "").wait(60).status is Status.COMPLETED


class Recorder:
    def __init__(self) -> None:
        self.fired: list[tuple[str, float, Trigger]] = []

    def __call__(self, name: str, scheduled_at: float, trigger: Trigger) -> None:
        self.fired.append((name, scheduled_at, trigger))


def created_at(fleet: JobFleet, name: str, when: float) -> None:
    """Backdate a schedule, as if created (and last changed) at `when`."""
    from dataclasses import replace

    current = fleet.schedules.get(name)
    fleet.backend.store.save_schedule(replace(current, created_at=when, updated_at=when),
                                      create=False)


def test_the_scheduler_fires_on_time_and_sleeps_until_the_next_fire(fleet: JobFleet) -> None:
    fleet.schedules.create("tick", job="greet", cron="*/15 * * * *",
                           params=[{"name": "t", "count": 1}])
    created_at(fleet, "tick", T0 - 60)
    recorder = Recorder()
    scheduler = LocalScheduler(fleet, fire=recorder)
    wake = scheduler.tick(T0 - 30, recorder)
    assert recorder.fired == [] and wake == T0 - 30 + 5  # re-reads the schedules
    scheduler.tick(T0 + 0.2, recorder)
    assert recorder.fired == [("tick", T0, Trigger.CRON)]
    scheduler.tick(T0 + 1, recorder)
    assert len(recorder.fired) == 1  # nothing new is due


def test_a_scheduler_that_was_down_catches_up_once(fleet: JobFleet) -> None:
    fleet.schedules.create("hourly", job="greet", cron="0 * * * *",
                           params=[{"name": "h", "count": 1}])
    created_at(fleet, "hourly", T0 - 60)
    fleet.schedules.fire("hourly", T0)  # the last fire before the scheduler went down
    recorder = Recorder()
    LocalScheduler(fleet, fire=recorder).tick(T0 + 5 * 3600 + 600, recorder)
    assert recorder.fired == [("hourly", T0 + 5 * 3600, Trigger.CATCH_UP)]


def test_a_paused_schedule_owes_nothing_for_its_pause(fleet: JobFleet) -> None:
    fleet.schedules.create("napping", job="greet", cron="0 * * * *",
                           params=[{"name": "n", "count": 1}])
    created_at(fleet, "napping", T0 - 60)
    fleet.schedules.pause("napping")
    recorder = Recorder()
    scheduler = LocalScheduler(fleet, fire=recorder)
    scheduler.tick(T0 + 10, recorder)
    scheduler.tick(T0 + 3 * 3600 + 10, recorder)
    assert recorder.fired == []
    fleet.schedules.resume("napping")
    scheduler.tick(T0 + 3 * 3600 + 20, recorder)
    scheduler.tick(T0 + 4 * 3600 + 1, recorder)
    assert recorder.fired == [("napping", T0 + 4 * 3600, Trigger.CRON)]


def test_the_sweeps_catch_up_fires_only_what_the_timer_missed_for_good(
    fleet: JobFleet,
) -> None:
    fleet.schedules.create("missed", job="greet", cron="0 * * * *",
                           params=[{"name": "m", "count": 1}])
    created_at(fleet, "missed", T0 - 60)
    assert fleet.schedules.catch_up(now=T0 + 600) == []  # Cloud Scheduler may still retry
    [caught] = fleet.schedules.catch_up(now=T0 + 5 * 3600 + 2400)
    assert (caught.fire.scheduled_at, caught.fire.trigger) == (T0 + 5 * 3600, Trigger.CATCH_UP)
    assert fleet.schedules.catch_up(now=T0 + 5 * 3600 + 2500) == []  # once
