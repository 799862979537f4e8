"""Live events of orchestrations, pushed from the store's change notifications.

One `OrchestrationFeed` per followed orchestration: a thread that follows it with the
SDK's own `watch()` (Firestore listeners on gcp, SQLite's commit counter locally) and
reads the instances that changed since its cursor. Every server-sent-events client of
that orchestration subscribes to the same feed, so 200 clients cost one upstream.

The stream a client sees: `snapshot` (the orchestration now), `transition`s of
instances (with an id that `Last-Event-ID` resumes from), `progress` (the
orchestration after each change) and, last, `completed` (the JobCompletedEvent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sse_starlette import ServerSentEvent

from jobfleet.core.models import (
    JobCompletedEvent,
    JobInstance,
    JsonObject,
    OrchestrationSnapshot,
    Status,
)
from jobfleet.errors import WaitTimeout
from jobfleet.fleet import SWEEP_WHEN_QUIET_SECONDS, Orchestration

log = logging.getLogger(__name__)

ENDINGS = frozenset({"completed", "feed_error"})  # the last event of a stream
# How often a quiet feed looks for listeners left: longer than the watch's own check
# that the execution is alive, so that the check still runs on a followed orchestration.
LISTENER_CHECK_SECONDS = SWEEP_WHEN_QUIET_SECONDS + 1.0


@dataclass(frozen=True, slots=True)
class LiveEvent:
    event: str
    id: str | None
    frame: bytes  # the event on the wire, encoded once for every subscriber

    @classmethod
    def of(cls, event: str, data: JsonObject, id: str | None = None) -> LiveEvent:
        text = json.dumps(data, separators=(",", ":"))
        return cls(event, id, ServerSentEvent(data=text, event=event, id=id).encode())


def transition_id(instance: JobInstance) -> str:
    return f"{instance.changed!r}/{instance.index}"


def parse_transition_id(text: str) -> tuple[float, int] | None:
    stamp, sep, index = text.partition("/")
    try:
        return (float(stamp), int(index)) if sep else None
    except ValueError:
        return None


def transition(instance: JobInstance) -> LiveEvent:
    return LiveEvent.of("transition", instance.to_json(), transition_id(instance))


def completed(snap: OrchestrationSnapshot) -> LiveEvent:
    return LiveEvent.of("completed", JobCompletedEvent.for_orchestration(snap).to_json())


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[list[LiveEvent]] = field(default_factory=asyncio.Queue)

    def push(self, events: list[LiveEvent]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, events)


class OrchestrationFeed:
    """Follows one orchestration for every subscriber until it has ended and been
    announced, or nobody listens any more."""

    def __init__(
        self, orchestration: Orchestration, on_end: Callable[[OrchestrationFeed], None]
    ) -> None:
        self.orchestration = orchestration
        self._on_end = on_end
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._seen: dict[str, tuple[Status, int]] = {}
        self.ended = False
        self._thread = threading.Thread(
            target=self._run, name=f"jobfleet-feed-{orchestration.id[:8]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def subscribe(self, subscriber: Subscriber) -> bool:
        with self._lock:
            if self.ended:
                return False
            self._subscribers.add(subscriber)
            return True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _unheard(self) -> bool:
        """True, and the feed ended, when nobody listens any more."""
        with self._lock:
            self.ended = self.ended or not self._subscribers
            return self.ended

    def _broadcast(self, events: list[LiveEvent], *, final: bool = False) -> bool:
        """False when the feed ends: its last events are out, or nobody listens any more.
        It ends under the lock, so that no subscriber joins a feed that is done."""
        with self._lock:
            subscribers = list(self._subscribers)
            self.ended = final or not subscribers
        for subscriber in subscribers:
            subscriber.push(events)
        return not self.ended

    def _new_transitions(self, after: float) -> tuple[list[LiveEvent], float]:
        events, cursor = [], after
        for instance in self.orchestration.transitions(after=after):
            cursor = max(cursor, instance.changed)
            state = (instance.status, instance.attempts)
            if self._seen.get(instance.job_id) != state:
                self._seen[instance.job_id] = state
                events.append(transition(instance))
        return events, cursor

    def _follow(self) -> None:
        """Until the end is out or nobody listens: a quiet orchestration's watch is
        restarted every LISTENER_CHECK_SECONDS to see whether anyone still does."""
        cursor = self.orchestration.change_stamp()
        last: OrchestrationSnapshot | None = None
        while True:
            try:
                for snap in self.orchestration.watch(timeout=LISTENER_CHECK_SECONDS):
                    events, cursor = self._new_transitions(cursor)
                    if snap == last and not events:
                        continue  # a restarted watch starts with the state already sent
                    last = snap
                    events.append(LiveEvent.of("progress", snap.to_json()))
                    final = snap.status.terminal and snap.event_published
                    if final:
                        events.append(completed(snap))
                    if not self._broadcast(events, final=final):
                        return
                return
            except WaitTimeout:
                if self._unheard():
                    return

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:
            log.exception("the live feed of orchestration %s failed", self.orchestration.id)
            self._broadcast([LiveEvent.of("feed_error", {"error": {
                "code": "feed_failed", "message": "the live feed failed; reconnect to resume",
            }})], final=True)
        finally:
            # This thread is done with the store: the connections it opened go with it.
            self.orchestration.fleet.release_thread()
            self._on_end(self)


class LiveHub:
    """The feeds of the orchestrations being followed, one per orchestration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._feeds: dict[str, OrchestrationFeed] = {}

    @property
    def upstreams(self) -> int:
        return len(self._feeds)

    @property
    def clients(self) -> int:
        with self._lock:
            return sum(feed.subscribers for feed in self._feeds.values())

    def _forget(self, feed: OrchestrationFeed) -> None:
        with self._lock:
            if self._feeds.get(feed.orchestration.id) is feed:
                del self._feeds[feed.orchestration.id]

    def subscribe(self, orchestration: Orchestration, subscriber: Subscriber) -> OrchestrationFeed:
        with self._lock:
            feed = self._feeds.get(orchestration.id)
            if feed is None or not feed.subscribe(subscriber):
                feed = OrchestrationFeed(orchestration, self._forget)
                feed.subscribe(subscriber)
                self._feeds[orchestration.id] = feed
                feed.start()
        return feed

    async def stream(
        self, orchestration: Orchestration, last_event_id: str | None = None
    ) -> AsyncIterator[bytes]:
        """One client's events: subscribed before the snapshot is read, so nothing
        between the two is missed; a resumed client first gets the transitions after
        its last event id, read from the store. Each change is one chunk of events."""
        subscriber = Subscriber(asyncio.get_running_loop())
        feed = await asyncio.to_thread(self.subscribe, orchestration, subscriber)
        sent: set[str] = set()  # ids the client has: never sent (again) from the feed
        try:
            snap = await asyncio.to_thread(orchestration.status)
            first = [LiveEvent.of("snapshot", snap.to_json())]
            resume = parse_transition_id(last_event_id) if last_event_id else None
            if resume is not None:
                backlog, seen = await asyncio.to_thread(self._backlog, orchestration, resume)
                sent.update(seen)
                sent.update(event.id or "" for event in backlog)
                first += backlog
            yield b"".join(event.frame for event in first)
            while True:
                batch = await subscriber.queue.get()
                if sent:
                    batch = [e for e in batch if e.id is None or e.id not in sent]
                yield b"".join(event.frame for event in batch)
                if any(event.event in ENDINGS for event in batch):
                    return
        finally:
            feed.unsubscribe(subscriber)

    def _backlog(
        self, orchestration: Orchestration, resume: tuple[float, int]
    ) -> tuple[list[LiveEvent], set[str]]:
        """The transitions after the client's last event id, and the ids of those up to
        it that the store still shows within its clock margin: the client has them, and
        the feed, which re-reads that margin, must not send them again."""
        stamp, _ = resume
        # From the last event's own stamp on: a change stamps several instances alike.
        after = math.nextafter(stamp, -math.inf)
        backlog, seen = [], set()
        for instance in orchestration.transitions(after=after):
            if (instance.changed, instance.index) > resume:
                backlog.append(transition(instance))
            else:
                seen.add(transition_id(instance))
        return backlog, seen
