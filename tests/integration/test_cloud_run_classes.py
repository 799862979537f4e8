"""Worker classes on Cloud Run: the launcher, through the real client library, runs a job's
tasks on its class's Cloud Run job with the job's task timeout, on every launch path.

The stand-in serves the base job and the class jobs of a worker_classes.auto.tfvars.json
written by the same code as `jobfleet worker-classes` (as `jobfleet dev up` does), and
runs real `jobfleet worker` processes, which report the Cloud Run job they ran in.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobfleet.backends.gcp.cloud_run import CloudRunLauncher
from jobfleet.backends.local.events import LocalEventLog
from jobfleet.backends.local.store import SqliteStore
from jobfleet.config import Settings
from jobfleet.core import registry
from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions, Status
from jobfleet.core.registry import get_job, import_jobs
from jobfleet.core.sweep import LAUNCHED, RECOVERED, Ports, sweep_orchestration
from jobfleet.core.worker_classes import (
    ClassJob,
    read_class_jobs,
    worker_classes,
    write_tfvars,
)
from jobfleet.dev.cloud_run import CloudRunStandIn
from jobfleet.errors import ConfigurationError

pytestmark = pytest.mark.slow

PROJECT, REGION, JOB = "jobfleet-test", "europe-west1", "jobfleet-worker"
HEAVY_CLASS = "c2-m4gi-t600-r0"
SLOW_CLASS = "c1-m512mi-t2-r0"
BASE_TIMEOUT = 900.0  # the base job's own task timeout in these tests

# Jobs that note, per execution, the Cloud Run job their task ran in. A script file
# (JOBFLEET_JOBS accepts those) so that they exist for these tests alone.
CLASS_JOBS = '''
import json, os, time
from pathlib import Path
from jobfleet import Resources, job

def note(params):
    folder = Path(params["dir"])
    execution = os.environ["CLOUD_RUN_EXECUTION"]
    seen = {"job": os.environ["CLOUD_RUN_JOB"], "execution": execution, "pid": os.getpid()}
    path = folder / f"ran-{params['n']}-{execution}.json"
    path.with_suffix(".tmp").write_text(json.dumps(seen))
    path.with_suffix(".tmp").replace(path)
    if params.get("hang_once") and not (folder / "hung").exists():
        (folder / "hung").write_text("")
        time.sleep(120)
    time.sleep(params.get("seconds", 0))
    return params["n"]

@job("classes_heavy", retries=1,
     resources=Resources(cpu=2, memory="4Gi", task_timeout=600, max_retries=0))
def heavy(params):
    return note(params)

@job("classes_light", retries=0)
def light(params):
    return note(params)

@job("classes_slow", retries=0, resources=Resources(task_timeout=2, max_retries=0))
def slow(params):
    return note(params)
'''


@pytest.fixture
def jobs_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The jobs, registered in this process (the launching one) as in the workers."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    script = tmp_path / "class_jobs.py"
    script.write_text(CLASS_JOBS)
    import_jobs([str(script)])
    return script


@pytest.fixture
def store(home: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(home / "jobfleet.db")
    yield opened
    opened.close()


def tfvars_of(tmp_path: Path, *jobs: str) -> Path:
    """worker_classes.auto.tfvars.json for `jobs`, as `jobfleet worker-classes` writes it."""
    path = tmp_path / "worker_classes.auto.tfvars.json"
    write_tfvars(path, worker_classes(get_job(name) for name in jobs))
    return path


def standin(classes: list[ClassJob], **options: Any) -> CloudRunStandIn:
    return CloudRunStandIn(project=PROJECT, region=REGION, job=JOB, task_timeout=BASE_TIMEOUT,
                           classes=classes, **options)


def settings_for(home: Path, endpoint: str) -> Settings:
    return Settings(
        backend="local", home=home, jobs_modules=("sample_jobs",), project=PROJECT,
        region=REGION, cloud_run_job=JOB, cloud_run_endpoint=endpoint,
    )


def create(
    store: SqliteStore, job: str, params: list[dict[str, Any]], created_at: float | None = None,
) -> NewOrchestration:
    """An orchestration of one shard in the store, with no workers launched yet."""
    definition = get_job(job)
    options = RunOptions(retries=definition.retries, backoff=0.05, timeout=None, parallelism=1)
    new = NewOrchestration(str(uuid.uuid4()), job, options, {},
                           time.time() if created_at is None else created_at)
    instances = [NewInstance(str(uuid.uuid4()), i, 0, p) for i, p in enumerate(params)]
    store.create_orchestration(new, [instances])
    return new


def wait_until(condition: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.05)


def completed(store: SqliteStore, oid: str) -> bool:
    snap = store.get_orchestration(oid)
    return snap.status.terminal and snap.event_published


def ran_in(folder: Path, n: int, execution: str) -> dict[str, Any]:
    path = folder / f"ran-{n}-{execution.rsplit('/', 1)[-1]}.json"
    wait_until(path.exists, what=f"{path.name} appearing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_job_with_resources_runs_on_its_class_job_with_its_task_timeout(
    home: Path, store: SqliteStore, jobs_script: Path, tmp_path: Path
) -> None:
    classes = read_class_jobs(tfvars_of(tmp_path, "classes_heavy"))
    new = create(store, "classes_heavy", [{"n": 0, "dir": str(tmp_path)}])
    with standin(classes) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run.url))
        execution = launcher.launch(new, 1, [str(jobs_script)])

        wait_until(lambda: completed(store, new.id), what="the orchestration ending")
        assert store.get_orchestration(new.id).status is Status.COMPLETED
        [run] = cloud_run.executions
    class_job = f"{JOB}-{HEAVY_CLASS}"
    assert execution.startswith(f"projects/{PROJECT}/locations/{REGION}/jobs/{class_job}/")
    assert (run.job, run.task_timeout, run.timeout_override) == (class_job, 600.0, "600s")
    assert ran_in(tmp_path, 0, execution)["job"] == class_job  # CLOUD_RUN_JOB in the task


def test_a_job_without_resources_runs_on_the_base_job_with_the_base_jobs_timeout(
    home: Path, store: SqliteStore, jobs_script: Path, tmp_path: Path
) -> None:
    classes = read_class_jobs(tfvars_of(tmp_path, "classes_heavy", "classes_light"))
    assert [c.name for c in classes] == [HEAVY_CLASS]  # the light job has no class
    new = create(store, "classes_light", [{"n": 0, "dir": str(tmp_path)}])
    with standin(classes) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run.url))
        execution = launcher.launch(new, 1, [str(jobs_script)])

        wait_until(lambda: completed(store, new.id), what="the orchestration ending")
        [run] = cloud_run.executions
    assert (run.job, run.task_timeout, run.timeout_override) == (JOB, BASE_TIMEOUT, None)
    assert ran_in(tmp_path, 0, execution)["job"] == JOB


def test_the_sweeps_launch_and_recovery_executions_run_on_the_class_job(
    home: Path, store: SqliteStore, jobs_script: Path, tmp_path: Path
) -> None:
    """A kick-off that died before launching is launched by a sweep; when that execution
    ends with a shard unfinished, the recovery execution is the class's too."""
    classes = read_class_jobs(tfvars_of(tmp_path, "classes_heavy"))
    params = [{"n": 0, "dir": str(tmp_path), "hang_once": True}]
    new = create(store, "classes_heavy", params, created_at=time.time() - 600)
    bus = LocalEventLog(home / "jobfleet.db")
    class_job = f"{JOB}-{HEAVY_CLASS}"
    try:
        with standin(classes) as cloud_run:
            launcher = CloudRunLauncher(settings_for(home, cloud_run.url))
            ports = Ports(store, launcher, bus)

            assert sweep_orchestration(ports, store.get_orchestration(new.id)) == LAUNCHED
            first = store.get_orchestration(new.id).execution
            assert first is not None
            ran_in(tmp_path, 0, first)  # its task hangs on the instance
            launcher.cancel(first)  # the execution ends, its shard unfinished

            assert sweep_orchestration(ports, store.get_orchestration(new.id)) == RECOVERED
            wait_until(lambda: completed(store, new.id), what="the orchestration ending")
            snap = store.get_orchestration(new.id)
            assert snap.status is Status.COMPLETED and snap.execution != first
            runs = cloud_run.executions
    finally:
        bus.close()
    assert [(r.job, r.timeout_override) for r in runs] == [(class_job, "600s")] * 2
    assert snap.execution is not None
    assert ran_in(tmp_path, 0, snap.execution)["job"] == class_job


def test_a_class_whose_cloud_run_job_does_not_exist_fails_the_launch_naming_the_fix(
    home: Path, store: SqliteStore, jobs_script: Path
) -> None:
    new = create(store, "classes_heavy", [{"n": 0}])
    with standin([]) as cloud_run:  # Terraform has not created the class's job
        launcher = CloudRunLauncher(settings_for(home, cloud_run.url))
        with pytest.raises(ConfigurationError) as raised:
            launcher.launch(new, 1, [str(jobs_script)])
        assert cloud_run.calls["RunJob"] == 1  # not retried
        assert cloud_run.executions == []
    message = str(raised.value)
    for part in (f"jobs/{JOB}-{HEAVY_CLASS}", f"worker class {HEAVY_CLASS}", "'classes_heavy'",
                 "jobfleet worker-classes > worker_classes.auto.tfvars.json",
                 "terraform apply"):
        assert part in message


def test_a_job_this_process_does_not_know_runs_on_the_base_job_with_a_warning(
    home: Path, jobs_script: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep in a process whose JOBFLEET_JOBS lacks the job's module: its workers get
    to run it (or fail it with their own "unknown job"), rather than nothing at all."""
    new = NewOrchestration(str(uuid.uuid4()), "declared_elsewhere",
                           RunOptions(0, 0.0, None, 1), {}, 0.0)
    with standin([], run_tasks=False) as cloud_run:
        CloudRunLauncher(settings_for(home, cloud_run.url)).launch(new, 1, [])
        [run] = cloud_run.executions
    assert (run.job, run.timeout_override) == (JOB, None)
    assert "'declared_elsewhere' is not registered in this process" in caplog.text


def test_a_task_past_its_task_timeout_is_stopped_as_cloud_run_does(
    home: Path, store: SqliteStore, jobs_script: Path, tmp_path: Path
) -> None:
    """The class job was made with an hour (by hand, say); the RunJob's timeout, the job's
    declared two seconds, is what stops the task."""
    new = create(store, "classes_slow", [{"n": 0, "dir": str(tmp_path), "seconds": 60}])
    with standin([ClassJob(SLOW_CLASS, 3600, 0)]) as cloud_run:
        launcher = CloudRunLauncher(settings_for(home, cloud_run.url))
        execution = launcher.launch(new, 1, [str(jobs_script)])
        worker = ran_in(tmp_path, 0, execution)["pid"]
        started = time.monotonic()

        wait_until(lambda: not launcher.is_running(execution), timeout=20,
                   what="the execution ending")
        ended = launcher.executions_client.get_execution(name=execution)
    assert time.monotonic() - started < 15  # not the 60 s the instance sleeps
    assert (ended.failed_count, ended.succeeded_count) == (1, 0)
    assert ended.template.timeout.total_seconds() == 2
    assert not Path(f"/proc/{worker}").exists()


def test_the_stand_in_command_serves_the_classes_of_a_tfvars_file(
    home: Path, store: SqliteStore, jobs_script: Path, tmp_path: Path
) -> None:
    """What `jobfleet dev up` starts: read back through GetExecution, as a user would."""
    tfvars = tfvars_of(tmp_path, "classes_heavy", "classes_slow")
    server = subprocess.Popen(
        [sys.executable, "-m", "jobfleet.dev.cloud_run", "--project", PROJECT, "--region",
         REGION, "--job", JOB, "--task-timeout", str(BASE_TIMEOUT), "--classes", str(tfvars)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip().removeprefix("JOBFLEET_CLOUD_RUN_ENDPOINT=")
        launcher = CloudRunLauncher(settings_for(home, url))
        heavy = create(store, "classes_heavy", [{"n": 0, "dir": str(tmp_path)}])
        light = create(store, "classes_light", [{"n": 1, "dir": str(tmp_path)}])
        runs = [launcher.launch(heavy, 1, [str(jobs_script)]),
                launcher.launch(light, 1, [str(jobs_script)])]
        for new in (heavy, light):
            wait_until(lambda: completed(store, new.id), what="the orchestration ending")  # noqa: B023
        found = [launcher.executions_client.get_execution(name=name) for name in runs]
        assert [(e.job, e.template.timeout.total_seconds()) for e in found] == [
            (f"{JOB}-{HEAVY_CLASS}", 600), (JOB, BASE_TIMEOUT)]

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
        server.wait()
