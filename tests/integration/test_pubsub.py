"""Completion events on the Pub/Sub emulator: what a next stage's subscription receives."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from conftest import Emulators, eventually
from jobfleet.backends.gcp.pubsub import (
    EventSubscriber,
    PubSubEventBus,
    ensure_subscription,
    subscription_path,
    topic_path,
)
from jobfleet.core.models import JobCompletedEvent, Status
from jobfleet.errors import InvalidSubscription, NoEventHistory, PublishFailed

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


def stored(project: str, subscription: str) -> Any:
    with SubscriberClient() as subscriber:
        return subscriber.get_subscription(
            request={"subscription": subscription_path(project, subscription)}
        )


def test_a_dead_letter_policy_and_retry_backoff_are_set_and_then_follow_the_code(
    names: dict[str, str],
) -> None:
    project, topic, sub = names["project"], names["topic"], names["sub"]
    dead = f"dead-{sub}"
    ensure_subscription(project, topic, sub, dead_letter_topic=dead, max_delivery_attempts=5,
                        min_backoff=1, max_backoff=60)
    first = stored(project, sub)
    assert first.dead_letter_policy.dead_letter_topic == f"projects/{project}/topics/{dead}"
    assert first.dead_letter_policy.max_delivery_attempts == 5
    assert (first.retry_policy.minimum_backoff, first.retry_policy.maximum_backoff) == (
        timedelta(seconds=1), timedelta(seconds=60)
    )
    keeper = stored(project, dead)  # dead letters are kept, not dropped by an empty topic
    assert keeper.topic == f"projects/{project}/topics/{dead}"

    # The dead-letter policy is mutable (topic and filter are not): a new start updates it.
    ensure_subscription(project, topic, sub, dead_letter_topic=dead, max_delivery_attempts=7)
    assert stored(project, sub).dead_letter_policy.max_delivery_attempts == 7
    ensure_subscription(project, topic, sub)
    assert not stored(project, sub).dead_letter_policy.dead_letter_topic


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_delivery_attempts": 4}, "from 5 to 100"),
        ({"max_delivery_attempts": 101}, "from 5 to 100"),
        ({"min_backoff": 700, "max_backoff": 800}, "600"),
        ({"push_endpoint": "https://stage.example.com/push"}, "push_service_account"),
    ],
)
def test_settings_outside_pubsubs_ranges_are_refused_before_anything_is_created(
    names: dict[str, str], settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSubscription, match=message):
        ensure_subscription(names["project"], names["topic"], names["sub"],
                            dead_letter_topic=f"dead-{names['sub']}", **settings)
    with pytest.raises(api_exceptions.NotFound):
        stored(names["project"], names["sub"])


def test_a_push_subscription_carries_the_oidc_token_settings_push_handler_checks(
    names: dict[str, str],
) -> None:
    endpoint = "https://stage-abc123-uc.a.run.app/pubsub/push"
    account = "pubsub-push@proj.iam.gserviceaccount.com"
    ensure_subscription(names["project"], names["topic"], names["sub"],
                        push_endpoint=endpoint, push_service_account=account)
    push = stored(names["project"], names["sub"]).push_config
    assert push.push_endpoint == endpoint
    assert (push.oidc_token.service_account_email, push.oidc_token.audience) == (
        account, endpoint
    )


def test_an_event_failing_every_delivery_is_dead_lettered_after_the_maximum(
    names: dict[str, str], bus: PubSubEventBus
) -> None:
    """The gcloud emulator applies dead-letter policies (checked on 528): after the fifth
    failed delivery the message moves to the dead-letter topic, with Pub/Sub's
    attributes saying where from and after how many deliveries."""
    project, sub = names["project"], names["sub"]
    dead = f"dead-{sub}"
    ensure_subscription(project, names["topic"], sub, dead_letter_topic=dead,
                        max_delivery_attempts=5, min_backoff=0.1, max_backoff=0.5)
    event = completed("orch-poison")
    bus.publish(event)
    calls: list[str] = []

    def broken(received: JobCompletedEvent) -> None:
        calls.append(received.orchestration_id)
        raise ValueError("the next stage cannot load this")

    with EventSubscriber(project, sub, broken) as stage:
        assert eventually(lambda: len(calls) >= 5, WAIT)
        time.sleep(2)  # the time a wrong sixth delivery would take to come
    assert calls == ["orch-poison"] * 5
    assert stage.failures == 5

    with SubscriberClient() as subscriber:
        reply = subscriber.pull(
            request={"subscription": subscription_path(project, dead), "max_messages": 10},
            timeout=WAIT,
        )
    [letter] = reply.received_messages
    assert JobCompletedEvent.from_json(json.loads(letter.message.data)) == event
    assert letter.message.attributes["CloudPubSubDeadLetterSourceSubscription"] == sub
    assert letter.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


def test_outside_the_emulator_a_missing_topic_is_not_created_but_named(
    gcp_env: Emulators, names: dict[str, str]
) -> None:
    """In a project the topic is infrastructure: publishers hold roles/pubsub.publisher,
    which cannot create one. The event stays unpublished (the next trigger retries) and
    the error says what to do."""
    strict = PubSubEventBus(names["project"], names["topic"], create_missing=False)
    try:
        with pytest.raises(PublishFailed, match=r"does not exist.*infra/"):
            strict.publish(completed("orch-no-topic"))
    finally:
        strict.close()
    with PublisherClient() as publisher:
        project = f"projects/{names['project']}"
        topics = [t.name for t in publisher.list_topics(request={"project": project})]
    assert topic_path(names["project"], names["topic"]) not in topics
