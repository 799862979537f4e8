"""The example jobs repository, installed as the image installs it, run as the image runs.

A fresh virtualenv gets job_image/install.sh with the arguments job_image/Dockerfile
passes it, and every command below runs from that virtualenv alone, with the image's
environment (JOBFLEET_JOBS=acme_jobs.jobs, JOBFLEET_BACKEND=gcp) and a working folder
outside this checkout: `jobfleet dev up` (its Cloud Run stand-in starts the workers with
that virtualenv's Python, and it starts the completion function with `jobfleet
function`), `jobfleet serve`, `jobfleet schedules sync`. A kick-off of migrate_accounts
through the API runs its second stage, notify_customers, and each stage's completion
event is published once; the nightly schedule, synced from the example's code, fires
once through the Cloud Scheduler stand-in. `jobfleet worker-classes` lists the example's
two worker classes (which `dev up` serves as Cloud Run jobs of their own, as Terraform
makes them), and the same example runs unchanged on the local backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Emulators, answers_ok, eventually
from image_support import replay_install, runtime_env
from jobfleet.config import DEFAULT_TOPIC
from jobfleet.dev.emulators import free_port, stop_group
from pubsub_raw import RawSubscription

pytestmark = pytest.mark.slow

TOKEN = "acme-example-token"
ACCOUNTS = [{"account_id": f"acct-{n}", "plan": "team"} for n in range(5)]
SCHEDULE = "nightly_session_cleanup"
ENDED = {"Completed", "Errored", "Cancelled"}


@dataclass(frozen=True)
class Installed:
    venv: Path
    env: dict[str, str]  # the image's environment, with its virtualenv here
    workdir: Path  # not this checkout: nothing is importable from the working folder

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "jobfleet"), *args],
                              env=env or self.env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("image") / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    install = replay_install(venv, python)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "installed: jobfleet with acme_jobs.jobs (3 jobs)" in install.stdout
    return Installed(venv, runtime_env(venv), tmp_path_factory.mktemp("workdir"))


def test_the_install_is_the_image_environment_alone(installed: Installed) -> None:
    which = subprocess.run(
        ["python", "-c", "import sys, acme_jobs.jobs, jobfleet; print(sys.prefix)"],
        env=installed.env, cwd=installed.workdir, capture_output=True, text=True,
    )
    assert which.returncode == 0, which.stderr
    assert Path(which.stdout.strip()) == installed.venv
    assert installed.env["JOBFLEET_JOBS"] == "acme_jobs.jobs"


def test_the_example_declares_the_two_worker_classes_terraform_makes(
    installed: Installed,
) -> None:
    printed = installed.run("worker-classes")
    assert printed.returncode == 0, printed.stderr
    classes = json.loads(printed.stdout)["worker_classes"]
    assert [(c["name"], c["jobs"]) for c in classes] == [
        ("c1-m512mi-t60-r1", ["notify_customers"]),
        ("c4-m8gi-t3600-r3", ["migrate_accounts"]),
    ]
    assert classes[1] == {"name": "c4-m8gi-t3600-r3", "cpu": 4, "memory": "8Gi",
                          "task_timeout_seconds": 3600, "max_retries": 3, "image": None,
                          "jobs": ["migrate_accounts"]}


def test_the_example_runs_unchanged_on_the_local_backend(
    installed: Installed, tmp_path: Path
) -> None:
    env = {**installed.env, "JOBFLEET_BACKEND": "local", "JOBFLEET_HOME": str(tmp_path)}
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps([*ACCOUNTS[:2], {"account_id": "locked-9"}]))
    failed = installed.run("run", "migrate_accounts", "--params", str(accounts), env=env)
    assert failed.returncode == 1, failed.stderr  # the locked account errs, with its params
    results = installed.run("results", "--failed", "--json", _last_id(installed, env),
                            env=env)
    assert "locked-9" in results.stdout and "PermissionError" in results.stdout

    accounts.write_text(json.dumps(ACCOUNTS[:2]))
    ran = installed.run("run", "migrate_accounts", "--params", str(accounts), "--then",
                        "notify_customers from acme_jobs.jobs:notices_for", env=env)
    assert ran.returncode == 0, ran.stderr
    assert eventually(lambda: _ended(installed, env, "notify_customers"), 120)
    [notified] = json.loads(installed.run("list", "--json", "--job", "notify_customers",
                                          env=env).stdout)
    assert notified["status"] == "Completed" and notified["total"] == 2


def _last_id(installed: Installed, env: dict[str, str]) -> str:
    listed = json.loads(installed.run("list", "--json", "--limit", "1", env=env).stdout)
    return str(listed[0]["orchestration_id"])


def _ended(installed: Installed, env: dict[str, str], job: str) -> bool:
    listed = installed.run("list", "--json", "--job", job, env=env)
    return listed.returncode == 0 and any(
        o["status"] in ENDED for o in json.loads(listed.stdout))


@dataclass(frozen=True)
class Deployment:
    """The dev stack and `jobfleet serve`, both from the installed virtualenv."""

    env: dict[str, str]
    api: str
    home: Path

    def get(self, path: str) -> Any:
        reply = httpx.get(self.api + path, headers=_auth(), timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def deployment(
    installed: Installed, emulators: Emulators, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("acme-home")
    api = f"http://127.0.0.1:{free_port()}"
    project = f"acme-{uuid.uuid4().hex[:8]}"  # its own documents, its own relay route
    env = {**installed.env, **emulators.environment(), "GOOGLE_CLOUD_PROJECT": project,
           "JOBFLEET_HOME": str(home), "JOBFLEET_API_URL": api}
    up = installed.run("dev", "up", "--project", project, "--parallelism", "2", env=env)
    assert up.returncode == 0, up.stderr
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in up.stdout.splitlines() if line.startswith("export "))
    served = {**env, **exports, "JOBFLEET_API_TOKEN": TOKEN}
    log = home / "serve.log"
    try:
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(installed.venv / "bin" / "jobfleet"), "serve", "--port",
                 api.rsplit(":", 1)[1]],
                env=served, cwd=installed.workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            assert eventually(lambda: answers_ok(api + "/healthz"), 60), log.read_text()
            yield Deployment(served, api, home)
        finally:
            stop_group(server)
    finally:
        down = installed.run("dev", "down", env=env)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def events(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[RawSubscription]:
    """Every JobCompletedEvent of the deployment's project, counted per orchestration."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", deployment.env["PUBSUB_EMULATOR_HOST"])
    with RawSubscription(deployment.env["GOOGLE_CLOUD_PROJECT"], DEFAULT_TOPIC) as raw:
        yield raw


def test_the_pipeline_runs_on_the_stand_ins_and_each_stage_is_announced_once(
    deployment: Deployment, events: RawSubscription
) -> None:
    created = httpx.post(deployment.api + "/v1/orchestrations", headers=_auth(), timeout=60,
                         json={"job_name": "migrate_accounts", "params": ACCOUNTS,
                               "parallelism": 2,
                               "then": [{"job": "notify_customers",
                                         "params_from": "acme_jobs.jobs:notices_for"}]})
    assert created.status_code == 202, created.text
    first = created.json()["orchestration_id"]

    def both_ended() -> bool:
        stages = deployment.get(f"/v1/orchestrations/{first}")["links"]["stages"]
        return len(stages) == 2 and all(s["status"] in ENDED for s in stages)

    assert eventually(both_ended, 300), _logs(deployment)
    stages = [deployment.get(f"/v1/orchestrations/{s['id']}")
              for s in deployment.get(f"/v1/orchestrations/{first}")["links"]["stages"]]
    assert [s["job_name"] for s in stages] == ["migrate_accounts", "notify_customers"]
    assert [s["status"] for s in stages] == ["Completed", "Completed"], _logs(deployment)
    assert stages[1]["total"] == len(ACCOUNTS)  # one notice per migrated account
    assert eventually(lambda: set(events.counts()) >= {s["orchestration_id"] for s in stages}, 60)
    time.sleep(3)  # a duplicate would have arrived by now
    assert dict(events.counts()) == {s["orchestration_id"]: 1 for s in stages}


def test_the_schedule_synced_from_the_example_fires_once_through_cloud_scheduler(
    deployment: Deployment, installed: Installed, events: RawSubscription
) -> None:
    synced = installed.run("schedules", "sync", env=deployment.env)
    assert synced.returncode == 0, synced.stderr
    assert SCHEDULE in synced.stdout
    scheduler = deployment.env["JOBFLEET_CLOUD_SCHEDULER_ENDPOINT"]
    job = (f"projects/{deployment.env['GOOGLE_CLOUD_PROJECT']}/locations/"
           f"{deployment.env['JOBFLEET_REGION']}/jobs/jobfleet-{SCHEDULE}")
    # What `gcloud scheduler jobs run` does: Cloud Scheduler fires the job now.
    forced = urllib.request.Request(f"{scheduler}/v1/{job}:run", data=b"{}", method="POST",
                                    headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(forced, timeout=30) as reply:
        assert reply.status == 200

    def run_ended() -> list[dict[str, Any]]:
        runs = deployment.get("/v1/orchestrations?job_name=cleanup_sessions")
        found: list[dict[str, Any]] = runs["orchestrations"]
        return found if found and all(r["status"] in ENDED for r in found) else []

    assert eventually(lambda: bool(run_ended()), 300), _logs(deployment)
    [run] = run_ended()
    assert run["status"] == "Completed" and run["total"] == 4
    assert run["tags"]["schedule"] == SCHEDULE and run["tags"]["team"] == "platform"
    with urllib.request.urlopen(f"{scheduler}/_standin/attempts", timeout=10) as reply:
        attempts = [a for a in json.load(reply)["attempts"]
                    if a["job"] == f"jobfleet-{SCHEDULE}"]
    assert [a["status"] for a in attempts] == [200]
    assert eventually(lambda: events.counts().get(run["orchestration_id"]) == 1, 60)


def _logs(deployment: Deployment) -> str:
    """The tail of every part's log, for a failure's message."""
    parts = [*sorted((deployment.home / "dev").glob("*.log")), deployment.home / "serve.log"]
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in parts if p.exists())

