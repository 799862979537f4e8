"""The embedded store's schedules and fires (the Store port's schedule half).

A fire is claimed inside one write transaction that reads the fire as it stands and
applies `may_claim`, so two schedulers on the same home, or two deliveries of the same
scheduled time, start one run between them.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from jobfleet.backends.local.connections import SqliteConnections
from jobfleet.core.schedules import Fire, Schedule, claimed_fire, may_claim, may_finish
from jobfleet.errors import ScheduleExists, UnknownSchedule


class SqliteSchedules(SqliteConnections):
    """The schedule half of SqliteStore."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._schedules: dict[str, tuple[str, Schedule]] = {}  # name: (row text, parsed)

    def save_schedule(self, schedule: Schedule, *, create: bool) -> None:
        data = json.dumps(schedule.to_json())
        with self._write() as db:
            if create:
                try:
                    db.execute("INSERT INTO schedules (name, data) VALUES (?, ?)",
                               (schedule.name, data))
                except sqlite3.IntegrityError:
                    raise ScheduleExists(schedule.name) from None
            else:
                db.execute(
                    "INSERT INTO schedules (name, data) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                    (schedule.name, data),
                )

    def get_schedule(self, name: str) -> Schedule:
        row = self._db.execute("SELECT data FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownSchedule(name)
        return Schedule.from_json(json.loads(row[0]))

    def list_schedules(self) -> list[Schedule]:
        rows = self._db.execute("SELECT name, data FROM schedules ORDER BY name").fetchall()
        listed = [self._parsed(name, data) for name, data in rows]
        if len(self._schedules) > len(listed):  # forget deleted ones
            self._schedules = {s.name: self._schedules[s.name] for s in listed}
        return listed

    def _parsed(self, name: str, data: str) -> Schedule:
        """A schedule's row, parsed once per version of its text: a local scheduler lists
        every schedule every few seconds, and parsing is most of what that costs."""
        known = self._schedules.get(name)
        if known is None or known[0] != data:
            known = self._schedules[name] = (data, Schedule.from_json(json.loads(data)))
        return known[1]

    def delete_schedule(self, name: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 1

    def claim_fire(self, fire: Fire, *, now: float) -> tuple[bool, Fire]:
        with self._write() as db:
            existing = self._fire(db, fire.schedule, fire.scheduled_at)
            if not may_claim(existing, now):
                assert existing is not None
                return False, existing
            claimed = claimed_fire(fire, existing)
            db.execute(
                "INSERT OR REPLACE INTO fires (schedule, scheduled_at, data) VALUES (?, ?, ?)",
                (fire.schedule, fire.scheduled_at, json.dumps(claimed.to_json())),
            )
            return True, claimed

    def finish_fire(self, fire: Fire) -> bool:
        with self._write() as db:
            existing = self._fire(db, fire.schedule, fire.scheduled_at)
            if not may_finish(existing, fire):
                return False
            db.execute(
                "UPDATE fires SET data = ? WHERE schedule = ? AND scheduled_at = ?",
                (json.dumps(fire.to_json()), fire.schedule, fire.scheduled_at),
            )
            return True

    def get_fire(self, schedule: str, scheduled_at: float) -> Fire | None:
        return self._fire(self._db, schedule, scheduled_at)

    def list_fires(self, schedule: str, *, limit: int = 20) -> list[Fire]:
        rows = self._db.execute(
            "SELECT data FROM fires WHERE schedule = ? ORDER BY scheduled_at DESC LIMIT ?",
            (schedule, limit),
        ).fetchall()
        return [Fire.from_json(json.loads(r[0])) for r in rows]

    @staticmethod
    def _fire(db: sqlite3.Connection, schedule: str, scheduled_at: float) -> Fire | None:
        row = db.execute(
            "SELECT data FROM fires WHERE schedule = ? AND scheduled_at = ?",
            (schedule, scheduled_at),
        ).fetchone()
        return None if row is None else Fire.from_json(json.loads(row[0]))
