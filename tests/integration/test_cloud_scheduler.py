"""The Cloud Scheduler timer through the real client library, over HTTP, to the stand-in;
and the stand-in firing a real HTTP target the way Cloud Scheduler does, with an ID
token that the API's production verifier accepts.

The stand-in's clock runs 60 times faster (conftest.py): `* * * * *` fires every second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import scheduler_v1

from conftest import eventually
from integration.conftest import SCHEDULER_PROJECT, SCHEDULER_REGION
from jobfleet.api.auth import Forbidden, Principal, authenticator_from_env
from jobfleet.backends.gcp.cloud_scheduler import SWEEP_JOB, CloudSchedulerTimer
from jobfleet.config import Settings
from jobfleet.core.cron import Cron, parse_iso
from jobfleet.core.schedules import Schedule
from jobfleet.dev.cloud_scheduler import CloudSchedulerStandIn
from jobfleet.dev.emulators import free_port
from jobfleet.errors import ConfigurationError

SCHEDULER_ACCOUNT = "jobfleet-scheduler@jobfleet-test.iam.gserviceaccount.com"
EVERY_MINUTE = "* * * * *"
NEVER_SOON = "0 0 1 1 *"  # once a year: nothing fires during a test unless run


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case: HTTP's are case-insensitive
    body: bytes


@dataclass
class Target:
    """The API's stand-in for these tests: records every request and answers with the
    next scripted status (200 once the script is used up)."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if path is None or r.path == path]


@pytest.fixture
def target() -> Iterator[Target]:
    made: list[Target] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = made[0]
            with seen.lock:
                seen.received.append(Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body
                ))
                status = seen.answers.pop(0) if seen.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    made.append(Target(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield made[0]
    server.shutdown()
    server.server_close()
    thread.join()


def settings_for(
    standin: CloudSchedulerStandIn, api_url: str | None, **changes: Any
) -> Settings:
    values: dict[str, Any] = {
        "backend": "gcp", "project": SCHEDULER_PROJECT, "region": SCHEDULER_REGION,
        "scheduler_endpoint": standin.url, "api_url": api_url,
        "scheduler_service_account": SCHEDULER_ACCOUNT, **changes,
    }
    return Settings(**values)


@pytest.fixture
def timer(cloud_scheduler: CloudSchedulerStandIn, target: Target) -> CloudSchedulerTimer:
    return CloudSchedulerTimer(settings_for(cloud_scheduler, target.url))


def nightly(**changes: Any) -> Schedule:
    values: dict[str, Any] = {
        "name": "nightly", "job_name": "noop", "cron": "30 2 * * *",
        "timezone": "Europe/Paris", "params": [{}], **changes,
    }
    return Schedule(**values)


def job_of(timer: CloudSchedulerTimer, name: str) -> scheduler_v1.Job:
    return timer.client.get_job(name=timer.job_name(name))


def test_apply_creates_a_job_that_posts_to_the_fire_route_with_an_oidc_token(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn, target: Target
) -> None:
    before = cloud_scheduler.clock.now()
    timer.apply(nightly())

    job = job_of(timer, "nightly")
    assert job.name == (
        f"projects/{SCHEDULER_PROJECT}/locations/{SCHEDULER_REGION}/jobs/jobfleet-nightly"
    )
    assert (job.schedule, job.time_zone) == ("30 2 * * *", "Europe/Paris")
    assert job.state == scheduler_v1.Job.State.ENABLED
    assert job.http_target.uri == f"{target.url}/v1/schedules/nightly/fire"
    assert job.http_target.http_method == scheduler_v1.HttpMethod.POST
    assert job.http_target.oidc_token.service_account_email == SCHEDULER_ACCOUNT
    assert job.http_target.oidc_token.audience == target.url
    assert job.retry_config.retry_count == 5
    assert job.attempt_deadline.total_seconds() == 180
    # The next fire is 02:30 in Paris, as the one DST rule (core/cron.py) computes it.
    expected = Cron("30 2 * * *", "Europe/Paris").next_times(before, 1)[0]
    assert job.schedule_time.timestamp() == expected


def test_apply_again_updates_cron_and_time_zone_and_is_a_no_op_when_unchanged(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn
) -> None:
    timer.apply(nightly())
    timer.apply(nightly(cron="15 4 * * 1-5", timezone="America/New_York"))

    job = job_of(timer, "nightly")
    assert (job.schedule, job.time_zone) == ("15 4 * * 1-5", "America/New_York")
    assert cloud_scheduler.calls.get("CreateJob") == 1
    assert cloud_scheduler.calls.get("UpdateJob") == 1

    timer.apply(nightly(cron="15 4 * * 1-5", timezone="America/New_York"))

    assert cloud_scheduler.calls.get("UpdateJob") == 1
    assert cloud_scheduler.calls.get("CreateJob") == 1


def test_a_paused_schedule_does_not_fire_until_it_is_resumed(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn, target: Target
) -> None:
    timer.apply(nightly(cron=EVERY_MINUTE, paused=True))

    assert job_of(timer, "nightly").state == scheduler_v1.Job.State.PAUSED
    assert not eventually(lambda: bool(target.requests()), timeout=2.5)  # 2 cron times

    timer.apply(nightly(cron=EVERY_MINUTE, paused=False))

    assert job_of(timer, "nightly").state == scheduler_v1.Job.State.ENABLED
    assert eventually(lambda: bool(target.requests()), timeout=5)
    assert cloud_scheduler.calls.get("PauseJob") == 1
    assert cloud_scheduler.calls.get("ResumeJob") == 1


def test_remove_deletes_and_a_missing_one_is_fine(timer: CloudSchedulerTimer) -> None:
    timer.apply(nightly())
    timer.remove("nightly")

    with pytest.raises(NotFound):
        job_of(timer, "nightly")
    timer.remove("nightly")
    timer.remove("never-was")


def test_deployed_lists_schedules_without_the_sweep(timer: CloudSchedulerTimer) -> None:
    for name in ("b-report", "a-cleanup", "sweep"):
        timer.apply(nightly(name=name))
    timer.ensure_sweep()

    assert timer.deployed() == ["a-cleanup", "b-report", "sweep"]


def test_deployed_reads_every_page(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn
) -> None:
    names = [f"s{n:03d}" for n in range(120)]
    for name in names:
        timer.client.create_job(
            parent=timer.parent, job=scheduler_v1.Job(
                name=timer.job_name(name), schedule=NEVER_SOON,
                http_target=scheduler_v1.HttpTarget(uri="http://127.0.0.1:9/"),
            ),
        )
    pages = timer.client.list_jobs(request={"parent": timer.parent, "page_size": 50})

    assert len(list(pages.pages)) == 3
    assert timer.deployed() == names


def test_ensure_sweep_posts_to_the_sweep_route_every_minute(
    timer: CloudSchedulerTimer, target: Target
) -> None:
    timer.ensure_sweep()
    timer.ensure_sweep()

    job = timer.client.get_job(name=f"{timer.parent}/jobs/{SWEEP_JOB}")
    assert job.schedule == EVERY_MINUTE
    assert job.http_target.uri == f"{target.url}/v1/sweep"
    assert job.http_target.oidc_token.audience == target.url
    assert eventually(lambda: bool(target.requests("/v1/sweep")), timeout=5)


@pytest.mark.parametrize(
    ("missing", "variable"),
    [("api_url", "JOBFLEET_API_URL"),
     ("scheduler_service_account", "JOBFLEET_SCHEDULER_SERVICE_ACCOUNT"),
     ("project", "GOOGLE_CLOUD_PROJECT")],
)
def test_a_missing_setting_is_named(
    cloud_scheduler: CloudSchedulerStandIn, target: Target, missing: str, variable: str
) -> None:
    changes: dict[str, Any] = {"api_url": target.url, missing: None}
    timer = CloudSchedulerTimer(settings_for(cloud_scheduler, **changes))

    with pytest.raises(ConfigurationError, match=variable):
        timer.apply(nightly())
    with pytest.raises(ConfigurationError, match=variable):
        timer.ensure_sweep()


def test_a_fire_comes_on_time_with_cloud_schedulers_headers_and_a_token_the_api_accepts(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn, target: Target
) -> None:
    timer.apply(nightly(cron=EVERY_MINUTE))

    assert eventually(lambda: len(target.requests()) >= 2, timeout=5)
    first, second = target.requests()[:2]
    assert first.path == "/v1/schedules/nightly/fire"
    assert first.headers["x-cloudscheduler"] == "true"
    assert first.headers["x-cloudscheduler-jobname"] == "jobfleet-nightly"
    assert first.headers["user-agent"] == "Google-Cloud-Scheduler"
    scheduled = [parse_iso(r.headers["x-cloudscheduler-scheduletime"]) for r in (first, second)]
    assert all(t % 60 == 0 for t in scheduled)  # whole minutes of the stand-in's clock
    assert scheduled[1] - scheduled[0] == 60
    assert cloud_scheduler.fires()["jobfleet-nightly"] >= 2

    verifier = authenticator_from_env({
        "JOBFLEET_API_AUDIENCE": target.url,
        "JOBFLEET_API_PRINCIPALS": SCHEDULER_ACCOUNT,
        "JOBFLEET_API_CERTS_URL": cloud_scheduler.certs_url,
    })
    assert verifier is not None
    scheme, token = first.headers["authorization"].split()
    assert scheme == "Bearer"
    assert verifier.authenticate(token) == Principal(SCHEDULER_ACCOUNT)
    others = authenticator_from_env({
        "JOBFLEET_API_AUDIENCE": target.url,
        "JOBFLEET_API_PRINCIPALS": "someone-else@example.com",
        "JOBFLEET_API_CERTS_URL": cloud_scheduler.certs_url,
    })
    assert others is not None
    with pytest.raises(Forbidden):
        others.authenticate(token)


def test_a_failed_fire_is_retried_with_the_same_schedule_time(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn, target: Target
) -> None:
    target.answers = [500]
    timer.apply(nightly(cron=EVERY_MINUTE))

    assert eventually(lambda: len(cloud_scheduler.attempts("jobfleet-nightly")) >= 2)
    failed, retried = cloud_scheduler.attempts("jobfleet-nightly")[:2]
    assert (failed.status, failed.attempt) == (500, 0)
    assert (retried.status, retried.attempt) == (200, 1)
    assert failed.scheduled_at == retried.scheduled_at
    # The retry waited the minimum backoff, 10 s on the stand-in's clock (60x).
    assert retried.sent_at - failed.sent_at >= 10 / 60
    first, second = target.requests()[:2]
    header = "x-cloudscheduler-scheduletime"
    assert first.headers[header] == second.headers[header]


def test_a_target_out_of_reach_is_a_failed_attempt_in_the_jobs_status(
    cloud_scheduler: CloudSchedulerStandIn,
) -> None:
    timer = CloudSchedulerTimer(settings_for(cloud_scheduler, f"http://127.0.0.1:{free_port()}"))
    timer.apply(nightly(cron=EVERY_MINUTE))

    assert eventually(lambda: job_of(timer, "nightly").status.code == 14)  # UNAVAILABLE
    assert job_of(timer, "nightly").last_attempt_time.timestamp() > 0


def test_run_fires_now_even_off_schedule(
    timer: CloudSchedulerTimer, cloud_scheduler: CloudSchedulerStandIn, target: Target
) -> None:
    timer.apply(nightly(cron=NEVER_SOON))

    timer.client.run_job(name=timer.job_name("nightly"))

    assert eventually(lambda: len(target.requests()) == 1, timeout=5)
    [attempt] = cloud_scheduler.attempts("jobfleet-nightly")
    assert attempt.forced
    assert target.requests()[0].path == "/v1/schedules/nightly/fire"


def test_the_command_line_stand_in_keeps_its_jobs_and_key_across_a_restart(
    tmp_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    state, port = tmp_path / "scheduler.json", free_port()

    def start() -> tuple[subprocess.Popen[str], dict[str, str]]:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobfleet.dev.cloud_scheduler", "--port", str(port),
             "--project", SCHEDULER_PROJECT, "--region", SCHEDULER_REGION,
             "--state", str(state), "--clock-speed", "60"],
            stdout=subprocess.PIPE, text=True, env={**os.environ},
        )
        assert process.stdout is not None
        printed = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
        return process, printed

    process, printed = start()
    try:
        endpoint = printed["JOBFLEET_CLOUD_SCHEDULER_ENDPOINT"]
        assert endpoint == f"http://127.0.0.1:{port}"
        settings = Settings(
            backend="gcp", project=SCHEDULER_PROJECT, region=SCHEDULER_REGION,
            scheduler_endpoint=endpoint, api_url=target.url,
            scheduler_service_account=SCHEDULER_ACCOUNT,
        )
        CloudSchedulerTimer(settings).apply(nightly(cron=NEVER_SOON))
        certs = fetch_json(printed["JOBFLEET_API_CERTS_URL"])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

    process, again = start()
    try:
        assert again == printed
        assert fetch_json(printed["JOBFLEET_API_CERTS_URL"]) == certs  # the same key
        timer = CloudSchedulerTimer(settings)
        assert timer.deployed() == ["nightly"]
        timer.client.run_job(name=timer.job_name("nightly"))
        assert eventually(lambda: bool(target.requests()), timeout=5)
        verifier = authenticator_from_env({
            "JOBFLEET_API_AUDIENCE": target.url,
            "JOBFLEET_API_PRINCIPALS": SCHEDULER_ACCOUNT,
            "JOBFLEET_API_CERTS_URL": printed["JOBFLEET_API_CERTS_URL"],
        })
        assert verifier is not None
        token = target.requests()[0].headers["authorization"].split()[1]
        assert verifier.authenticate(token) == Principal(SCHEDULER_ACCOUNT)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())
