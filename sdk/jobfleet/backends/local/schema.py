"""The embedded store's schema: it mirrors the Firestore layout (docs/design.md, State), an
orchestrations table and a jobs table keyed by (orchestration_id, index), the schedules
and their fires keyed by (schedule, scheduled time), webhook deliveries keyed by
(orchestration, URL), plus the local event log's table and its subscribers' cursors and
redeliveries (`subscriber.py`)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from jobfleet.core.models import ErrorInfo, JobInstance, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS orchestrations (
    id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    status TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    parallelism INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    backoff REAL NOT NULL,
    timeout REAL,
    tags TEXT NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    execution TEXT,
    event_published INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    launch_progress INTEGER NOT NULL DEFAULT 0,
    publish_claim REAL,
    traceparent TEXT,
    parent TEXT,
    next_stages TEXT,
    next_note TEXT NOT NULL DEFAULT '',
    webhooks TEXT
);
CREATE INDEX IF NOT EXISTS orchestrations_by_time ON orchestrations (created_at);
CREATE INDEX IF NOT EXISTS orchestrations_unsettled ON orchestrations (created_at)
    WHERE status = 'InProgress' OR event_published = 0;
CREATE TABLE IF NOT EXISTS jobs (
    orchestration_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'Pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    changed INTEGER NOT NULL DEFAULT 0,
    isolated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (orchestration_id, idx)
);
CREATE INDEX IF NOT EXISTS jobs_by_shard ON jobs (orchestration_id, shard, status, not_before);
CREATE INDEX IF NOT EXISTS jobs_isolated ON jobs (orchestration_id, shard, not_before)
    WHERE isolated = 1 AND status = 'Pending';
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_change ON jobs (orchestration_id, changed);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fires (
    schedule TEXT NOT NULL,
    scheduled_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (schedule, scheduled_at)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    orchestration_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    next_attempt_at REAL,
    data TEXT NOT NULL,
    PRIMARY KEY (orchestration_id, url)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    orchestration_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS redeliveries (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    not_before REAL NOT NULL,
    error TEXT NOT NULL,
    dead_lettered_at REAL,
    PRIMARY KEY (subscription, seq)
);
"""

# Columns added after the first release: a home made by an older jobfleet gains them.
ADDED_COLUMNS = (
    ("orchestrations", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("orchestrations", "launch_progress", "INTEGER NOT NULL DEFAULT 0"),
    ("orchestrations", "publish_claim", "REAL"),
    ("orchestrations", "traceparent", "TEXT"),
    ("orchestrations", "parent", "TEXT"),
    ("orchestrations", "next_stages", "TEXT"),
    ("orchestrations", "next_note", "TEXT NOT NULL DEFAULT ''"),
    ("orchestrations", "webhooks", "TEXT"),
    ("jobs", "changed", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "isolated", "INTEGER NOT NULL DEFAULT 0"),
)
ORCHESTRATION_COLUMNS = (
    "id, job_name, status, total, parallelism, retries, backoff, timeout, tags, succeeded,"
    " failed, cancelled, created_at, finished_at, execution, event_published, launch_progress,"
    " traceparent, parent, next_stages, next_note, webhooks"
)
INSTANCE_COLUMNS = (
    "job_id, idx, status, attempts, params, result, error, started_at, finished_at, changed"
)
# The next change stamp of an orchestration's instances, bumped once per statement (its
# first parameter is the orchestration id). Writes are serialized (BEGIN IMMEDIATE), so
# stamps follow commit order and `changes_after` readers need no margin.
STAMP = "(SELECT version FROM orchestrations WHERE id = ?)"


def create_schema(db: sqlite3.Connection) -> None:
    """Within the caller's write transaction; a home made by an older jobfleet is
    brought up to date."""
    for table, column, kind in ADDED_COLUMNS:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if have and column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    _give_jobs_a_rowid(db)
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def next_stamp(db: sqlite3.Connection, orchestration_id: str) -> None:
    db.execute("UPDATE orchestrations SET version = version + 1 WHERE id = ?", (orchestration_id,))


def instance_of(row: tuple[Any, ...]) -> JobInstance:
    job_id, idx, status, attempts, params, result, error, started, finished, changed = row
    return JobInstance(
        job_id=job_id,
        index=idx,
        status=Status(status),
        attempts=attempts,
        params=json.loads(params),
        result=None if result is None else json.loads(result),
        error=None if error is None else ErrorInfo.from_json(json.loads(error)),
        started_at=started,
        finished_at=finished,
        changed=float(changed),
    )


def _give_jobs_a_rowid(db: sqlite3.Connection) -> None:
    """Releases before 0.2 kept `jobs` WITHOUT ROWID: rows live in the primary key's
    b-tree, so one oversized parameter set made every later insert beside it slow (and
    held the write lock for minutes). A rowid table keeps large rows in overflow pages."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")
    found = row.fetchone()
    if found is None or "WITHOUT ROWID" not in found[0].upper():
        return
    columns = ", ".join(r[1] for r in db.execute("PRAGMA table_info(jobs)"))
    db.execute("ALTER TABLE jobs RENAME TO jobs_without_rowid")
    jobs_table = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS jobs"):]
    db.execute(jobs_table[: jobs_table.index(";")])
    db.execute(f"INSERT INTO jobs ({columns}) SELECT {columns} FROM jobs_without_rowid")
    db.execute("DROP TABLE jobs_without_rowid")
