"""A local stand-in for the Cloud Scheduler API (v1, REST), for development and tests.

It answers CreateJob, GetJob, ListJobs, UpdateJob, DeleteJob, PauseJob, ResumeJob and
RunJob in the wire format of the Google client library's REST transport, keeps the jobs
in memory (and in `--state FILE` if given, so that a restart keeps them), and fires
their HTTP targets on time as Cloud Scheduler does: the X-CloudScheduler headers, an
OIDC ID token signed by a local key whose certificate it serves in Google's v1 format
(point the API's JOBFLEET_API_CERTS_URL at it), and retries per the job's retryConfig.
So the production timer (`backends/gcp/cloud_scheduler.py`) and the API's token check
are the code under test, without a cloud project.

When a cron names a time is `jobfleet.core.cron.Cron` (the one DST rule). `--clock-speed
N` runs the stand-in's clock N times faster than the wall clock, from the wall clock's
now: cron times and retry backoffs pass N times faster, and fires carry the fast
clock's scheduled times. Attempt deadlines and token lifetimes stay in real seconds.

    python -m jobfleet.dev.cloud_scheduler --port 8124 --project demo --region us-central1
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from jobfleet.dev.http_targets import backoff, deliver, seconds
from jobfleet.dev.id_tokens import (
    SigningKey,
    certificates,
    make_key,
    service_account_claims,
    sign,
)
from jobfleet.dev.rest_standin import ApiError, Json, Reply, RestStandIn, serve_until_signalled
from jobfleet.dev.scheduler_jobs import UPDATABLE, SchedulerJob, camel, camel_name, checked

TICK_SECONDS = 0.02
CERTS_PATH = "/oauth2/v1/certs"
MAX_PAGE_SIZE = 500
_LOCATION = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
_JOB = _LOCATION + r"/jobs/(?P<job>[^/:]+)"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("POST", "CreateJob", re.compile(_LOCATION + r"/jobs")),
    ("GET", "ListJobs", re.compile(_LOCATION + r"/jobs")),
    ("GET", "GetJob", re.compile(_JOB)),
    ("PATCH", "UpdateJob", re.compile(_JOB)),
    ("DELETE", "DeleteJob", re.compile(_JOB)),
    ("POST", "PauseJob", re.compile(_JOB + r":pause")),
    ("POST", "ResumeJob", re.compile(_JOB + r":resume")),
    ("POST", "RunJob", re.compile(_JOB + r":run")),
]


@dataclass(frozen=True)
class Attempt:
    """One HTTP request the stand-in sent, as tests look at it."""

    job: str  # the job id
    scheduled_at: float
    attempt: int  # 0 for the first of an execution
    forced: bool  # from RunJob, not the cron
    sent_at: float  # wall clock
    status: int | None  # the target's HTTP status; None: no answer in time, or none at all


class Clock:
    """The wall clock, or one that runs `speed` times faster from the moment it starts."""

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError("the clock speed must be positive")
        self.speed = speed
        self.origin = time.time()

    def now(self) -> float:
        return self.origin + (time.time() - self.origin) * self.speed

    def realseconds(self, seconds: float) -> float:
        return seconds / self.speed


class CloudSchedulerStandIn(RestStandIn):
    """The Cloud Scheduler API of one location, served on 127.0.0.1 from background
    threads; also the signing certificates of the ID tokens it sends."""

    name = "cloud-scheduler-standin"
    tick = TICK_SECONDS

    def __init__(
        self,
        *,
        project: str,
        region: str,
        port: int = 0,
        state_file: Path | None = None,
        clock_speed: float = 1.0,
    ) -> None:
        super().__init__(port)
        self.project, self.region = project, region
        self.clock = Clock(clock_speed)
        self.state_file = state_file
        self._jobs: dict[str, SchedulerJob] = {}  # by full name
        self._attempts: list[Attempt] = []
        self.kid, self.key = self._load() or (
            uuid.uuid4().hex[:16], make_key("cloud-scheduler-standin.local", days=365)
        )

    @property
    def certs_url(self) -> str:
        """Where the API's JOBFLEET_API_CERTS_URL points to accept the stand-in's tokens."""
        return f"{self.url}{CERTS_PATH}"

    # -- what tests look at -------------------------------------------------------

    def attempts(self, job_id: str | None = None) -> list[Attempt]:
        with self._lock:
            return [a for a in self._attempts if job_id is None or a.job == job_id]

    def fires(self) -> dict[str, int]:
        """HTTP requests sent, per job id."""
        with self._lock:
            return dict(Counter(a.job for a in self._attempts))

    def id_token(self, email: str, audience: str) -> str:
        """An ID token as the stand-in sends them (for tests of the verifier)."""
        return sign(self.key, self.kid, service_account_claims(email, audience))

    # -- the API ------------------------------------------------------------------

    def headers(self, path: str) -> dict[str, str]:
        return {"Cache-Control": "public, max-age=300"} if path == CERTS_PATH else {}

    def handle(self, method: str, path: str, body: Json) -> Reply:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        if method == "GET" and parts.path == CERTS_PATH:
            return 200, certificates(self.kid, self.key)
        if method == "GET" and parts.path == "/_standin/calls":
            return 200, self.calls
        if method == "GET" and parts.path == "/_standin/attempts":
            return 200, {"attempts": [asdict(a) for a in self.attempts()]}
        numeric = "enum-encoding=int" in ";".join(query.get("$alt", []))
        for verb, name, pattern in ROUTES:
            match = pattern.fullmatch(parts.path)
            if verb == method and match:
                with self._lock:
                    self._calls[name] += 1
                    try:
                        return 200, self._dispatch(name, match.groupdict(), body, query,
                                                   numeric)
                    except ApiError as exc:
                        return exc.reply()
        return ApiError(404, f"{method} {parts.path} is not a Cloud Scheduler API v1 method"
                             " this stand-in serves").reply()

    def _dispatch(
        self, method: str, where: dict[str, str], body: Json, query: dict[str, list[str]],
        numeric: bool,
    ) -> Json:
        if (where["project"], where["region"]) != (self.project, self.region):
            raise ApiError(404, f"Location projects/{where['project']}/locations/"
                                f"{where['region']} is not served here (this stand-in serves"
                                f" projects/{self.project}/locations/{self.region})")
        if method == "CreateJob":
            return self._create(camel(body)).to_json(numeric)
        if method == "ListJobs":
            return self._list(query, numeric)
        job = self._find(where["job"])
        if method == "GetJob":
            return job.to_json(numeric)
        if method == "UpdateJob":
            return self._update(job, camel(body), query).to_json(numeric)
        if method == "DeleteJob":
            del self._jobs[job.resource["name"]]
            self._save()
            return {}
        if method == "PauseJob":
            job.state = "PAUSED"
        elif method == "ResumeJob":
            job.state = "ENABLED"
            job.next_at = self._next_time(job, self.clock.now())
        else:  # RunJob: now, beside any scheduled execution
            self._dispatch_execution(job, self.clock.now(), forced=True)
        self._save()
        return job.to_json(numeric)

    def _location(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def _find(self, job_id: str) -> SchedulerJob:
        try:
            return self._jobs[f"{self._location()}/jobs/{job_id}"]
        except KeyError:
            raise ApiError(404, f"Job not found: {self._location()}/jobs/{job_id}") from None

    def _create(self, resource: Json) -> SchedulerJob:
        name = resource.get("name") or f"{self._location()}/jobs/{uuid.uuid4().hex[:20]}"
        if not re.fullmatch(re.escape(self._location()) + r"/jobs/[A-Za-z0-9_-]{1,500}", name):
            raise ApiError(400, f"Job name {name!r} must be {self._location()}/jobs/JOB_ID,"
                                " JOB_ID of letters, digits, hyphens or underscores")
        if name in self._jobs:
            raise ApiError(409, f"Job {name} already exists.")
        job = SchedulerJob(resource=checked({**resource, "name": name}))
        job.next_at = self._next_time(job, self.clock.now())
        self._jobs[name] = job
        self._save()
        return job

    def _update(self, job: SchedulerJob, resource: Json, query: dict[str, list[str]]) -> (
        SchedulerJob
    ):
        mask = [camel_name(p) for p in ",".join(query.get("updateMask", [])).split(",") if p]
        for path in mask:
            if path not in UPDATABLE:
                raise ApiError(400, f"updateMask path {path!r} cannot be updated")
        fields = mask or [k for k in resource if k in UPDATABLE]
        updated = dict(job.resource)
        for name in fields:
            if name in resource:
                updated[name] = resource[name]
            else:
                updated.pop(name, None)
        job.resource = checked(updated)
        job.user_update_time = time.time()
        job.next_at = self._next_time(job, self.clock.now())
        self._save()
        return job

    def _list(self, query: dict[str, list[str]], numeric: bool) -> Json:
        size = min(int((query.get("pageSize") or ["0"])[0] or 0) or MAX_PAGE_SIZE,
                   MAX_PAGE_SIZE)
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        names = sorted(self._jobs)
        page = names[start: start + size]
        reply: Json = {"jobs": [self._jobs[n].to_json(numeric) for n in page]}
        if start + size < len(names):
            reply["nextPageToken"] = str(start + size)
        return reply

    # -- firing ---------------------------------------------------------------------

    def _next_time(self, job: SchedulerJob, after: float) -> float | None:
        return next(iter(job.cron.times(after)), None)

    def drive(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            now = self.clock.now()
            with self._lock:
                for job in self._jobs.values():
                    due = job.next_at is not None and job.next_at <= now
                    if job.state == "ENABLED" and due and not job.busy:
                        assert job.next_at is not None
                        job.busy = True
                        self._dispatch_execution(job, job.next_at, forced=False)

    def _dispatch_execution(self, job: SchedulerJob, scheduled: float, *, forced: bool) -> None:
        threading.Thread(
            target=self._execute, args=(job, scheduled, forced), daemon=True,
            name=f"cloud-scheduler-standin-{job.job_id}",
        ).start()

    def _execute(self, job: SchedulerJob, scheduled: float, forced: bool) -> None:
        """Attempt, and retry with backoff while the retryConfig allows and the next
        cron time has not come; then (for a cron execution) move to the next time."""
        attempt = 0
        while not self._stopped.is_set():
            with self._lock:
                if self._jobs.get(job.resource["name"]) is not job or (
                        attempt and job.state != "ENABLED"):
                    break  # deleted, or paused while waiting for a retry
                target, deadline = dict(job.resource["httpTarget"]), job.resource[
                    "attemptDeadline"]
                retry = job.resource["retryConfig"]
                job.last_attempt_time = time.time()
            status, rpc = deliver(
                target, job.job_id, scheduled, seconds(deadline), self.key, self.kid
            )
            with self._lock:
                self._attempts.append(Attempt(job.job_id, scheduled, attempt, forced,
                                              job.last_attempt_time or time.time(), status))
                job.status = None if rpc is None else rpc
                self._save()
            if rpc is None or attempt >= int(retry.get("retryCount") or 0):
                break
            wait = backoff(retry, attempt)
            attempt += 1
            following = self._next_time(job, scheduled)
            if following is not None and self.clock.now() + wait >= following:
                break  # Cloud Scheduler retries only until the next scheduled time
            if self._stopped.wait(self.clock.realseconds(wait)):
                break
        if not forced:
            with self._lock:
                job.busy = False
                now = self.clock.now()
                missed = job.cron.between(scheduled, now)
                # A run that overran its next time fires once, late, for the latest one.
                job.next_at = missed[-1] if missed else self._next_time(job, now)

    # -- the state file -----------------------------------------------------------------

    def _save(self) -> None:
        if self.state_file is None:
            return
        jobs = {name: {"resource": j.resource, "state": j.state,
                       "userUpdateTime": j.user_update_time}
                for name, j in self._jobs.items()}
        data = {"kid": self.kid, "privateKey": self.key.private_pem.decode(),
                "certificate": self.key.certificate_pem, "jobs": jobs}
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(data))
        partial.replace(self.state_file)

    def _load(self) -> tuple[str, SigningKey] | None:
        """The jobs, and the key id and signing key, from the state file: a restarted
        stand-in fires the same jobs, with tokens the certificates the API holds verify."""
        if self.state_file is None or not self.state_file.exists():
            return None
        data = json.loads(self.state_file.read_text())
        now = self.clock.now()
        for name, saved in data["jobs"].items():
            job = SchedulerJob(saved["resource"], saved["state"], saved["userUpdateTime"])
            job.next_at = self._next_time(job, now)
            self._jobs[name] = job
        return data["kid"], SigningKey(data["privateKey"].encode(), data["certificate"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobfleet.dev.cloud_scheduler",
        description="Serve a stand-in Cloud Scheduler API that fires HTTP targets locally.",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--state", type=Path, metavar="FILE",
                        help="keep the jobs and the signing key here across restarts")
    parser.add_argument("--clock-speed", type=float, default=1.0, metavar="N",
                        help="run the scheduler's clock N times faster (tests)")
    args = parser.parse_args(argv)
    standin = CloudSchedulerStandIn(
        project=args.project, region=args.region, port=args.port, state_file=args.state,
        clock_speed=args.clock_speed,
    ).start()
    return serve_until_signalled(standin, [
        f"JOBFLEET_CLOUD_SCHEDULER_ENDPOINT={standin.url}",
        f"JOBFLEET_API_CERTS_URL={standin.certs_url}",
    ])

if __name__ == "__main__":
    sys.exit(main())
