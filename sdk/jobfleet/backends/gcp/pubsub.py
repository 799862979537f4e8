"""Completion events on Pub/Sub: the production EventBus and the subscriber side.

`PubSubEventBus.publish` waits for the server to accept the message, so that `settle()`
records an event as published only once it is. Pub/Sub delivers at least once, so the
consumer side, `EventSubscriber`, hands each event id to its handler once per process and
acks a message only after the handler returned: a next stage that fails sees the event
again. Every message carries the event's fields as attributes, so that a subscription can
filter (`attributes.team = "data"`) without decoding bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import FlowControl

from jobfleet.backends.gcp.subscriptions import (
    ensure_subscription,
    ensure_topic,
    subscription_path,
    topic_path,
)
from jobfleet.core.deliveries import RECENT_IDS, RecentIds
from jobfleet.core.deliveries import decode_event as decode
from jobfleet.core.models import JobCompletedEvent
from jobfleet.errors import NoEventHistory, PublishFailed

# ensure_subscription, subscription_path and topic_path live in subscriptions.py; they are
# importable from here as before.
__all__ = [
    "EventSubscriber",
    "Handler",
    "PubSubEventBus",
    "RecentIds",
    "TopicFollower",
    "decode",
    "ensure_subscription",
    "ensure_topic",
    "subscription_path",
    "topic_path",
]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 30.0
FOLLOW_EXPIRY = 24 * 3600  # Pub/Sub's shortest idle expiry: a follower that died still goes away
POLL = 0.2

Handler = Callable[[JobCompletedEvent], object]


class TopicMissing(Exception):
    def __init__(self, topic: str) -> None:
        super().__init__(
            f"the topic {topic} does not exist; jobfleet creates topics only on the emulator:"
            " create it (the Terraform module in infra/ does) or point JOBFLEET_TOPIC at one"
        )


class PubSubEventBus:
    """The EventBus of the gcp backend: one topic that receives every JobCompletedEvent."""

    def __init__(
        self, project: str, topic: str, publisher: Any | None = None,
        create_missing: bool | None = None,
    ) -> None:
        """`create_missing`: create the topic at first publish if it does not exist. By
        default only on the emulator: in a project the topic is infrastructure (infra/
        creates it), so that a publisher needs roles/pubsub.publisher and nothing more."""
        if create_missing is None:
            create_missing = bool(os.environ.get("PUBSUB_EMULATOR_HOST"))
        self.create_missing = create_missing
        self.project = project
        self.topic = topic
        self.topic_path = topic_path(project, topic)
        self._owns_publisher = publisher is None
        self._publisher = publisher if publisher is not None else PublisherClient()

    def publish(self, event: JobCompletedEvent) -> None:
        data = json.dumps(event.to_json()).encode()
        attributes = event.attributes()
        try:
            try:
                self._send(data, attributes)
            except api_exceptions.NotFound as missing:
                # First use on an emulator: no topics.get (or round trip) on the usual path.
                if not self.create_missing:
                    raise TopicMissing(self.topic_path) from missing
                ensure_topic(self._publisher, self.topic_path)
                self._send(data, attributes)
        except Exception as exc:
            raise PublishFailed(event.orchestration_id, self.topic_path, exc) from exc

    def _send(self, data: bytes, attributes: dict[str, str]) -> None:
        self._publisher.publish(self.topic_path, data, **attributes).result(PUBLISH_TIMEOUT)

    def events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        raise NoEventHistory(self.topic_path)

    def follow(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """Events published from now on, numbered after `after`, through a temporary
        subscription that `close()` (or leaving a `with` block) deletes."""
        ensure_topic(self._publisher, self.topic_path)
        return TopicFollower(self.project, self.topic_path, after=after)

    def close(self) -> None:
        if self._owns_publisher:
            self._owns_publisher = False  # a stopped publisher refuses a second stop()
            self._publisher.stop()
            self._publisher.transport.close()


class EventSubscriber:
    """Streams a subscription's JobCompletedEvents to `handler`: the start of a next stage.

    Streaming pull, so an event reaches the handler as soon as Pub/Sub has it. A message
    is acked after the handler returned and nacked (redelivered) when it raised. A
    duplicate of an event already handled is acked without calling the handler; one
    that arrives while the first copy is still being handled waits for its outcome.
    Duplicates are recognised within this process (the last `remember` ids), so a
    handler that must survive restarts exactly once still has to be idempotent.
    """

    def __init__(
        self,
        project: str,
        subscription: str,
        handler: Handler,
        *,
        subscriber: Any | None = None,
        max_messages: int = 100,
        remember: int = RECENT_IDS,
    ) -> None:
        self.subscription = subscription_path(project, subscription)
        self.handled = 0
        self.duplicates = 0
        self.failures = 0
        self._handler = handler
        self._owns_subscriber = subscriber is None
        self._subscriber = subscriber if subscriber is not None else SubscriberClient()
        self._flow_control = FlowControl(max_messages=max_messages)
        self._done = RecentIds(remember)
        self._in_flight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stream: Any = None

    def start(self) -> EventSubscriber:
        self._stream = self._subscriber.subscribe(
            self.subscription,
            callback=self._on_message,
            flow_control=self._flow_control,
            await_callbacks_on_shutdown=True,
        )
        return self

    def run(self, timeout: float | None = None) -> None:
        """Block while the stream runs; re-raise what ended it. Returns on timeout."""
        with contextlib.suppress(TimeoutError):
            self._stream.result(timeout=timeout)

    def check(self) -> None:
        """Raise the error that ended the stream, if it ended on its own."""
        if self._stream is not None and self._stream.done() and not self._stream.cancelled():
            self._stream.result()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop pulling, let running handlers finish (their acks are sent), close."""
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(Exception):  # the stream's own error is not ours to raise
                self._stream.result(timeout=timeout)
            self._stream = None
        if self._owns_subscriber:
            self._subscriber.close()

    def __enter__(self) -> EventSubscriber:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _on_message(self, message: Any) -> None:
        try:
            event = decode(message.data)
        except (ValueError, KeyError, TypeError):
            # Redelivering cannot make it decode; a dead-letter topic is the place for it.
            log.error("dropped message %s: not a JobCompletedEvent", message.message_id)
            message.ack()
            return
        if self._claim(event.event_id, message):
            self._handle(event, message)

    def _claim(self, event_id: str, message: Any) -> bool:
        """True when this copy is the one to handle; otherwise settles the copy."""
        with self._lock:
            if event_id in self._done:
                self.duplicates += 1
                message.ack()
                return False
            first = self._in_flight.get(event_id)
            if first is None:
                self._in_flight[event_id] = threading.Event()
                return True
        first.wait()
        with self._lock:
            handled = event_id in self._done
            if handled:
                self.duplicates += 1
        if handled:
            message.ack()
        else:
            message.nack()  # the first copy failed; this one comes back for another try
        return False

    def _handle(self, event: JobCompletedEvent, message: Any) -> None:
        try:
            self._handler(event)
        except Exception:
            log.exception("handler failed on event %s; it will be redelivered", event.event_id)
            with self._lock:
                self.failures += 1
                self._in_flight.pop(event.event_id).set()
            message.nack()
            return
        with self._lock:
            self.handled += 1
            self._done.add(event.event_id)
            self._in_flight.pop(event.event_id).set()
        message.ack()


class TopicFollower:
    """`follow()`'s iterator: a temporary subscription, deleted on close."""

    def __init__(self, project: str, topic: str, *, after: int = 0) -> None:
        self.cursor = after
        self._closed = True  # until the subscription exists: nothing to clean up before
        self._events: queue.Queue[JobCompletedEvent] = queue.Queue()
        self._subscriber = SubscriberClient()
        name = f"{topic.rsplit('/', 1)[-1]}-follow-{uuid.uuid4().hex[:12]}"
        self.subscription = subscription_path(project, name)
        try:
            self._subscriber.create_subscription(
                request={
                    "name": self.subscription,
                    "topic": topic,
                    "expiration_policy": {"ttl": {"seconds": FOLLOW_EXPIRY}},
                }
            )
        except BaseException:
            self._subscriber.close()
            raise
        self._closed = False
        self._consumer = EventSubscriber(
            project, name, self._events.put, subscriber=self._subscriber
        )
        try:
            self._consumer.start()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> TopicFollower:
        return self

    def __next__(self) -> tuple[int, JobCompletedEvent]:
        while not self._closed:
            try:
                event = self._events.get(timeout=POLL)
            except queue.Empty:
                self._consumer.check()
                continue
            self.cursor += 1
            return self.cursor, event
        raise StopIteration

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._consumer.stop()
        with contextlib.suppress(api_exceptions.NotFound):
            self._subscriber.delete_subscription(request={"subscription": self.subscription})
        self._subscriber.close()

    def __enter__(self) -> TopicFollower:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A follower abandoned mid-loop (an interrupted `for`) still removes its subscription.
        with contextlib.suppress(Exception):
            self.close()
