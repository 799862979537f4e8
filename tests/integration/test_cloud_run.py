"""The Cloud Run launcher through the real client library, over HTTP, to the stand-in.

The stand-in runs each execution's tasks as real `jobfleet worker` processes with
Cloud Run's environment; the workers use the SQLite store of the test's home. So
these tests see what a user would on Cloud Run: one RunJob per orchestration,
every instance finished, a killed task retried, a cancelled execution stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.api_core.exceptions import BadRequest

from conftest import Emulators
from jobfleet import JobFleet, LaunchFailed
from jobfleet.backends.gcp import cloud_run as launcher_module
from jobfleet.backends.gcp.cloud_run import CloudRunLauncher
from jobfleet.backends.local.store import SqliteStore
from jobfleet.config import Settings
from jobfleet.core.models import (
    WORKER_LOST,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    RunOptions,
    Status,
    Success,
)
from jobfleet.dev.cloud_run import CloudRunStandIn
from jobfleet.dev.rest_standin import Json, Reply
from jobfleet.errors import ConfigurationError
from pubsub_raw import RawSubscription

pytestmark = pytest.mark.slow

PROJECT, REGION, JOB = "jobfleet-test", "europe-west1", "jobfleet-worker"

# A job that leaves the environment its task saw where the test can read it. It is a
# script file (JOBFLEET_JOBS accepts those) so that it exists for these tests alone.
ENV_JOB = '''
import json, os, time
from pathlib import Path
from jobfleet import job

def put(path, data):  # whole or not at all: the test polls for these files
    path.with_suffix(".tmp").write_text(json.dumps(data))
    path.with_suffix(".tmp").replace(path)

@job("record_env", retries=0)
def record_env(params):
    attempt = os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "?")
    started = time.time()
    seen = {k: v for k, v in os.environ.items()
            if k.startswith(("CLOUD_RUN_", "JOBFLEET_")) or k in ("JOB_NAME", "ORCHESTRATION_ID")}
    folder = Path(params["dir"])
    put(folder / f"env-{params['n']}-attempt-{attempt}.json", {"env": seen, "pid": os.getpid()})
    if params.get("hang_first_attempt") and attempt == "0":
        time.sleep(120)
    time.sleep(params.get("seconds", 0))
    put(folder / f"ran-{params['n']}-attempt-{attempt}.json",
        {"pid": os.getpid(), "start": started, "end": time.time()})
    return params["n"]
'''


@pytest.fixture
def env_job(tmp_path: Path) -> Path:
    script = tmp_path / "env_jobs.py"
    script.write_text(ENV_JOB)
    return script


@pytest.fixture
def store(home: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(home / "jobfleet.db")
    yield opened
    opened.close()


def settings_for(home: Path, cloud_run: CloudRunStandIn) -> Settings:
    """The workers use the test's SQLite home; the Admin API is the stand-in."""
    return Settings(
        backend="local", home=home, jobs_modules=("sample_jobs",), project=PROJECT,
        region=REGION, cloud_run_job=JOB, cloud_run_endpoint=cloud_run.url,
    )


def standin(**options: Any) -> CloudRunStandIn:
    return CloudRunStandIn(project=PROJECT, region=REGION, job=JOB, **options)


class RefusingStandIn(CloudRunStandIn):
    """The stand-in, accepting the first `accepted` RunJob calls and refusing every later
    one with `status` (400: not retried), as a quota or a bad request would."""

    def __init__(self, *, accepted: int, status: int = 400, **options: Any) -> None:
        super().__init__(project=PROJECT, region=REGION, job=JOB, **options)
        self.accepted, self.status = accepted, status

    def handle(self, method: str, path: str, body: Json) -> Reply:
        run_job = method == "POST" and urlsplit(path).path.endswith(":run")
        if run_job and self.calls.get("RunJob", 0) >= self.accepted:
            self.fail_next(1, status=self.status)
        return super().handle(method, path, body)


def create(
    store: SqliteStore, job: str, params: list[dict[str, Any]], shards: int, retries: int = 0
) -> NewOrchestration:
    """An orchestration in the store with no workers launched yet."""
    options = RunOptions(retries=retries, backoff=0.05, timeout=None, parallelism=shards)
    new = NewOrchestration(str(uuid.uuid4()), job, options, {}, time.time())
    instances = [NewInstance(str(uuid.uuid4()), i, i % shards, p) for i, p in enumerate(params)]
    store.create_orchestration(new, [instances])
    return new


def settled(store: SqliteStore, oid: str, timeout: float = 90) -> OrchestrationSnapshot:
    deadline = time.monotonic() + timeout
    token = store.wake_token(oid)
    while True:
        snap = store.get_orchestration(oid)
        if snap.status.terminal and snap.event_published:
            return snap
        left = deadline - time.monotonic()
        assert left > 0, f"orchestration did not settle: {snap}"
        token = store.wait_for_wake(oid, token, min(left, 0.5))


def wait_for(path: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def stopped(launcher: CloudRunLauncher, execution: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while launcher.is_running(execution):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_an_orchestration_is_one_execution_whose_tasks_run_every_instance(
    home: Path, store: SqliteStore, env_job: Path, tmp_path: Path
) -> None:
    params = [{"n": n, "dir": str(tmp_path), "seconds": 0.4} for n in range(8)]
    new = create(store, "record_env", params, shards=4)
    with standin(parallelism=2) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        execution = launcher.launch(new, 4, [str(env_job)])

        snap = settled(store, new.id)
        assert snap.status is Status.COMPLETED
        assert snap.counts.succeeded == 8
        results = [o.result for o in store.results(new.id) if isinstance(o, Success)]
        assert sorted(results) == list(range(8))
        assert stopped(launcher, execution)
        assert cloud_run.calls["RunJob"] == 1

    assert execution.startswith(f"projects/{PROJECT}/locations/{REGION}/jobs/{JOB}/executions/")
    seen = [wait_for(tmp_path / f"env-{n}-attempt-0.json")["env"] for n in range(8)]
    for n, env in enumerate(seen):
        assert env["CLOUD_RUN_JOB"] == JOB
        assert env["CLOUD_RUN_EXECUTION"] == execution.rsplit("/", 1)[-1]
        assert env["CLOUD_RUN_TASK_INDEX"] == str(n % 4)  # instance n is in shard n % 4
        assert env["CLOUD_RUN_TASK_COUNT"] == "4"
        assert env["CLOUD_RUN_TASK_ATTEMPT"] == "0"
        assert env["ORCHESTRATION_ID"] == new.id and env["JOB_NAME"] == "record_env"
        assert env["JOBFLEET_SHARD_OFFSET"] == "0"
        assert env["JOBFLEET_JOBS"] == f"sample_jobs,{env_job}"
    ran = [wait_for(tmp_path / f"ran-{n}-attempt-0.json") for n in range(8)]
    assert most_at_once([(r["start"], r["end"]) for r in ran]) <= 2  # the job's parallelism
    assert len({r["pid"] for r in ran}) == 4  # one worker process per task


def test_a_task_killed_with_sigkill_is_run_again_as_the_next_attempt(
    home: Path, store: SqliteStore, env_job: Path, tmp_path: Path
) -> None:
    params = [{"n": 0, "dir": str(tmp_path), "hang_first_attempt": True},
              {"n": 1, "dir": str(tmp_path)}]
    new = create(store, "record_env", params, shards=1, retries=1)
    with standin(max_retries=3) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        launcher.launch(new, 1, [str(env_job)])
        first = wait_for(tmp_path / "env-0-attempt-0.json")
        os.kill(first["pid"], signal.SIGKILL)

        snap = settled(store, new.id)
        assert snap.status is Status.COMPLETED and snap.counts.succeeded == 2
        assert cloud_run.calls["RunJob"] == 1

    retried = wait_for(tmp_path / "env-0-attempt-1.json")
    assert retried["env"]["CLOUD_RUN_TASK_ATTEMPT"] == "1"
    assert retried["env"]["CLOUD_RUN_TASK_INDEX"] == "0"
    assert retried["pid"] != first["pid"]


@pytest.mark.parametrize("status", [503, 429])
def test_a_throttled_or_unavailable_admin_api_is_retried(home: Path, status: int) -> None:
    new = NewOrchestration(str(uuid.uuid4()), "greet", RunOptions(0, 0.0, None, 1), {}, 0.0)
    with standin(run_tasks=False) as cloud_run:
        cloud_run.fail_next(2, status=status)
        execution = CloudRunLauncher(settings_for(home, cloud_run)).launch(new, 1, [])
        assert cloud_run.calls["RunJob"] == 3  # two refused, the third accepted
        assert [e.name for e in cloud_run.executions] == [execution]


def test_a_missing_cloud_run_job_is_reported_at_once_not_retried(home: Path) -> None:
    new = NewOrchestration(str(uuid.uuid4()), "greet", RunOptions(0, 0.0, None, 1), {}, 0.0)
    with standin(run_tasks=False) as cloud_run:
        settings = Settings(
            backend="local", home=home, project=PROJECT, region=REGION,
            cloud_run_job="not-deployed", cloud_run_endpoint=cloud_run.url,
        )
        with pytest.raises(ConfigurationError, match=r"not-deployed.*JOBFLEET_CLOUD_RUN_JOB"):
            CloudRunLauncher(settings).launch(new, 1, [])
        assert cloud_run.calls["RunJob"] == 1
        assert cloud_run.executions == []


def test_cancel_stops_the_running_tasks(
    home: Path, store: SqliteStore, env_job: Path, tmp_path: Path
) -> None:
    params = [{"n": n, "dir": str(tmp_path), "hang_first_attempt": True} for n in range(2)]
    new = create(store, "record_env", params, shards=2)
    with standin() as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        execution = launcher.launch(new, 2, [str(env_job)])
        pids = [wait_for(tmp_path / f"env-{n}-attempt-0.json")["pid"] for n in range(2)]
        assert launcher.is_running(execution)

        launcher.cancel(execution)
        assert not launcher.is_running(execution)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        assert cloud_run.calls["CancelExecution"] == 1
        launcher.cancel(execution)  # cancelling an ended execution is harmless


def test_past_ten_thousand_tasks_an_orchestration_is_split_into_executions(home: Path) -> None:
    new = NewOrchestration(str(uuid.uuid4()), "greet", RunOptions(0, 0.0, None, 25_000), {}, 0.0)
    with standin(run_tasks=False) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        names = launcher.launch(new, 25_000, []).split(",")

        assert cloud_run.calls["RunJob"] == 3
        executions = cloud_run.executions
    assert [e.name for e in executions] == names
    assert [e.task_count for e in executions] == [10_000, 10_000, 5_000]
    assert [e.env["JOBFLEET_SHARD_OFFSET"] for e in executions] == ["0", "10000", "20000"]
    for execution in executions:
        # The environment says which orchestration; the parameter sets stay in the store.
        assert set(execution.env) == {
            "JOB_NAME", "ORCHESTRATION_ID", "JOBFLEET_SHARD_OFFSET", "JOBFLEET_JOBS",
            "JOBFLEET_BACKEND", "JOBFLEET_HOME", "JOBFLEET_LEASE_SECONDS",
        }
        assert execution.env["ORCHESTRATION_ID"] == new.id


def test_each_execution_of_a_split_orchestration_runs_the_shards_past_its_offset(
    home: Path, store: SqliteStore, env_job: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two tasks per execution: four shards are two executions, whose task 0 and 1 are
    shards 0 and 1, then 2 and 3 (JOBFLEET_SHARD_OFFSET=2); each instance runs once."""
    monkeypatch.setattr(launcher_module, "MAX_TASKS_PER_EXECUTION", 2)
    params = [{"n": n, "dir": str(tmp_path)} for n in range(8)]
    new = create(store, "record_env", params, shards=4)
    with standin() as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        execution = launcher.launch(new, 4, [str(env_job)])

        snap = settled(store, new.id)
        assert snap.status is Status.COMPLETED and snap.counts.succeeded == 8
        results = [o.result for o in store.results(new.id) if isinstance(o, Success)]
        assert sorted(results) == list(range(8))
        assert stopped(launcher, execution)
        assert cloud_run.calls["RunJob"] == 2
        executions = cloud_run.executions

    names = execution.split(",")
    assert [e.name for e in executions] == names
    assert [(e.task_count, e.env["JOBFLEET_SHARD_OFFSET"]) for e in executions] == [
        (2, "0"), (2, "2"),
    ]
    for n in range(8):
        shard = n % 4
        env = wait_for(tmp_path / f"env-{n}-attempt-0.json")["env"]
        assert env["CLOUD_RUN_EXECUTION"] == names[shard // 2].rsplit("/", 1)[-1]
        assert env["CLOUD_RUN_TASK_INDEX"] == str(shard % 2)
        assert env["CLOUD_RUN_TASK_COUNT"] == "2"
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == sorted(
        f"ran-{n}-attempt-0.json" for n in range(8)
    )


def test_when_a_later_run_job_fails_the_executions_already_started_are_cancelled(
    home: Path, store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_module, "MAX_TASKS_PER_EXECUTION", 2)
    params = [{"n": n, "dir": str(tmp_path), "seconds": 120} for n in range(6)]
    new = create(store, "sleepy", params, shards=6)  # three executions of two tasks
    with RefusingStandIn(accepted=1) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run))
        with pytest.raises(BadRequest, match="injected failure"):
            launcher.launch(new, 6, [])

        assert cloud_run.calls["RunJob"] == 2  # the second refused: no third is tried
        [first] = cloud_run.executions
        assert cloud_run.calls.get("CancelExecution", 0) == 1
        assert first.cancelled and first.tasks is not None and not first.tasks.running
        assert not launcher.is_running(first.name)
    started = [int(p.read_text()) for p in tmp_path.glob("running-*")]
    assert not any(Path(f"/proc/{pid}").exists() for pid in started)
    assert store.unfinished_count(new.id) == 6  # nothing ran to completion


def test_a_kick_off_whose_later_run_job_is_refused_ends_errored_and_leaves_nothing_running(
    gcp_env: Emulators, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the gcp backend (Firestore and Pub/Sub emulators): kick_off raises LaunchFailed,
    the orchestration ends Errored with its one event, and the execution that had
    started is cancelled instead of running its shards for nobody."""
    assert gcp_env.project == PROJECT
    monkeypatch.setattr(launcher_module, "MAX_TASKS_PER_EXECUTION", 2)
    topic = f"completed-{uuid.uuid4().hex[:10]}"
    params = [{"n": n, "dir": str(tmp_path), "seconds": 120} for n in range(6)]
    with RefusingStandIn(accepted=1) as cloud_run:
        for name, value in {
            "JOBFLEET_BACKEND": "gcp", "JOBFLEET_REGION": REGION, "JOBFLEET_CLOUD_RUN_JOB": JOB,
            "JOBFLEET_CLOUD_RUN_ENDPOINT": cloud_run.url, "JOBFLEET_TOPIC": topic,
        }.items():
            monkeypatch.setenv(name, value)
        with RawSubscription(PROJECT, topic) as raw, JobFleet() as fleet:
            with pytest.raises(LaunchFailed, match="injected failure") as raised:
                fleet.kick_off("sleepy", params, parallelism=6)

            orchestration = fleet.orchestration(raised.value.orchestration_id)
            snap = orchestration.status()
            assert snap.status is Status.ERRORED and snap.event_published
            assert (snap.counts.total, snap.counts.failed) == (6, 6)
            errors = [i.error for i in orchestration.instances()]
            assert all(e is not None and e.type == WORKER_LOST for e in errors)
            assert raw.counts() == {orchestration.id: 1}
            assert raw.messages[0].status is Status.ERRORED

            assert cloud_run.calls["RunJob"] == 2
            [first] = cloud_run.executions
            assert first.cancelled
            assert not fleet.backend.launcher.is_running(first.name)
    started = [int(p.read_text()) for p in tmp_path.glob("running-*")]
    assert not any(Path(f"/proc/{pid}").exists() for pid in started)


def test_the_stand_in_command_serves_the_api_and_leaves_no_worker_behind(
    home: Path, store: SqliteStore, env_job: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "jobfleet.dev.cloud_run", "--port", "0", "--project",
               PROJECT, "--region", REGION, "--job", JOB, "--env", "JOBFLEET_TEST_TEAM=blue"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip().removeprefix("JOBFLEET_CLOUD_RUN_ENDPOINT=")
        settings = Settings(
            backend="local", home=home, jobs_modules=("sample_jobs",), project=PROJECT,
            region=REGION, cloud_run_job=JOB, cloud_run_endpoint=url,
        )
        new = create(store, "record_env", [{"n": 0, "dir": str(tmp_path),
                                            "hang_first_attempt": True}], shards=1)
        CloudRunLauncher(settings).launch(new, 1, [str(env_job)])
        seen = wait_for(tmp_path / "env-0-attempt-0.json")
        assert seen["env"]["JOBFLEET_TEST_TEAM"] == "blue"  # the job's own env, under the overrides
        with urllib.request.urlopen(f"{url}/_standin/calls") as reply:
            assert json.load(reply) == {"RunJob": 1}

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert not Path(f"/proc/{seen['pid']}").exists()
    finally:
        server.kill()
        server.wait()
