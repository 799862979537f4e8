"""A durable subscriber of the local event log: `EventSubscriber`'s interface and Pub/Sub's
delivery rules, on a laptop.

A subscription is a name with a cursor in the store's SQLite file, so a subscriber that
stops (or dies) and starts again goes on after the last event it acknowledged: at least
once, as on Pub/Sub. Like a Pub/Sub subscription it sees the events published after it
was first created. An event is acknowledged when the handler returns. A handler that
raises gets the event again after an exponential backoff, without holding up the events
behind it; after `max_delivery_attempts` deliveries the event is dead-lettered: kept in
the `redeliveries` table with its last error (`dead_letters()`), and delivered no more.
One subscriber at a time consumes a subscription (a lock file in the home says who).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from jobfleet.backends.local.connections import SqliteConnections
from jobfleet.backends.local.schema import create_schema
from jobfleet.core.deliveries import (
    DEFAULT_DELIVERY_ATTEMPTS,
    MAX_BACKOFF,
    MIN_BACKOFF,
    backoff,
    check_backoff,
    check_delivery_attempts,
    check_name,
    decode_event,
)
from jobfleet.core.models import JobCompletedEvent
from jobfleet.errors import SubscriptionBusy

log = logging.getLogger(__name__)

BATCH = 100
PAUSE_MIN, PAUSE_MAX = 0.002, 0.05  # as `LocalEventLog.follow`
ERROR_CHARS = 2000

Handler = Callable[[JobCompletedEvent], object]


@dataclass(frozen=True)
class DeadLetter:
    """An event the handler failed on `attempts` times; `error` is the last failure."""

    seq: int
    event: JobCompletedEvent
    attempts: int
    error: str
    dead_lettered_at: float


class SubscriptionLog(SqliteConnections):
    """One subscription's cursor and redeliveries, beside the events they point into."""

    def __init__(self, path: Path | str, name: str) -> None:
        super().__init__(path)
        self.name = name
        with self._write() as db:
            create_schema(db)
            db.execute(
                "INSERT OR IGNORE INTO subscriptions (name, cursor, created_at)"
                " SELECT ?, COALESCE(MAX(seq), 0), ? FROM events",
                (name, time.time()),
            )
        self.cursor: int = self._db.execute(
            "SELECT cursor FROM subscriptions WHERE name = ?", (name,)
        ).fetchone()[0]

    def data_version(self) -> int:
        return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def fresh(self) -> list[tuple[int, JobCompletedEvent]]:
        rows = self._db.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.cursor, BATCH),
        ).fetchall()
        return [(seq, decode_event(data)) for seq, data in rows]

    def due(self, now: float) -> list[tuple[int, int, JobCompletedEvent]]:
        rows = self._db.execute(
            "SELECT r.seq, r.attempts, e.data FROM redeliveries r JOIN events e USING (seq)"
            " WHERE r.subscription = ? AND r.dead_lettered_at IS NULL AND r.not_before <= ?"
            " ORDER BY r.not_before LIMIT ?",
            (self.name, now, BATCH),
        ).fetchall()
        return [(seq, attempts, decode_event(data)) for seq, attempts, data in rows]

    def next_due(self) -> float | None:
        found = self._db.execute(
            "SELECT MIN(not_before) FROM redeliveries"
            " WHERE subscription = ? AND dead_lettered_at IS NULL",
            (self.name,),
        ).fetchone()[0]
        return None if found is None else float(found)

    def acked(self, seq: int, attempts: int) -> None:
        with self._write() as db:
            if attempts == 1:
                self._advance(db, seq)
            else:
                db.execute(
                    "DELETE FROM redeliveries WHERE subscription = ? AND seq = ?",
                    (self.name, seq),
                )

    def failed(self, seq: int, attempts: int, error: str, retry_at: float | None) -> None:
        """A failed delivery: due again at `retry_at`, or dead-lettered when None."""
        dead_at = time.time() if retry_at is None else None
        with self._write() as db:
            db.execute(
                "INSERT INTO redeliveries"
                " (subscription, seq, attempts, not_before, error, dead_lettered_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (subscription, seq) DO UPDATE SET"
                " attempts = excluded.attempts, not_before = excluded.not_before,"
                " error = excluded.error, dead_lettered_at = excluded.dead_lettered_at",
                (self.name, seq, attempts, retry_at or 0.0, error, dead_at),
            )
            if attempts == 1:
                self._advance(db, seq)

    def _advance(self, db: sqlite3.Connection, seq: int) -> None:
        db.execute(
            "UPDATE subscriptions SET cursor = ? WHERE name = ?", (seq, self.name)
        )
        self.cursor = seq

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT r.seq, e.data, r.attempts, r.error, r.dead_lettered_at"
            " FROM redeliveries r JOIN events e USING (seq)"
            " WHERE r.subscription = ? AND r.dead_lettered_at IS NOT NULL ORDER BY r.seq",
            (self.name,),
        ).fetchall()
        return [
            DeadLetter(seq, decode_event(data), attempts, error, at)
            for seq, data, attempts, error, at in rows
        ]


class LocalEventSubscriber:
    """Streams a local subscription's JobCompletedEvents to `handler`, in a thread of its
    own: `with LocalEventSubscriber(...) as stage: stage.run()`, as `EventSubscriber`.

    `max_delivery_attempts=None` redelivers a failing event for ever (as a Pub/Sub
    subscription without a dead-letter policy); the backoff runs from `min_backoff` to
    `max_backoff` seconds, as the subscription's retry policy does on Pub/Sub.
    """

    def __init__(
        self,
        path: Path | str,
        subscription: str,
        handler: Handler,
        *,
        max_delivery_attempts: int | None = DEFAULT_DELIVERY_ATTEMPTS,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.subscription = check_name(subscription)
        self.max_delivery_attempts = (
            None if max_delivery_attempts is None
            else check_delivery_attempts(max_delivery_attempts)
        )
        self.min_backoff, self.max_backoff = check_backoff(min_backoff, max_backoff)
        self.handled = 0
        self.duplicates = 0  # the log holds each event once; kept for EventSubscriber's shape
        self.failures = 0
        self.dead_lettered = 0
        self._handler = handler
        self._path = Path(path)
        self._lock_file: IO[bytes] | None = None
        self._log: SubscriptionLog | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        SubscriptionLog(self._path, subscription).close()  # created now, as ensure_subscription

    def start(self) -> LocalEventSubscriber:
        self._lock_file = self._take_lock()
        try:
            self._log = SubscriptionLog(self._path, self.subscription)
        except BaseException:
            self._release_lock()
            raise
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"jobfleet-subscriber-{self.subscription}", daemon=True
        )
        self._thread.start()
        return self

    def run(self, timeout: float | None = None) -> None:
        """Block while the subscriber runs; re-raise what ended it. Returns on timeout."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.check()

    def check(self) -> None:
        """Raise the error that ended the subscriber, if it ended on its own."""
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop delivering, let a running handler finish (its ack is written), close."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._release_lock()

    def dead_letters(self) -> list[DeadLetter]:
        """The events this subscription gave up on, oldest first."""
        with contextlib.closing(SubscriptionLog(self._path, self.subscription)) as found:
            return found.dead_letters()

    def __enter__(self) -> LocalEventSubscriber:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _take_lock(self) -> IO[bytes]:
        folder = self._path.parent / "subscriptions"
        folder.mkdir(parents=True, exist_ok=True)
        held = (folder / f"{self.subscription}.lock").open("ab")
        try:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.close()
            raise SubscriptionBusy(self.subscription) from None
        held.write(f"{os.getpid()}\n".encode())
        held.flush()
        return held

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    def _loop(self) -> None:
        assert self._log is not None
        store = self._log
        try:
            seen, pause, next_due = -1, PAUSE_MIN, store.next_due()
            while not self._stopping.is_set():
                worked = False
                version = store.data_version()
                if version != seen:
                    seen = version
                    for seq, event in store.fresh():
                        if self._stopping.is_set():
                            return
                        self._deliver(store, seq, event, 1)
                        worked = True
                    next_due = store.next_due()
                now = time.time()
                if next_due is not None and next_due <= now:
                    for seq, attempts, event in store.due(now):
                        if self._stopping.is_set():
                            return
                        self._deliver(store, seq, event, attempts + 1)
                    worked = True
                    next_due = store.next_due()
                if worked:
                    seen, pause = -1, PAUSE_MIN  # a full batch may have more behind it
                    continue
                wait = pause if next_due is None else min(pause, max(next_due - now, 0.0))
                self._stopping.wait(wait)
                pause = min(pause * 2, PAUSE_MAX)
        except BaseException as exc:
            log.exception("local subscriber %s stopped", self.subscription)
            self._error = exc

    def _deliver(
        self, store: SubscriptionLog, seq: int, event: JobCompletedEvent, attempts: int
    ) -> None:
        try:
            self._handler(event)
        except Exception as exc:
            self.failures += 1
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            limit = self.max_delivery_attempts
            if limit is not None and attempts >= limit:
                log.error(
                    "handler failed on event %s %d times; dead-lettered in subscription %s",
                    event.event_id, attempts, self.subscription, exc_info=True,
                )
                store.failed(seq, attempts, error, None)
                self.dead_lettered += 1
                return
            delay = backoff(attempts, self.min_backoff, self.max_backoff)
            log.warning(
                "handler failed on event %s (delivery %d); it is delivered again in %.1f s",
                event.event_id, attempts, delay, exc_info=True,
            )
            store.failed(seq, attempts, error, time.time() + delay)
            return
        store.acked(seq, attempts)
        self.handled += 1
