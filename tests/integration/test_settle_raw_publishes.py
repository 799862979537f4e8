"""Completion events counted as Pub/Sub received them: raw publishes, not de-duplicated.

The orchestrations live in the Firestore emulator and the events go to the Pub/Sub
emulator through the production `FirestoreStore` and `PubSubEventBus`; a plain
subscription (tests/pubsub_raw.py) counts every message, so a second publish of the
same event shows up here where `EventSubscriber` would have dropped it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conftest import Emulators
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.backends.gcp.pubsub import PubSubEventBus
from jobfleet.core.completion import settle
from jobfleet.core.models import (
    ErrorInfo,
    JobCompletedEvent,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    RunOptions,
    Status,
)
from pubsub_raw import RawSubscription

SETTLERS = 8  # concurrent deliveries per orchestration, as duplicate trigger events
ORCHESTRATIONS = 10


@pytest.fixture
def names(gcp_env: Emulators) -> dict[str, str]:
    """A Firestore project and a topic of this test's own."""
    suffix = uuid.uuid4().hex[:10]
    return {"project": f"raw-{suffix}", "topic": f"completed-{suffix}"}


@pytest.fixture
def store(names: dict[str, str]) -> Iterator[FirestoreStore]:
    opened = FirestoreStore(names["project"])
    yield opened
    opened.close()


@pytest.fixture
def bus(names: dict[str, str]) -> Iterator[PubSubEventBus]:
    events = PubSubEventBus(names["project"], names["topic"])
    yield events
    events.close()


@pytest.fixture
def raw(names: dict[str, str]) -> Iterator[RawSubscription]:
    with RawSubscription(names["project"], names["topic"]) as subscription:
        yield subscription


def finished_but_unsettled(store: FirestoreStore, statuses: list[Status]) -> str:
    """An orchestration whose instances have all ended (claimed and recorded, as a worker
    does) and that nobody has settled yet: InProgress, no event."""
    oid = str(uuid.uuid4())
    options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=1)
    store.create_orchestration(
        NewOrchestration(oid, "thumbnail", options, {"team": "data"}, time.time()),
        [[NewInstance(str(uuid.uuid4()), i, 0, {"n": i}) for i in range(len(statuses))]],
    )
    claimed = store.claim(oid, 0, "worker-a", limit=len(statuses), now=time.time(), lease=60)
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, c.owner, status,
                result=c.index if status is Status.COMPLETED else None,
                error=None if status is Status.COMPLETED else ErrorInfo("ValueError", "bad"))
        for c, status in zip(sorted(claimed, key=lambda c: c.index), statuses, strict=True)
    ])
    assert store.get_orchestration(oid).status is Status.IN_PROGRESS
    return oid


def test_the_raw_subscription_counts_every_publish_duplicates_included(
    store: FirestoreStore, bus: PubSubEventBus, raw: RawSubscription
) -> None:
    """The helper itself: what a de-duplicating subscriber would drop, it counts."""
    oid = finished_but_unsettled(store, [Status.COMPLETED])
    event = JobCompletedEvent.for_orchestration(settle(store, bus, oid))
    bus.publish(event)  # the same event (same id) a second time

    assert raw.counts()[oid] == 2
    assert {e.event_id for e in raw.messages} == {event.event_id}


def test_settle_called_again_and_again_publishes_one_message(
    store: FirestoreStore, bus: PubSubEventBus, raw: RawSubscription
) -> None:
    oid = finished_but_unsettled(store, [Status.COMPLETED, Status.ERRORED])

    snaps = [settle(store, bus, oid) for _ in range(5)]

    assert {s.status for s in snaps} == {Status.ERRORED}
    assert all(s.event_published for s in snaps)
    assert raw.counts() == {oid: 1}
    [event] = raw.messages
    assert (event.status, event.total, event.succeeded, event.failed) == (
        Status.ERRORED, 2, 1, 1,
    )
    assert event.tags == {"team": "data"}


def test_concurrent_settles_publish_one_message_per_orchestration(
    names: dict[str, str], store: FirestoreStore, raw: RawSubscription
) -> None:
    """Eight deliveries of the last write reach eight function instances at once, each
    with its own store and publisher: Pub/Sub must still receive one message per
    orchestration, not one per caller that saw the flip before the publish was recorded."""
    oids = [finished_but_unsettled(store, [Status.COMPLETED] * 2) for _ in range(ORCHESTRATIONS)]
    round_start = threading.Barrier(SETTLERS, timeout=60)
    seen: list[OrchestrationSnapshot] = []
    errors: list[BaseException] = []

    def function_instance() -> None:
        own_store = FirestoreStore(names["project"])
        own_bus = PubSubEventBus(names["project"], names["topic"])
        try:
            for oid in oids:
                round_start.wait()
                seen.append(settle(own_store, own_bus, oid))
        except BaseException as exc:
            errors.append(exc)
            round_start.abort()
        finally:
            own_bus.close()
            own_store.close()

    threads = [threading.Thread(target=function_instance) for _ in range(SETTLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(seen) == SETTLERS * ORCHESTRATIONS
    assert all(s.status is Status.COMPLETED for s in seen)
    # A caller that found another holding the publish claim returns before it is recorded.
    assert all(store.get_orchestration(oid).event_published for oid in oids)
    assert raw.counts() == {oid: 1 for oid in oids}
