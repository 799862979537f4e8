"""Schedules on the Google Cloud shape, end to end on one machine.

`jobfleet dev up` (with the API's URL known, and the Cloud Scheduler stand-in on a fast
clock) creates the sweep's Cloud Scheduler job; `jobfleet schedules sync` deploys a
schedule declared in a jobs module with a params provider; the stand-in fires it on
time at `jobfleet serve`'s fire route with a signed OIDC token; the run fans out on the
Cloud Run stand-in, and exactly one JobCompletedEvent per run arrives on Pub/Sub with
the `schedule` tag. Paused, the schedule does not fire.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_gcp_stack import subscribe

from conftest import TESTS, Emulators, answers_ok, eventually
from jobfleet import JobFleet
from jobfleet.backends.gcp.cloud_scheduler import SWEEP_JOB, CloudSchedulerTimer
from jobfleet.config import Settings
from jobfleet.core.schedules import FireState
from jobfleet.dev.emulators import free_port

pytestmark = pytest.mark.slow

CLOCK_SPEED = 20  # a scheduled minute every 3 real seconds

JOBS = '''
import jobfleet
from jobfleet import job


@job("tally", retries=0)
def tally(params):
    return params["n"] * 2


def numbers():
    return [{"n": n} for n in range(6)]


jobfleet.schedule("minutely", job="tally", cron="* * * * *", params=numbers,
                  parallelism=2, tags={"team": "ops"})
'''


@pytest.fixture(scope="module")
def stack(
    emulators: Emulators, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`dev up` knowing the API's URL, then `jobfleet serve` there; both stopped after."""
    home = tmp_path_factory.mktemp("sched-home")
    jobs = tmp_path_factory.mktemp("sched-jobs") / "minutely_jobs.py"
    jobs.write_text(JOBS)
    api_url = f"http://127.0.0.1:{free_port()}"
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **emulators.environment(), "JOBFLEET_HOME": str(home),
           "JOBFLEET_API_URL": api_url, "PYTHONPATH": path}
    command = [sys.executable, "-m", "jobfleet"]
    up = subprocess.run(
        [*command, "dev", "up", "--project", emulators.project, "--parallelism", "2",
         "--scheduler-clock-speed", str(CLOCK_SPEED)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert up.returncode == 0, up.stderr
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in up.stdout.splitlines() if line.startswith("export "))
    assert exports["JOBFLEET_API_AUDIENCE"] == api_url
    served = {**env, **exports, "JOBFLEET_JOBS": str(jobs)}
    log = home / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "serve", "--port", api_url.rsplit(":", 1)[1]],
            env=served, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        assert eventually(lambda: answers_ok(api_url + "/healthz"), timeout=60), log.read_text()
        yield {**served, "JOBS_FILE": str(jobs), "SERVE_LOG": str(log)}
    finally:
        server.terminate()
        server.wait(20)
        down = subprocess.run([*command, "dev", "down"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def gcp_env(stack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in stack.items():
        monkeypatch.setenv(name, value)
    return stack


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobfleet", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def standin_fires(env: dict[str, str], job_id: str) -> list[dict[str, object]]:
    url = env["JOBFLEET_CLOUD_SCHEDULER_ENDPOINT"] + "/_standin/attempts"
    with urllib.request.urlopen(url, timeout=5) as reply:
        attempts = json.load(reply)["attempts"]
    return [a for a in attempts if a["job"] == job_id]


def test_the_sweep_is_a_cloud_scheduler_job_after_dev_up(gcp_env: dict[str, str]) -> None:
    timer = CloudSchedulerTimer(Settings.from_env())
    job = timer.client.get_job(name=f"{timer.parent}/jobs/{SWEEP_JOB}")
    assert job.http_target.uri == gcp_env["JOBFLEET_API_URL"] + "/v1/sweep"
    assert job.schedule == "* * * * *"
    # The stand-in calls it, and the API accepts its token (2xx).
    assert eventually(
        lambda: any(a["status"] == 200 for a in standin_fires(gcp_env, SWEEP_JOB)), timeout=60
    ), gcp_env["SERVE_LOG"]


def test_a_schedule_synced_from_code_fires_on_time_once_per_scheduled_time(
    gcp_env: dict[str, str], emulators: Emulators
) -> None:
    subscriber, received = subscribe(emulators.project, 'attributes.schedule = "minutely"')
    with subscriber:
        synced = cli(gcp_env, "schedules", "sync", "--jobs-module", gcp_env["JOBS_FILE"])
        assert synced.returncode == 0, synced.stderr
        assert "minutely" in synced.stdout
        with JobFleet(jobs_modules=[gcp_env["JOBS_FILE"]]) as fleet:
            assert eventually(lambda: _started(fleet), timeout=120), Path(
                gcp_env["SERVE_LOG"]).read_text()[-3000:]
            paused = cli(gcp_env, "schedule", "pause", "minutely")
            assert paused.returncode == 0, paused.stderr
            first = next(f for f in reversed(fleet.schedules.history("minutely"))
                         if f.state is FireState.STARTED)
            assert first.orchestration_id
            run = fleet.orchestration(first.orchestration_id)
            successes, failures = run.results(timeout=300)
            assert failures is None
            assert sorted(s.result for s in successes) == [0, 2, 4, 6, 8, 10]
            events = received.of(first.orchestration_id, timeout=120)
            assert len(events) == 1
            assert events[0].tags["schedule"] == "minutely"
            assert events[0].tags["team"] == "ops"
            # One run per scheduled time, whatever the stand-in retried.
            fires = fleet.schedules.history("minutely", limit=100)
            times = [f.scheduled_at for f in fires]
            assert len(times) == len(set(times))
            runs = fleet.history(limit=200, tag=("schedule", "minutely"))
            assert len(runs) == len({r.tags["schedule_time"] for r in runs})
            # Paused: the stand-in sends nothing more, and nothing more starts.
            time.sleep(2)
            sent = len(standin_fires(gcp_env, "jobfleet-minutely"))
            started = len(runs)
            time.sleep(4 * 60 / CLOCK_SPEED)  # four scheduled minutes
            assert len(standin_fires(gcp_env, "jobfleet-minutely")) == sent
            assert len(fleet.history(limit=200, tag=("schedule", "minutely"))) == started


def _started(fleet: JobFleet) -> bool:
    return any(f.state is FireState.STARTED for f in fleet.schedules.history("minutely"))
