"""Counting every message a Pub/Sub topic received, duplicates included.

jobfleet's `EventSubscriber` hands each event id to its handler once, so a test that
counts through it counts after de-duplication and cannot see a second publish. A
`RawSubscription` is a plain subscription on the topic, pulled with the client
library's own `SubscriberClient`: one entry per message the topic accepted after the
subscription was created (publish is synchronous in `PubSubEventBus`, so once the
publishing call returned, its message is there to pull).

    with RawSubscription(project, topic) as raw:
        settle(store, bus, oid)
        assert raw.counts()[oid] == 1
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
import warnings
from collections import Counter
from types import TracebackType

from google.api_core import exceptions as api_exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from jobfleet.backends.gcp.pubsub import ensure_topic, subscription_path, topic_path
from jobfleet.core.models import JobCompletedEvent

PULL_BATCH = 1000
PULL_TIMEOUT = 10.0
# A pull with return_immediately answers with what the subscription holds now. Messages
# whose publish returned were there in every run seen; a few empty answers a little
# apart, not one, are taken to mean drained, as room for a slower emulator.
EMPTY_PULLS = 3
EMPTY_PAUSE = 0.1


class RawSubscription:
    """A plain subscription on `topic` (created with the topic if need be), deleted on
    close. Every message pulled is acked and kept: `messages` grows as `drain` pulls."""

    def __init__(self, project: str, topic: str) -> None:
        self.project = project
        self.topic = topic_path(project, topic)
        self.name = subscription_path(project, f"raw-{uuid.uuid4().hex[:12]}")
        self.messages: list[JobCompletedEvent] = []
        publisher = PublisherClient()
        try:
            ensure_topic(publisher, self.topic)
        finally:
            publisher.transport.close()
        self._client = SubscriberClient()
        self._client.create_subscription(
            request={"name": self.name, "topic": self.topic, "ack_deadline_seconds": 60}
        )

    def drain(self) -> list[JobCompletedEvent]:
        """Pull and ack everything delivered so far; all messages pulled since creation."""
        empty = 0
        while empty < EMPTY_PULLS:
            with warnings.catch_warnings():
                # Deprecated for the service, where a pull waits for messages; the
                # emulator honours it, and a drain must not wait out a timeout.
                warnings.simplefilter("ignore", DeprecationWarning)
                reply = self._client.pull(
                    request={
                        "subscription": self.name,
                        "max_messages": PULL_BATCH,
                        "return_immediately": True,
                    },
                    timeout=PULL_TIMEOUT,
                )
            received = list(reply.received_messages)
            if not received:
                empty += 1
                time.sleep(EMPTY_PAUSE)
                continue
            empty = 0
            self.messages.extend(
                JobCompletedEvent.from_json(json.loads(r.message.data)) for r in received
            )
            self._client.acknowledge(
                request={"subscription": self.name, "ack_ids": [r.ack_id for r in received]}
            )
        return list(self.messages)

    def counts(self) -> Counter[str]:
        """Messages per orchestration id, after draining."""
        return Counter(event.orchestration_id for event in self.drain())

    def close(self) -> None:
        with contextlib.suppress(api_exceptions.NotFound):
            self._client.delete_subscription(request={"subscription": self.name})
        self._client.close()

    def __enter__(self) -> RawSubscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
