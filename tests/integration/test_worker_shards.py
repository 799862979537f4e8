"""`jobfleet worker` on the gcp backend, against the Firestore emulator: which shard a
task of a split orchestration consumes.

Past 10,000 tasks an orchestration is several Cloud Run executions; each numbers its
tasks from 0, and JOBFLEET_SHARD_OFFSET says where its shards start. A worker must run
the instances of shard offset + CLOUD_RUN_TASK_INDEX and no other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from conftest import TESTS, Emulators
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions, Status, Success

pytestmark = pytest.mark.slow

SHARDS = 4
PER_SHARD = 3


@pytest.fixture
def project(gcp_env: Emulators) -> str:
    return f"shards-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(project: str) -> Iterator[FirestoreStore]:
    opened = FirestoreStore(project)
    yield opened
    opened.close()


def run_worker(project: str, oid: str, *, task_index: int, offset: int) -> None:
    """One Cloud Run task of an execution of two tasks, as the launcher configures it."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "JOBFLEET_BACKEND": "gcp",
        "GOOGLE_CLOUD_PROJECT": project,
        "JOBFLEET_JOBS": "sample_jobs",
        "JOB_NAME": "maybe_fail",
        "ORCHESTRATION_ID": oid,
        "CLOUD_RUN_TASK_INDEX": str(task_index),
        "CLOUD_RUN_TASK_COUNT": "2",
        "CLOUD_RUN_TASK_ATTEMPT": "0",
        "JOBFLEET_SHARD_OFFSET": str(offset),
    }
    done = subprocess.run([sys.executable, "-m", "jobfleet", "worker"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def statuses(store: FirestoreStore, oid: str) -> dict[int, Status]:
    return {i.index: i.status for i in store.list_instances(oid, limit=SHARDS * PER_SHARD)}


def test_a_worker_with_a_shard_offset_runs_exactly_the_shard_past_it(
    store: FirestoreStore, project: str
) -> None:
    oid = str(uuid.uuid4())
    options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=SHARDS)
    store.create_orchestration(
        NewOrchestration(oid, "maybe_fail", options, {}, time.time()),
        [[NewInstance(str(uuid.uuid4()), n, n % SHARDS, {"n": n})
          for n in range(SHARDS * PER_SHARD)]],
    )

    # The second execution (shards 2 and 3), its task 1: shard 3.
    run_worker(project, oid, task_index=1, offset=2)
    assert {n for n, s in statuses(store, oid).items() if s is Status.COMPLETED} == {3, 7, 11}
    assert store.unfinished_count(oid) == 9

    # Its task 0: shard 2; then the first execution's tasks: shards 0 and 1.
    run_worker(project, oid, task_index=0, offset=2)
    assert {n for n, s in statuses(store, oid).items() if s is Status.COMPLETED} == {
        2, 3, 6, 7, 10, 11,
    }
    for task_index in (0, 1):
        run_worker(project, oid, task_index=task_index, offset=0)

    assert set(statuses(store, oid).values()) == {Status.COMPLETED}
    results = {o.index: o.result for o in store.results(oid) if isinstance(o, Success)}
    assert results == {n: n * 10 for n in range(SHARDS * PER_SHARD)}
    assert all(i.attempts == 1 for i in store.list_instances(oid, limit=SHARDS * PER_SHARD))
