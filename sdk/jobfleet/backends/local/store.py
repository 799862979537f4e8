"""The embedded store: one SQLite file (WAL) shared by every process using the same home.

The schema (schema.py) mirrors the Firestore layout. Writes take the database lock up front
(`BEGIN IMMEDIATE`, connections.py) so that concurrent workers queue instead of deadlocking.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jobfleet.backends.local.lease_files import LeaseFiles
from jobfleet.backends.local.schedule_store import SqliteSchedules
from jobfleet.backends.local.schema import (
    INSTANCE_COLUMNS,
    ORCHESTRATION_COLUMNS,
    STAMP,
    create_schema,
    instance_of,
    next_stamp,
)
from jobfleet.backends.local.webhook_store import SqliteWebhooks
from jobfleet.core.models import (
    TERMINAL,
    ClaimedInstance,
    Counts,
    ErrorInfo,
    Failure,
    JobInstance,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    RunOptions,
    Status,
    Success,
    ended,
)
from jobfleet.core.states import UNFINISHED, in_order
from jobfleet.errors import InvalidParams, UnknownOrchestration

_DONE_COLUMN = {Status.COMPLETED: "succeeded", Status.ERRORED: "failed"}


def _sql(*statuses: Status) -> str:
    """Status values as SQL literals: one, or an `IN` list in their declared order."""
    if len(statuses) == 1:
        return f"'{statuses[0].value}'"
    return "(" + ", ".join(f"'{value}'" for value in in_order(frozenset(statuses))) + ")"


# The statuses of the core state machine (core/states.py) as the statements' conditions.
# Written into the SQL rather than bound: SQLite uses a partial index only for literals.
PENDING, IN_PROGRESS = _sql(Status.PENDING), _sql(Status.IN_PROGRESS)
ERRORED, CANCELLED = _sql(Status.ERRORED), _sql(Status.CANCELLED)
UNFINISHED_SQL = _sql(*UNFINISHED)  # what a cancel or a failed shard ends (`sources`)
ENDED = _sql(*TERMINAL)
# A reaper that waited this long for the write lock saw leases expire only because no
# heartbeat could be written either: it reaps nothing until the heartbeats are through.
LOCK_BLACKOUT = 1.0


class SqliteStore(SqliteSchedules, SqliteWebhooks):
    """Safe to share between threads: each thread gets connections of its own."""

    stamp_margin = 0.0  # `changed` is a per-orchestration commit sequence

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._blackout_until = 0.0
        self._leases = LeaseFiles(self.path.parent / "leases")
        with self._write() as db:
            create_schema(db)


    # -- orchestrations ---------------------------------------------------------

    def create_orchestration(
        self, orchestration: NewOrchestration, batches: Iterable[Sequence[NewInstance]]
    ) -> int:
        o = orchestration
        total = 0
        with self._write() as db:
            db.execute(
                "INSERT INTO orchestrations (id, job_name, status, parallelism, retries, backoff,"
                " timeout, tags, created_at, traceparent, parent, next_stages, webhooks)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    o.id, o.job_name, Status.IN_PROGRESS.value, o.options.parallelism,
                    o.options.retries, o.options.backoff, o.options.timeout,
                    json.dumps(o.tags), o.created_at, o.traceparent, o.parent,
                    None if o.then is None else json.dumps(o.then),
                    json.dumps(o.webhooks) if o.webhooks else None,
                ),
            )
            for batch in batches:
                db.executemany(
                    "INSERT INTO jobs (orchestration_id, idx, job_id, shard, params)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(o.id, i.index, i.job_id, i.shard, json.dumps(i.params)) for i in batch],
                )
                total += len(batch)
            if total == 0:
                raise InvalidParams("no parameter sets: give at least one")
            db.execute("UPDATE orchestrations SET total = ? WHERE id = ?", (total, o.id))
        return total

    def get_orchestration(self, orchestration_id: str) -> OrchestrationSnapshot:
        row = self._db.execute(
            f"SELECT {ORCHESTRATION_COLUMNS} FROM orchestrations WHERE id = ?",
            (orchestration_id,),
        ).fetchone()
        if row is None:
            raise UnknownOrchestration(orchestration_id)
        return self._snapshot(row)

    def list_orchestrations(
        self,
        *,
        limit: int = 50,
        job_name: str | None = None,
        status: Status | None = None,
        tag: tuple[str, str] | None = None,
        before: str | None = None,
    ) -> list[OrchestrationSnapshot]:
        where: list[str] = []
        args: list[Any] = []
        if job_name is not None:
            where.append("job_name = ?")
            args.append(job_name)
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(tags) WHERE key = ? AND value = ?)")
            args.extend(tag)
        if before is not None:
            last = self.get_orchestration(before)
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args.extend([last.created_at, last.created_at, last.id])
        sql = f"SELECT {ORCHESTRATION_COLUMNS} FROM orchestrations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [self._snapshot(r) for r in rows]

    def _snapshot(self, row: tuple[Any, ...]) -> OrchestrationSnapshot:
        (oid, job_name, status, total, parallelism, retries, backoff, timeout, tags,
         succeeded, failed, cancelled, created_at, finished_at, execution, published,
         launch_progress, traceparent, parent, then, next_note, webhooks) = row
        in_progress = 0
        if status == Status.IN_PROGRESS.value:
            in_progress = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE orchestration_id = ? AND status = ?",
                (oid, Status.IN_PROGRESS.value),
            ).fetchone()[0]
        return OrchestrationSnapshot(
            id=oid,
            job_name=job_name,
            status=Status(status),
            counts=Counts.from_sums(
                Status(status), total=total, in_progress=in_progress, succeeded=succeeded,
                failed=failed, cancelled=cancelled,
            ),
            options=RunOptions(
                retries=retries, backoff=backoff, timeout=timeout, parallelism=parallelism
            ),
            tags=json.loads(tags),
            created_at=created_at,
            finished_at=finished_at,
            execution=execution,
            event_published=bool(published),
            launch_progress=launch_progress,
            traceparent=traceparent,
            parent=parent,
            then=None if then is None else json.loads(then),
            next_note=next_note,
            webhooks=json.loads(webhooks) if webhooks else [],
        )

    def replace_execution(
        self, orchestration_id: str, expected: str | None, execution: str, *, progress: int = 0
    ) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE orchestrations SET execution = ?, launch_progress = ?"
                    " WHERE id = ? AND execution IS ?",
                    (execution, progress, orchestration_id, expected),
                ).rowcount
                == 1
            )

    def unsettled_orchestrations(self) -> list[OrchestrationSnapshot]:
        rows = self._db.execute(
            f"SELECT {ORCHESTRATION_COLUMNS} FROM orchestrations"
            f" WHERE status = {IN_PROGRESS} OR event_published = 0 ORDER BY created_at"
        ).fetchall()
        return [self._snapshot(r) for r in rows]

    def progress(self, orchestration_id: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(attempts), 0) + COALESCE(SUM(isolated), 0)"
            f" + COALESCE(SUM(status IN {ENDED}), 0)"
            " FROM jobs WHERE orchestration_id = ?",
            (orchestration_id,),
        ).fetchone()
        return int(row[0])

    def unfinished_shards(self, orchestration_id: str) -> list[int]:
        rows = self._db.execute(
            "SELECT DISTINCT shard FROM jobs WHERE orchestration_id = ?"
            f" AND status IN {UNFINISHED_SQL} ORDER BY shard",
            (orchestration_id,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- the worker's side ----------------------------------------------------------

    def claim(
        self, orchestration_id: str, shard: int, owner: str, *, limit: int, now: float,
        lease: float, job_id: str | None = None,
    ) -> list[ClaimedInstance]:
        """An isolated instance first, alone (a partial index finds one at once); else a
        batch in (not_before, index) order, which rowids follow within an orchestration,
        read from the index alone."""
        which, key = ("shard = ?", shard) if job_id is None else ("job_id = ?", job_id)
        ready = f"orchestration_id = ? AND {which} AND status = {PENDING} AND not_before <= ?"
        with self._write() as db:
            chosen = [r[0] for r in db.execute(
                f"SELECT rowid FROM jobs INDEXED BY jobs_isolated WHERE {ready}"
                " AND isolated = 1 LIMIT 1",
                (orchestration_id, key, now),
            )] or [r[0] for r in db.execute(
                f"SELECT rowid FROM jobs WHERE {ready} ORDER BY not_before, rowid LIMIT ?",
                (orchestration_id, key, now, limit),
            )]
            if not chosen:
                return []
            next_stamp(db, orchestration_id)
            rows = db.execute(
                f"UPDATE jobs SET status = {IN_PROGRESS}, attempts = attempts + 1, owner = ?,"
                f" lease_until = ?, started_at = ?, changed = {STAMP}"
                f" WHERE rowid IN ({', '.join('?' * len(chosen))})"
                " RETURNING job_id, idx, params, attempts, isolated",
                (owner, now + lease, now, orchestration_id, *chosen),
            ).fetchall()
        rows.sort(key=lambda r: r[1])
        return [
            ClaimedInstance(r[0], r[1], json.loads(r[2]), r[3], owner, isolated=bool(r[4]))
            for r in rows
        ]

    def heartbeat(self, owner: str, *, now: float, lease: float) -> int:
        """The owner's lease file first (lease_files.py), then the rows it holds."""
        self._leases.renew(owner, now + lease)
        with self._write() as db:
            return db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND status = {IN_PROGRESS}",
                (now + lease, owner),
            ).rowcount

    def stale_claims(
        self, orchestration_id: str, *, now: float, shard: int | None = None
    ) -> list[ClaimedInstance]:
        """Read under the write lock: had another process held it long enough for leases
        to expire, no heartbeat could land either, so nothing counts as expired until
        they have (LOCK_BLACKOUT)."""
        sql = (
            "SELECT job_id, idx, params, attempts, owner, shard FROM jobs"
            f" WHERE orchestration_id = ? AND status = {IN_PROGRESS} AND "
        )
        waited = self._begin()
        try:
            if shard is not None:
                rows = self._db.execute(
                    sql + "(lease_until < ? OR shard = ?)", (orchestration_id, now, shard)
                ).fetchall()
            elif waited < LOCK_BLACKOUT and time.monotonic() >= self._blackout_until:
                rows = self._db.execute(
                    sql + "lease_until < ?", (orchestration_id, now)
                ).fetchall()
            else:
                rows = []
                self._blackout_until = max(
                    self._blackout_until, time.monotonic() + LOCK_BLACKOUT + waited / 10
                )
        finally:
            self._db.execute("COMMIT")
        alive = {owner: self._leases.until(owner) >= now for owner in {r[4] for r in rows}}
        return [
            ClaimedInstance(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows
            if r[5] == shard or not alive[r[4]]
        ]

    def record_outcomes(self, orchestration_id: str, outcomes: Sequence[Outcome]) -> int:
        now = time.time()
        applied = 0
        with self._write() as db:
            next_stamp(db, orchestration_id)
            for status in (Status.COMPLETED, Status.ERRORED, Status.PENDING):
                rows = [
                    (
                        status.value,
                        None if o.result is None else json.dumps(o.result),
                        None if o.error is None else json.dumps(o.error.to_json()),
                        o.not_before,
                        None if status is Status.PENDING else now,
                        int(o.refund), int(o.isolate),
                        orchestration_id, orchestration_id, o.index, o.owner,
                    )
                    for o in outcomes if o.status is status
                ]
                if not rows:
                    continue
                cur = db.executemany(
                    "UPDATE jobs SET status = ?, result = ?, error = ?, not_before = ?,"
                    " finished_at = ?, attempts = attempts - ?, isolated = MAX(isolated, ?),"
                    f" owner = NULL, lease_until = NULL, changed = {STAMP}"
                    " WHERE orchestration_id = ? AND idx = ? AND owner = ?"
                    f" AND status = {IN_PROGRESS}",
                    rows,
                )
                applied += cur.rowcount
                column = _DONE_COLUMN.get(status)
                if column and cur.rowcount:
                    db.execute(
                        f"UPDATE orchestrations SET {column} = {column} + ? WHERE id = ?",
                        (cur.rowcount, orchestration_id),
                    )
        return applied

    def unfinished_count(self, orchestration_id: str, shard: int | None = None) -> int:
        sql = (
            "SELECT COUNT(*) FROM jobs WHERE orchestration_id = ?"
            f" AND status IN {UNFINISHED_SQL}"
        )
        if shard is None:
            return int(self._db.execute(sql, (orchestration_id,)).fetchone()[0])
        row = self._db.execute(sql + " AND shard = ?", (orchestration_id, shard)).fetchone()
        return int(row[0])

    def next_ready_at(self, orchestration_id: str, shard: int) -> float | None:
        row = self._db.execute(
            "SELECT MIN(not_before) FROM jobs WHERE orchestration_id = ? AND shard = ?"
            f" AND status = {PENDING}",
            (orchestration_id, shard),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def fail_unfinished(
        self, orchestration_id: str, shard: int, error: ErrorInfo, *, now: float
    ) -> int:
        with self._write() as db:
            next_stamp(db, orchestration_id)
            failed = db.execute(
                f"UPDATE jobs SET status = {ERRORED}, error = ?, finished_at = ?, owner = NULL,"
                f" lease_until = NULL, changed = {STAMP} WHERE orchestration_id = ?"
                f" AND shard = ? AND status IN {UNFINISHED_SQL}",
                (json.dumps(error.to_json()), now, orchestration_id, orchestration_id, shard),
            ).rowcount
            if failed:
                db.execute(
                    "UPDATE orchestrations SET failed = failed + ? WHERE id = ?",
                    (failed, orchestration_id),
                )
        return failed

    # -- ending -------------------------------------------------------------------

    def cancel(self, orchestration_id: str, *, now: float) -> bool:
        with self._write() as db:
            row = db.execute(
                "SELECT status FROM orchestrations WHERE id = ?", (orchestration_id,)
            ).fetchone()
            if row is None:
                raise UnknownOrchestration(orchestration_id)
            if row[0] != Status.IN_PROGRESS.value:
                return False
            next_stamp(db, orchestration_id)
            cancelled = db.execute(
                f"UPDATE jobs SET status = {CANCELLED}, finished_at = ?, owner = NULL,"
                f" lease_until = NULL, changed = {STAMP} WHERE orchestration_id = ?"
                f" AND status IN {UNFINISHED_SQL}",
                (now, orchestration_id, orchestration_id),
            ).rowcount
            db.execute(
                f"UPDATE orchestrations SET cancelled = cancelled + ?, status = {CANCELLED},"
                " finished_at = ? WHERE id = ?",
                (cancelled, now, orchestration_id),
            )
        return True

    def finish_orchestration(self, orchestration_id: str, status: Status, now: float) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE orchestrations SET status = ?, finished_at = ?"
                    f" WHERE id = ? AND status = {IN_PROGRESS}",
                    (status.value, now, orchestration_id),
                ).rowcount
                == 1
            )

    def claim_publish(self, orchestration_id: str, *, now: float, hold: float) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE orchestrations SET publish_claim = ? WHERE id = ?"
                    f" AND event_published = 0 AND status != {IN_PROGRESS}"
                    " AND (publish_claim IS NULL OR publish_claim < ?)",
                    (now + hold, orchestration_id, now),
                ).rowcount
                == 1
            )

    def release_publish(self, orchestration_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE orchestrations SET publish_claim = NULL WHERE id = ?", (orchestration_id,)
            )

    def note_next(self, orchestration_id: str, note: str) -> None:
        with self._write() as db:
            db.execute("UPDATE orchestrations SET next_note = ? WHERE id = ?",
                       (note, orchestration_id))

    def mark_event_published(self, orchestration_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE orchestrations SET event_published = 1 WHERE id = ?", (orchestration_id,)
            )

    def results(self, orchestration_id: str) -> Iterator[Success | Failure]:
        self.get_orchestration(orchestration_id)  # raises UnknownOrchestration
        cur = self._db.execute(
            "SELECT job_id, idx, params, status, result, error, attempts FROM jobs"
            f" WHERE orchestration_id = ? AND status IN {ENDED}"
            " ORDER BY idx",
            (orchestration_id,),
        )
        for job_id, idx, params, status, result, error, attempts in cur:
            yield ended(
                job_id, idx, json.loads(params), Status(status),
                result=json.loads(result or "null"),
                error=ErrorInfo.from_json(json.loads(error)) if error else None,
                attempts=attempts,
            )

    # -- instances and their changes ---------------------------------------------------

    def list_instances(
        self,
        orchestration_id: str,
        *,
        status: Status | None = None,
        after_index: int = -1,
        limit: int = 100,
    ) -> list[JobInstance]:
        self.get_orchestration(orchestration_id)  # raises UnknownOrchestration
        sql = f"SELECT {INSTANCE_COLUMNS} FROM jobs WHERE orchestration_id = ? AND idx > ?"
        args: list[Any] = [orchestration_id, after_index]
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        rows = self._db.execute(sql + " ORDER BY idx LIMIT ?", [*args, limit]).fetchall()
        return [instance_of(r) for r in rows]

    def changes_after(self, orchestration_id: str, *, after: float) -> list[JobInstance]:
        rows = self._db.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM jobs WHERE orchestration_id = ? AND changed > ?"
            " ORDER BY changed, idx",
            (orchestration_id, after),
        ).fetchall()
        return [instance_of(r) for r in rows]

    def change_stamp(self, orchestration_id: str) -> float:
        row = self._db.execute(
            "SELECT version FROM orchestrations WHERE id = ?", (orchestration_id,)
        ).fetchone()
        if row is None:
            raise UnknownOrchestration(orchestration_id)
        return float(row[0])

    # -- changes ------------------------------------------------------------------

    def wake_token(self, orchestration_id: str) -> int:
        """SQLite's data_version moves whenever another connection commits."""
        return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def wait_for_wake(self, orchestration_id: str, token: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        pause = 0.002
        while True:
            current = self.wake_token(orchestration_id)
            if current != token or time.monotonic() >= deadline:
                return current
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.02)

