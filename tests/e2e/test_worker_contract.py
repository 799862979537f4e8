"""`jobfleet worker` driven by the environment alone, as a Cloud Run task is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.models import NewInstance, NewOrchestration, Outcome, RunOptions, Status

pytestmark = pytest.mark.slow


def create(store: SqliteStore, job: str, params: list[dict[str, object]], shards: int) -> str:
    """An orchestration in the store with no workers launched."""
    oid = str(uuid.uuid4())
    options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=shards)
    instances = [NewInstance(str(uuid.uuid4()), i, i % shards, p) for i, p in enumerate(params)]
    store.create_orchestration(
        NewOrchestration(oid, job, options, {}, time.time()), [instances]
    )
    return oid


def worker(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobfleet", "worker"],
        env={**os.environ, "JOBFLEET_HOME": str(home), **env},
        capture_output=True, text=True, timeout=60,
    )


def test_each_task_runs_exactly_its_share(home: Path) -> None:
    store = SqliteStore(home / "jobfleet.db")
    oid = create(store, "maybe_fail", [{"n": n} for n in range(7)], shards=3)
    done = worker(home, JOB_NAME="maybe_fail", ORCHESTRATION_ID=oid,
                  CLOUD_RUN_TASK_INDEX="1", CLOUD_RUN_TASK_COUNT="3")
    assert done.returncode == 0, done.stderr
    finished = sorted(o.index for o in store.results(oid))
    assert finished == [1, 4]  # shard 1 of 3
    assert store.get_orchestration(oid).status is Status.IN_PROGRESS

    for index in ("0", "2"):
        worker(home, JOB_NAME="maybe_fail", ORCHESTRATION_ID=oid,
               CLOUD_RUN_TASK_INDEX=index, CLOUD_RUN_TASK_COUNT="3")
    snap = store.get_orchestration(oid)
    assert snap.status is Status.COMPLETED and snap.counts.succeeded == 7
    assert snap.event_published


def test_job_id_runs_exactly_one_instance(home: Path) -> None:
    store = SqliteStore(home / "jobfleet.db")
    oid = create(store, "maybe_fail", [{"n": n} for n in range(3)], shards=1)
    second = next(o.job_id for o in store.claim(oid, 0, "peek", limit=3, now=time.time(),
                                                lease=0.0) if o.index == 1)
    # Hand the peeked instances back, as a lost worker's would be.
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, c.owner, Status.PENDING)
        for c in store.stale_claims(oid, now=time.time() + 1)
    ])
    done = worker(home, JOB_NAME="maybe_fail", ORCHESTRATION_ID=oid, JOB_ID=second)
    assert done.returncode == 0, done.stderr
    assert [(o.index, o.job_id) for o in store.results(oid)] == [(1, second)]
    assert store.unfinished_count(oid) == 2


def test_a_worker_that_cannot_work_exits_non_zero_with_the_reason(home: Path) -> None:
    store = SqliteStore(home / "jobfleet.db")
    oid = create(store, "maybe_fail", [{"n": 1}], shards=1)
    unknown = worker(home, JOB_NAME="not_registered", ORCHESTRATION_ID=oid)
    assert unknown.returncode != 0
    assert "unknown job 'not_registered'" in unknown.stderr
    missing = worker(home, JOB_NAME="maybe_fail", ORCHESTRATION_ID="")
    assert missing.returncode != 0
    assert "ORCHESTRATION_ID" in missing.stderr
    assert store.unfinished_count(oid) == 1  # nothing was touched
