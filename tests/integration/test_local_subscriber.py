"""The local subscriber: Pub/Sub's delivery rules on the event log in JOBFLEET_HOME, so a
next stage written against `subscribe` runs unchanged on a laptop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import eventually
from jobfleet import JobCompletedEvent, JobFleet, Status
from jobfleet.backends.local.subscriber import LocalEventSubscriber
from jobfleet.config import Settings
from jobfleet.errors import InvalidSubscription, SubscriptionBusy
from jobfleet.subscriptions import subscribe

WAIT = 15.0


def completed(orchestration_id: str, **tags: str) -> JobCompletedEvent:
    return JobCompletedEvent(
        event_id=JobCompletedEvent.event_id_for(orchestration_id),
        orchestration_id=orchestration_id, job_name="extract", status=Status.COMPLETED,
        total=1, succeeded=1, failed=0, cancelled=0, tags=tags,
    )


def database(home: Path) -> Path:
    return Settings.from_env().database


def ids(events: list[JobCompletedEvent]) -> list[str]:
    return [e.orchestration_id for e in events]


def test_a_subscription_gets_the_events_published_after_it_was_created(
    home: Path, fleet: JobFleet
) -> None:
    bus = fleet.backend.bus
    bus.publish(completed("before"))
    got: list[JobCompletedEvent] = []
    stage = LocalEventSubscriber(database(home), "reports", got.append)
    for name in ("after-1", "after-2"):
        bus.publish(completed(name, team="data"))
    with stage:
        assert eventually(lambda: len(got) == 2, WAIT)
        time.sleep(0.2)  # room for a wrong extra delivery
    assert ids(got) == ["after-1", "after-2"]
    assert got[0] == completed("after-1", team="data")
    assert (stage.handled, stage.failures) == (2, 0)


def test_a_restarted_subscriber_goes_on_after_the_last_acknowledged_event(
    home: Path, fleet: JobFleet
) -> None:
    """A subscriber process killed inside its handler: the event it was handling was never
    acknowledged, so the next subscriber gets it again (at least once), and nothing
    acknowledged before."""
    LocalEventSubscriber(database(home), "loader", print)  # the subscription exists from now
    for name in ("e1", "e2", "e3"):
        fleet.backend.bus.publish(completed(name))
    script = textwrap.dedent(f"""
        import os, sys
        from jobfleet.backends.local.subscriber import LocalEventSubscriber
        def handler(event):
            print(event.orchestration_id, flush=True)
            if event.orchestration_id == "e2":
                os._exit(9)  # dies holding e2, before its ack
        with LocalEventSubscriber({str(database(home))!r}, "loader", handler) as stage:
            stage.run(timeout=30)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == 9, child.stderr
    assert child.stdout.split() == ["e1", "e2"]

    fleet.backend.bus.publish(completed("e4"))
    got: list[JobCompletedEvent] = []
    with LocalEventSubscriber(database(home), "loader", got.append):
        assert eventually(lambda: len(got) == 3, WAIT)
        time.sleep(0.2)
    assert ids(got) == ["e2", "e3", "e4"]


def test_a_failing_handler_gets_the_event_again_without_holding_up_the_next(
    home: Path, fleet: JobFleet
) -> None:
    calls: list[str] = []

    def next_stage(event: JobCompletedEvent) -> None:
        calls.append(event.orchestration_id)
        if calls.count("flaky") < 3 and event.orchestration_id == "flaky":
            raise ConnectionError("the warehouse is down")

    stage = LocalEventSubscriber(database(home), "warehouse", next_stage,
                                 min_backoff=0.2, max_backoff=1.0)
    for name in ("flaky", "steady"):
        fleet.backend.bus.publish(completed(name))
    with stage:
        assert eventually(lambda: stage.handled == 2, WAIT)
        time.sleep(0.5)
    assert calls[:2] == ["flaky", "steady"]  # the failure did not block the next event
    assert calls == ["flaky", "steady", "flaky", "flaky"]
    assert (stage.failures, stage.dead_lettered) == (2, 0)
    assert stage.dead_letters() == []

    again: list[JobCompletedEvent] = []
    with LocalEventSubscriber(database(home), "warehouse", again.append):
        time.sleep(0.5)
    assert again == []  # handled means acknowledged, for good


def test_an_event_failing_every_delivery_is_dead_lettered_after_the_maximum(
    home: Path, fleet: JobFleet
) -> None:
    calls: list[str] = []

    def broken(event: JobCompletedEvent) -> None:
        calls.append(event.orchestration_id)
        if event.orchestration_id == "poison":
            raise ValueError(f"cannot load {event.orchestration_id}")

    stage = LocalEventSubscriber(database(home), "loader", broken, max_delivery_attempts=5,
                                 min_backoff=0.05, max_backoff=0.2)
    for name in ("poison", "fine"):
        fleet.backend.bus.publish(completed(name))
    with stage:
        assert eventually(lambda: stage.dead_lettered == 1, WAIT)
        time.sleep(0.5)  # nothing more comes once dead-lettered
    assert calls.count("poison") == 5
    assert calls.count("fine") == 1
    [dead] = stage.dead_letters()
    assert (dead.event, dead.attempts) == (completed("poison"), 5)
    assert dead.error == "ValueError: cannot load poison"

    with LocalEventSubscriber(database(home), "loader", broken):
        time.sleep(0.5)
    assert calls.count("poison") == 5  # a restart does not bring a dead letter back


def test_one_subscriber_at_a_time_consumes_a_subscription(home: Path, fleet: JobFleet) -> None:
    with LocalEventSubscriber(database(home), "reports", print):
        with pytest.raises(SubscriptionBusy, match="another subscriber"):
            LocalEventSubscriber(database(home), "reports", print).start()
        with LocalEventSubscriber(database(home), "other-stage", print):
            pass
    with LocalEventSubscriber(database(home), "reports", print):
        pass  # free again once stopped


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"filter": 'attributes.team = "data"'}, "filter"),
        ({"max_delivery_attempts": 4}, "from 5 to 100"),
        ({"max_delivery_attempts": 101}, "from 5 to 100"),
        ({"min_backoff": 10, "max_backoff": 5}, "min_backoff <= max_backoff"),
    ],
)
def test_settings_outside_pubsubs_rules_are_refused_locally_too(
    home: Path, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidSubscription, match=message):
        subscribe("reports", print, **settings)  # type: ignore[arg-type]


def test_a_bad_subscription_name_is_refused_as_pubsub_would(home: Path) -> None:
    with pytest.raises(InvalidSubscription, match="not valid"):
        subscribe("x", print)


@pytest.mark.slow
def test_subscribe_hands_a_real_orchestrations_event_to_the_next_stage(
    home: Path, fleet: JobFleet
) -> None:
    started = threading.Event()
    got: list[JobCompletedEvent] = []

    def next_stage(event: JobCompletedEvent) -> None:
        got.append(event)
        started.set()

    with subscribe("transform", next_stage):
        run = fleet.kick_off("greet", [{"name": "ada", "count": 1}, {"name": "bob", "count": 2}],
                             tags={"stage": "1"})
        assert started.wait(60)
    [event] = got
    assert (event.orchestration_id, event.status, event.succeeded) == (
        run.id, Status.COMPLETED, 2
    )
    assert event.tags == {"stage": "1"}
