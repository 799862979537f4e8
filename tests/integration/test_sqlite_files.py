"""The SQLite file is shared by every process that uses the same home."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from jobfleet.backends.local.store import SqliteStore

OPEN_AND_WRITE = """
import sys, time, uuid
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions
start = float(sys.argv[2])
while time.time() < start:
    pass
store = SqliteStore(sys.argv[1])
options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=1)
new = NewOrchestration(str(uuid.uuid4()), "noop", options, {}, time.time())
store.create_orchestration(new, [[NewInstance(str(uuid.uuid4()), 0, 0, {})]])
"""


def test_processes_creating_the_same_new_home_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        path = tmp_path / f"round-{round_}" / "jobfleet.db"
        start = time.time() + 0.5
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, str(path), str(start)],
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=60)[1] for p in processes]
        assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
        assert len(SqliteStore(path).list_orchestrations()) == 4


def test_a_home_made_by_the_previous_release_opens_and_keeps_its_history(
    tmp_path: Path,
) -> None:
    """Its tables lack the later columns, and its jobs table has no rowid; opening adds
    them and rebuilds the table, keeping every row."""
    import sqlite3

    from jobfleet.backends.local.schema import ADDED_COLUMNS, SCHEMA

    path = tmp_path / "jobfleet.db"
    old = sqlite3.connect(path)
    old_schema = SCHEMA
    for _, column, kind in ADDED_COLUMNS:
        old_schema = old_schema.replace(f",\n    {column} {kind}", "")
    old_schema = old_schema.replace("PRIMARY KEY (orchestration_id, idx)\n);",
                                    "PRIMARY KEY (orchestration_id, idx)\n) WITHOUT ROWID;")
    assert "WITHOUT ROWID" in old_schema
    # Without the indexes on columns it did not have yet.
    old_schema = re.sub(r"CREATE INDEX IF NOT EXISTS (jobs_by_change|jobs_isolated)[^;]*;", "",
                        old_schema)
    old.executescript(old_schema)
    old.execute(
        "INSERT INTO orchestrations (id, job_name, status, total, parallelism, retries,"
        " backoff, tags, created_at) VALUES ('o-1', 'report', 'InProgress', 1, 1, 0, 0, '{}', 1)"
    )
    old.execute("INSERT INTO jobs (orchestration_id, idx, job_id, shard, params)"
                " VALUES ('o-1', 0, 'j-1', 0, '{\"n\": 1}')")
    old.commit()
    assert "changed" not in {row[1] for row in old.execute("PRAGMA table_info(jobs)")}
    old.close()

    store = SqliteStore(path)
    check = sqlite3.connect(path)
    [jobs_sql] = check.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    check.close()
    assert "WITHOUT ROWID" not in jobs_sql.upper()
    claimed = store.claim("o-1", 0, "task-0", limit=1, now=time.time(), lease=30)

    assert [c.params for c in claimed] == [{"n": 1}]
    assert [(i.job_id, str(i.status)) for i in store.changes_after("o-1", after=0)] == [
        ("j-1", "InProgress")
    ]
    assert store.get_orchestration("o-1").counts.in_progress == 1
