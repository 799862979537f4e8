"""Change tokens of the Firestore store: pushed by listeners, never polled.

`watch()` and the API's server-sent events wait on these. A listener per watched
orchestration, on its document and on its shard counters (which change with every
instance that moves); the store's own writes bump the token at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from google.cloud import firestore

from jobfleet.backends.gcp.firestore_documents import SHARDS
from jobfleet.errors import JobfleetError

LISTEN_TIMEOUT = 10.0  # for a new listener's first snapshot


class OrchestrationListener:
    """The two listeners of one orchestration: on its document, and on its shard counters,
    which change with every instance that moves."""

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
    """Change tokens per orchestration, moved by Firestore listeners (pushed, no polling)
    and by this store's own writes (so that those show at once)."""

    def __init__(self, orchestrations: firestore.CollectionReference) -> None:
        self._orchestrations = orchestrations
        self._moved = threading.Condition()
        self._versions: dict[str, int] = {}
        self._listeners: dict[str, OrchestrationListener] = {}
        self._closed = False

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
            self._moved.wait_for(lambda: self._versions[orchestration_id] != token, timeout)
            return self._versions[orchestration_id]

    def _listen(self, orchestration_id: str) -> None:
        """Listen from first use until close: whoever watches an orchestration asks again."""
        with self._moved:
            if self._closed:
                raise JobfleetError("this FirestoreStore is closed; open a new one")
            listener = self._listeners.get(orchestration_id)
            if listener is None:
                self._versions[orchestration_id] = 0
                # Starting a listener does not wait for it, so it may happen under the lock.
                listener = OrchestrationListener(
                    self._orchestrations.document(orchestration_id),
                    partial(self.bump, orchestration_id),
                )
                self._listeners[orchestration_id] = listener
        listener.wait_ready()

    def close(self) -> None:
        with self._moved:
            self._closed = True
            listeners = list(self._listeners.values())
            self._listeners.clear()
        # Outside the lock: stopping joins the listeners' threads, whose callbacks take it.
        for listener in listeners:
            listener.stop()
