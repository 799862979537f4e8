"""Completion events on the Pub/Sub emulator: what a next stage's subscription receives."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.cloud.pubsub_v1 import SubscriberClient

from conftest import Emulators, eventually
from jobfleet.backends.gcp.pubsub import (
    EventSubscriber,
    PubSubEventBus,
    ensure_subscription,
    subscription_path,
)
from jobfleet.core.models import JobCompletedEvent, Status
from jobfleet.errors import NoEventHistory, PublishFailed

WAIT = 15.0


def completed(orchestration_id: str, **tags: str) -> JobCompletedEvent:
    return JobCompletedEvent(
        event_id=JobCompletedEvent.event_id_for(orchestration_id),
        orchestration_id=orchestration_id,
        job_name="resize_images",
        status=Status.ERRORED,
        total=5,
        succeeded=4,
        failed=1,
        cancelled=0,
        tags=tags,
        created_at=1_700_000_000.5,
        finished_at=1_700_000_042.25,
    )


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    eventually(lambda: not (set(threading.enumerate()) - before), timeout=5)
    assert not set(threading.enumerate()) - before


@pytest.fixture
def names(gcp_env: Emulators) -> Iterator[dict[str, str]]:
    """A fresh topic and subscription name; the subscription is deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    chosen = {"project": gcp_env.project, "topic": f"completed-{suffix}", "sub": f"stage-{suffix}"}
    yield chosen
    with SubscriberClient() as subscriber:
        listed = subscriber.list_subscriptions(request={"project": f"projects/{chosen['project']}"})
        for found in listed:
            if found.name.endswith(suffix):
                subscriber.delete_subscription(request={"subscription": found.name})


@pytest.fixture
def bus(names: dict[str, str]) -> Iterator[PubSubEventBus]:
    events = PubSubEventBus(names["project"], names["topic"])
    yield events
    events.close()


def redelivered(project: str, subscription: str, within: float = 0.5) -> list[JobCompletedEvent]:
    """What a restarted next stage gets at once: a message nacked, or dropped unacked at
    shutdown, comes straight back. (One whose ack was never sent stays leased; the
    emulator redelivers it only 10-30 s later, too slow to wait for here.)"""
    again: list[JobCompletedEvent] = []
    with EventSubscriber(project, subscription, again.append):
        time.sleep(within)
    return again


def test_publish_creates_the_topic_and_carries_json_and_filterable_attributes(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    bus.publish(completed("warm-up"))  # the topic did not exist: publish made it
    ensure_subscription(names["project"], names["topic"], names["sub"])
    event = completed("orch-1", team="data", env="dev")
    bus.publish(event)

    with SubscriberClient() as subscriber:
        reply = subscriber.pull(
            request={
                "subscription": subscription_path(names["project"], names["sub"]),
                "max_messages": 10,
            },
            timeout=WAIT,
        )
    [received] = reply.received_messages
    assert json.loads(received.message.data) == event.to_json()
    assert JobCompletedEvent.from_json(json.loads(received.message.data)) == event
    assert dict(received.message.attributes) == {
        "event_id": event.event_id,
        "orchestration_id": "orch-1",
        "job_name": "resize_images",
        "status": "Errored",
        "team": "data",
        "env": "dev",
    }


def test_a_subscription_keeps_its_filter_on_the_attributes_events_carry(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    """Pub/Sub applies the filter server side (the gcloud 528 emulator stores filters but
    does not apply them), so this checks the two halves it depends on: the filter is on
    the subscription, and the events carry the attribute it selects on."""
    wanted = 'attributes.team = "data"'
    for _ in range(2):  # a second start finds it in place
        ensure_subscription(names["project"], names["topic"], names["sub"], filter=wanted)
    with SubscriberClient() as subscriber:
        stored = subscriber.get_subscription(
            request={"subscription": subscription_path(names["project"], names["sub"])}
        )
    assert stored.filter == wanted
    for orchestration, team in [("d1", "data"), ("o1", "ops")]:
        bus.publish(completed(orchestration, team=team))

    got: list[JobCompletedEvent] = []
    with EventSubscriber(names["project"], names["sub"], got.append):
        eventually(lambda: {"d1", "o1"} <= {e.orchestration_id for e in got}, WAIT)
    assert {e.orchestration_id: e.tags["team"] for e in got} == {"d1": "data", "o1": "ops"}


def test_a_subscription_with_another_filter_is_refused(names: dict[str, str]) -> None:
    ensure_subscription(names["project"], names["topic"], names["sub"], 'attributes.team = "a"')
    with pytest.raises(Exception, match="delete it or choose another name"):
        ensure_subscription(names["project"], names["topic"], names["sub"], 'attributes.team = "b"')


def test_a_duplicated_event_reaches_the_handler_once(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    ensure_subscription(names["project"], names["topic"], names["sub"])
    for _ in range(3):  # settle() republishes when recording the publish failed
        bus.publish(completed("orch-dup"))
    bus.publish(completed("orch-other"))

    handled: list[str] = []
    subscriber = EventSubscriber(
        names["project"], names["sub"], lambda event: handled.append(event.event_id)
    )
    with subscriber:
        eventually(lambda: subscriber.handled + subscriber.duplicates == 4, WAIT)
    assert sorted(handled) == sorted(
        JobCompletedEvent.event_id_for(o) for o in ("orch-dup", "orch-other")
    )
    assert (subscriber.handled, subscriber.duplicates) == (2, 2)
    assert redelivered(names["project"], names["sub"]) == []  # the duplicates were acked too


def test_a_failing_handler_gets_the_event_again_and_it_is_acked_once_handled(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    ensure_subscription(names["project"], names["topic"], names["sub"])
    bus.publish(completed("orch-flaky"))
    calls: list[str] = []

    def next_stage(event: JobCompletedEvent) -> None:
        calls.append(event.orchestration_id)
        if len(calls) == 1:
            raise ConnectionError("the next stage's database is down")

    subscriber = EventSubscriber(names["project"], names["sub"], next_stage)
    with subscriber:
        assert eventually(lambda: subscriber.handled == 1, WAIT)
        time.sleep(0.5)  # room for a wrong redelivery to arrive
    assert calls == ["orch-flaky", "orch-flaky"]  # nacked, redelivered, handled
    assert (subscriber.failures, subscriber.duplicates) == (1, 0)
    assert redelivered(names["project"], names["sub"]) == []


def test_follow_yields_new_events_and_deletes_its_subscription(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    def subscriptions() -> set[str]:
        with SubscriberClient() as subscriber:
            project = f"projects/{names['project']}"
            listed = subscriber.list_subscriptions(request={"project": project})
            return {s.name for s in listed if s.topic.endswith(names["topic"])}

    follower = bus.follow(after=41)
    try:
        assert len(subscriptions()) == 1
        event = completed("orch-followed", team="data")
        bus.publish(event)
        with ThreadPoolExecutor(1) as waiting:
            assert waiting.submit(next, follower).result(timeout=WAIT) == (42, event)
    finally:
        follower.close()  # type: ignore[attr-defined]
    assert subscriptions() == set()


def test_events_says_pubsub_keeps_no_history(bus: PubSubEventBus) -> None:
    with pytest.raises(NoEventHistory, match="follow"):
        bus.events()


def test_a_failed_publish_raises_so_that_it_is_not_recorded_as_published(
    gcp_env: Emulators,
) -> None:
    bad = PubSubEventBus(gcp_env.project, "x")  # too short for a topic name: refused
    try:
        with pytest.raises(PublishFailed, match="publishes it again"):
            bad.publish(completed("orch-lost"))
    finally:
        bad.close()
