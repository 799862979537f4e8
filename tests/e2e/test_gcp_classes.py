"""`jobfleet dev up` serves the worker classes of the jobs modules it is started with, as
Terraform would create them: a job that declares Resources, kicked off with the gcp
backend, runs on its class's Cloud Run job with the job's task timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, Emulators
from jobfleet import JobFleet, Status
from jobfleet.backends.gcp.cloud_run import CloudRunLauncher
from jobfleet.core.worker_classes import TFVARS_FILE

pytestmark = pytest.mark.slow

CLASS = "c2-m4gi-t900-r1"
JOBS = '''
import os
from jobfleet import Resources, job

@job("e2e_heavy", retries=0, resources=Resources(cpu=2, memory="4Gi", task_timeout=900,
                                                 max_retries=1))
def heavy(params):
    return {"n": params["n"], "cloud_run_job": os.environ["CLOUD_RUN_JOB"],
            "execution": os.environ["CLOUD_RUN_EXECUTION"]}
'''


@pytest.fixture
def stack(
    emulators: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """`jobfleet dev up` with JOBFLEET_JOBS naming the jobs file; its exports set in this
    process; then `dev down`."""
    jobs = tmp_path / "heavy_jobs.py"
    jobs.write_text(JOBS)
    home = tmp_path / "home"
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **emulators.environment(), "JOBFLEET_HOME": str(home),
           "JOBFLEET_JOBS": str(jobs), "PYTHONPATH": path}
    command = [sys.executable, "-m", "jobfleet", "dev"]
    up = subprocess.run([*command, "up", "--project", emulators.project, "--parallelism", "2"],
                        env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines() if line.startswith("export ")
        )
        for name, value in {**env, **exports}.items():
            monkeypatch.setenv(name, value)
        yield {**exports, "JOBFLEET_HOME": str(home)}
    finally:
        down = subprocess.run([*command, "down"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, down.stderr


def test_a_job_with_resources_runs_on_its_class_job_in_the_dev_stack(
    stack: dict[str, str]
) -> None:
    classes = json.loads((Path(stack["JOBFLEET_HOME"]) / "dev" / TFVARS_FILE).read_text())
    assert [(c["name"], c["jobs"]) for c in classes["worker_classes"]] == [
        (CLASS, ["e2e_heavy"])
    ]
    with JobFleet() as fleet:
        orchestration = fleet.kick_off("e2e_heavy", [{"n": n} for n in range(4)],
                                       parallelism=2)
        successes, failures = orchestration.results(timeout=180)
        launcher, name = fleet.backend.launcher, orchestration.status().execution
        assert isinstance(launcher, CloudRunLauncher) and name is not None
        execution = launcher.executions_client.get_execution(name=name)
    assert orchestration.status().status is Status.COMPLETED and not failures
    assert {s.result["cloud_run_job"] for s in successes} == {f"jobfleet-worker-{CLASS}"}
    assert execution.job == f"jobfleet-worker-{CLASS}"
    assert execution.template.timeout.total_seconds() == 900
