"""Wake tokens of the Firestore store (`Store.wake_token`): pushed by listeners, never polled.

`watch()` and the API's server-sent events wait on these. A listener per watched
orchestration, on its document and on its shard counters (which change with every
commit that ends instances); the store's own writes bump the token at once. A claim in
another process writes no counter and moves no token: `watch` sees it when it re-reads,
every second, rather than pay a listener read per instance claimed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from google.cloud import firestore

from jobfleet.backends.gcp.firestore_documents import SHARDS
from jobfleet.errors import JobfleetError

LISTEN_TIMEOUT = 10.0  # for a new listener's first snapshot
LISTEN_IDLE = 300.0  # seconds unasked after which an orchestration's listeners stop


class OrchestrationListener:
    """The two listeners of one orchestration: on its document, and on its shard counters,
    which change with every commit that ends instances."""

    def __init__(self, ref: firestore.DocumentReference, on_change: Callable[[], None]) -> None:
        self._ready = [threading.Event(), threading.Event()]
        self._watches = [
            ref.on_snapshot(self._callback(self._ready[0], on_change)),
            ref.collection(SHARDS).on_snapshot(self._callback(self._ready[1], on_change)),
        ]

    @staticmethod
    def _callback(ready: threading.Event, on_change: Callable[[], None]) -> Callable[..., None]:
        def changed(*_: Any) -> None:
            on_change()
            ready.set()

        return changed

    def wait_ready(self) -> None:
        """A listener hears every write after its first snapshot, so a token read after
        that misses none."""
        for ready in self._ready:
            ready.wait(LISTEN_TIMEOUT)

    def stop(self) -> None:
        for watch in self._watches:
            watch.unsubscribe()


class ChangeFeed:
    """Wake tokens per orchestration, moved by Firestore listeners (pushed, no polling)
    and by this store's own writes (so that those show at once).

    A long-lived process (the API server) follows many orchestrations in turn, so the
    listeners of one that nobody has asked about for LISTEN_IDLE stop; asking again
    starts them again, and its tokens keep counting from where they were."""

    def __init__(self, orchestrations: firestore.CollectionReference) -> None:
        self._orchestrations = orchestrations
        self._moved = threading.Condition()
        self._versions: dict[str, int] = {}
        self._listeners: dict[str, OrchestrationListener] = {}
        self._asked: dict[str, float] = {}
        self._waiting: dict[str, int] = {}
        self._closed = False

    @property
    def listening(self) -> int:
        return len(self._listeners)

    def bump(self, orchestration_id: str) -> None:
        with self._moved:
            if orchestration_id in self._versions:
                self._versions[orchestration_id] += 1
                self._moved.notify_all()

    def token(self, orchestration_id: str) -> int:
        self._listen(orchestration_id)
        with self._moved:
            return self._versions[orchestration_id]

    def wait(self, orchestration_id: str, token: int, timeout: float) -> int:
        self._listen(orchestration_id)
        with self._moved:
            self._waiting[orchestration_id] = self._waiting.get(orchestration_id, 0) + 1
            try:
                self._moved.wait_for(
                    lambda: self._versions[orchestration_id] != token, timeout
                )
                return self._versions[orchestration_id]
            finally:
                self._waiting[orchestration_id] -= 1
                self._asked[orchestration_id] = time.monotonic()

    def _listen(self, orchestration_id: str) -> None:
        """Listen from first use; whoever watches an orchestration asks again and again."""
        with self._moved:
            if self._closed:
                raise JobfleetError("this FirestoreStore is closed; open a new one")
            now = time.monotonic()
            self._asked[orchestration_id] = now
            idle = self._idle(now)
            listener = self._listeners.get(orchestration_id)
            if listener is None:
                self._versions.setdefault(orchestration_id, 0)
                # Starting a listener does not wait for it, so it may happen under the lock.
                listener = OrchestrationListener(
                    self._orchestrations.document(orchestration_id),
                    partial(self.bump, orchestration_id),
                )
                self._listeners[orchestration_id] = listener
        for stale in idle:  # outside the lock, as in close()
            stale.stop()
        listener.wait_ready()

    def _idle(self, now: float) -> list[OrchestrationListener]:
        """Take out the listeners nobody waits on or has asked about lately."""
        stale = [
            oid for oid in self._listeners
            if not self._waiting.get(oid) and now - self._asked.get(oid, now) > LISTEN_IDLE
        ]
        return [self._listeners.pop(oid) for oid in stale]

    def close(self) -> None:
        with self._moved:
            self._closed = True
            listeners = list(self._listeners.values())
            self._listeners.clear()
        # Outside the lock: stopping joins the listeners' threads, whose callbacks take it.
        for listener in listeners:
            listener.stop()
