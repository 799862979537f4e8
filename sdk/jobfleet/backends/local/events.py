"""The local event log: completion events appended to the store's SQLite file."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from jobfleet.core.models import JobCompletedEvent

FOLLOW_PAUSE_MAX = 0.05


class LocalEventLog:
    """An EventBus whose subscribers read the log (`jobfleet events --follow`). Safe to
    share between threads (the API server's request threads do)."""

    def __init__(self, path: Path) -> None:
        # The store created the events table; the log keeps connections of its own.
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, isolation_level=None, timeout=30.0, check_same_thread=False
        )

    def publish(self, event: JobCompletedEvent) -> None:
        # The unique event id makes a second publish of the same event a no-op.
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO events (event_id, orchestration_id, data)"
                " VALUES (?, ?, ?)",
                (event.event_id, event.orchestration_id, json.dumps(event.to_json())),
            )

    def events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq", (after,)
            ).fetchall()
        for seq, data in rows:
            yield seq, JobCompletedEvent.from_json(json.loads(data))

    def follow(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        """Reads again whenever SQLite's data_version says some connection committed."""
        watch = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            seen, pause = -1, 0.002
            while True:
                version = watch.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen, pause = version, 0.002
                    for cursor, event in self.events(after=after):
                        after = cursor
                        yield cursor, event
                time.sleep(pause)
                pause = min(pause * 2, FOLLOW_PAUSE_MAX)
        finally:
            watch.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()
