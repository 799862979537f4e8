"""A local stand-in for the Cloud Run Admin API (v2, REST), for development and tests.

It answers the calls the launcher makes (RunJob, GetExecution, CancelExecution, and
the operation poll) in the wire format the Google client library's REST transport
speaks, and runs each execution's tasks as real `jobfleet worker` processes with
Cloud Run's environment (through TaskSet, the same task runner the local backend
uses). So the production launcher is the code under test, end to end, without a
cloud project.

It serves the base Cloud Run job and one job per worker class it is given
(`--classes worker_classes.auto.tfvars.json`, the file Terraform reads), each with its
task timeout and task retries, and answers 404 NOT_FOUND for any other job as Cloud Run
does. A task attempt running past its execution's task timeout (the job's, or the
RunJob call's `timeout` override) is killed and retried while retries last. Each
execution records the job that ran it and its task timeout, for tests.

It counts the calls it receives, so that tests can hold the "O(1) Admin API calls per
orchestration" cost principle, and can be told to fail RunJob calls, so that tests can
see the launcher retry, or to answer them slowly, so that a caller can die while its
RunJob is in flight.

    python -m jobfleet.dev.cloud_run --port 8123 --project demo --region us-central1 \\
        --job jobfleet-worker --parallelism 4 --classes worker_classes.auto.tfvars.json
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobfleet.backends.local.tasks import TaskSet
from jobfleet.core.resources import MAX_TASK_TIMEOUT_SECONDS
from jobfleet.core.worker_classes import ClassJob, read_class_jobs
from jobfleet.dev.rest_standin import ApiError, Json, Reply, RestStandIn, serve_until_signalled
from jobfleet.errors import ConfigurationError

WORKER_COMMAND = (sys.executable, "-m", "jobfleet", "worker")
DEFAULT_MAX_RETRIES = 3  # Cloud Run's default
TICK_SECONDS = 0.05
EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]{1,9})?)s$")  # google.protobuf.Duration in JSON

_JOB = r"/v2/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/jobs/(?P<job>[^/:]+)"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("POST", "RunJob", re.compile(_JOB + r":run")),
    ("GET", "GetExecution", re.compile(_JOB + r"/executions/(?P<execution>[^/:]+)")),
    ("POST", "CancelExecution", re.compile(_JOB + r"/executions/(?P<execution>[^/:]+):cancel")),
    ("GET", "GetOperation", re.compile(
        r"/v2/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
        r"/operations/(?P<operation>[^/:]+)"
    )),
]


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What of a Cloud Run job's template the stand-in plays: its task timeout (None:
    none) and how often a failed task is retried."""

    task_timeout: float | None
    max_retries: int


def _timestamp(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Execution:
    """One RunJob: its tasks, the environment they got, and what came of them."""

    name: str
    job: str
    task_count: int
    parallelism: int
    max_retries: int
    env: dict[str, str]  # the job's env with the overrides applied (not os.environ)
    task_timeout: float | None  # seconds: the job's, or the RunJob override's
    timeout_override: str | None  # the RunJob call's `timeout`, as sent
    tasks: TaskSet | None  # None when the stand-in does not run tasks
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    cancelled: bool = False
    failed_before_cancel: int = 0  # killed tasks count as cancelled, not failed

    def advance(self) -> None:
        """Collect ended tasks, start waiting ones, and note the end."""
        if self.completed_at is not None:
            return
        if self.tasks is not None:
            self.tasks.step()
        if self.tasks is None or self.tasks.finished:
            self.completed_at = time.time()

    def cancel(self) -> None:
        if self.completed_at is None:
            self.cancelled = True
            if self.tasks is not None:
                self.failed_before_cancel = len(self.tasks.failed)
                self.tasks.cancel()
            self.completed_at = time.time()

    def counts(self) -> dict[str, int]:
        if self.tasks is None:  # not run: counted as succeeded once accepted
            return {"running": 0, "succeeded": self.task_count, "failed": 0, "cancelled": 0,
                    "retried": 0}
        tasks = self.tasks.tasks
        succeeded = sum(t.succeeded for t in tasks)
        running = len(self.tasks.running)
        if self.cancelled:
            failed = self.failed_before_cancel
            cancelled = len(tasks) - succeeded - failed
        else:
            failed, cancelled = len(self.tasks.failed), 0
        return {"running": running, "succeeded": succeeded, "failed": failed,
                "cancelled": cancelled, "retried": sum(t.attempt for t in tasks)}

    def to_json(self) -> Json:
        """The Execution resource as the v2 REST API writes it (camelCase, RFC 3339)."""
        counts = self.counts()
        if self.completed_at is None:
            condition = {"type": "Completed", "state": "CONDITION_PENDING"}
        elif self.cancelled or counts["failed"]:
            reason = "CANCELLED" if self.cancelled else "NON_ZERO_EXIT_CODE"
            condition = {"type": "Completed", "state": "CONDITION_FAILED",
                         "executionReason": reason}
        else:
            condition = {"type": "Completed", "state": "CONDITION_SUCCEEDED"}
        body: Json = {
            "name": self.name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.name)),
            "job": self.job,
            "createTime": _timestamp(self.created_at),
            "startTime": _timestamp(self.created_at),
            "completionTime": _timestamp(self.completed_at),
            "parallelism": self.parallelism,
            "taskCount": self.task_count,
            "template": {
                "containers": [{"env": [{"name": k, "value": v} for k, v in self.env.items()]}],
                "maxRetries": self.max_retries,
                "timeout": None if self.task_timeout is None else f"{self.task_timeout:g}s",
            },
            "reconciling": self.completed_at is None,
            "conditions": [condition],
            "runningCount": counts["running"],
            "succeededCount": counts["succeeded"],
            "failedCount": counts["failed"],
            "cancelledCount": counts["cancelled"],
            "retriedCount": counts["retried"],
        }
        return _without_nulls(body)


def _without_nulls(data: Json) -> Json:
    return {
        k: _without_nulls(v) if isinstance(v, dict) else v
        for k, v in data.items() if v is not None
    }


class CloudRunStandIn(RestStandIn):
    """The Admin API of the Cloud Run jobs of a deployment, served on 127.0.0.1 from a
    background thread: the base job `job` (with `task_timeout` and `max_retries`) and
    `{job}-{class name}` for each of `classes` (with the class's).

    `run_tasks=False` records executions without starting processes (each counts
    as succeeded at once): for tests about the shape of RunJob calls, such as a
    25,000-task orchestration split over three executions.
    """

    name = "cloud-run-standin"
    tick = TICK_SECONDS

    def __init__(
        self,
        *,
        project: str,
        region: str,
        job: str,
        parallelism: int = 0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = WORKER_COMMAND,
        port: int = 0,
        run_tasks: bool = True,
        task_timeout: float | None = None,
        classes: Sequence[ClassJob] = (),
    ) -> None:
        super().__init__(port)
        self.project, self.region, self.job = project, region, job  # the base job
        self.parallelism = parallelism  # 0: every task at once, as Cloud Run's default
        # The base job's task timeout (Cloud Run: 10 min) and retries, then the classes'.
        self.jobs = {job: JobSettings(task_timeout, max_retries)} | {
            f"{job}-{c.name}": JobSettings(c.task_timeout_seconds, c.max_retries)
            for c in classes
        }
        self.env = dict(env or {})
        self.command = tuple(command)
        self.run_tasks = run_tasks
        self._failures: list[int] = []  # HTTP statuses for the next RunJob calls
        self._delays: list[float] = []  # seconds the next RunJob calls wait before acting
        self._executions: dict[str, Execution] = {}
        self._operations: dict[str, str] = {}  # operation name -> execution name

    def stop(self) -> None:
        """Stop serving and kill every task still running: nothing outlives the stand-in."""
        super().stop()
        with self._lock:
            for execution in self._executions.values():
                execution.cancel()

    # -- what tests look at and steer ---------------------------------------------

    @property
    def executions(self) -> list[Execution]:
        with self._lock:
            return list(self._executions.values())

    def execution(self, name: str) -> Execution:
        with self._lock:
            return self._executions[name]

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` RunJob calls answer `status` with a Google error body."""
        with self._lock:
            self._failures.extend([status] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next `n` RunJob calls wait `seconds` before they act (and answer): a slow
        Admin API, for a caller that gives up or dies meanwhile. The run still happens."""
        with self._lock:
            self._delays.extend([seconds] * n)

    # -- the API ------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Json) -> Reply:
        path = urlsplit(path).path
        if method == "GET" and path == "/_standin/calls":
            return 200, self.calls
        for verb, name, pattern in ROUTES:
            match = pattern.fullmatch(path)
            if verb == method and match:
                with self._lock:
                    self._calls[name] += 1
                    delay = self._delays.pop(0) if name == "RunJob" and self._delays else 0.0
                time.sleep(delay)  # not under the lock: other calls go on meanwhile
                with self._lock:
                    try:
                        return 200, self._dispatch(name, match.groupdict(), body)
                    except ApiError as exc:
                        return exc.reply()
        return ApiError(404, f"{method} {path} is not a Cloud Run Admin API v2 method this"
                             " stand-in serves").reply()

    def _dispatch(self, method: str, where: dict[str, str], body: Json) -> Json:
        self._check_location(where)
        if method == "GetOperation":
            return self._operation(where["operation"])
        self._check_job(where)
        if method == "RunJob":
            if self._failures:
                raise ApiError(self._failures.pop(0), "injected failure: try again later")
            return self._run(where["job"], body.get("overrides") or {})
        execution = self._find(where)
        if method == "CancelExecution":
            execution.cancel()
            return self._new_operation(execution)
        execution.advance()
        return execution.to_json()

    def _check_location(self, where: dict[str, str]) -> None:
        if (where["project"], where["region"]) != (self.project, self.region):
            raise ApiError(404, f"Location projects/{where['project']}/locations/"
                                f"{where['region']} is not served here (this stand-in serves"
                                f" projects/{self.project}/locations/{self.region})")

    def _check_job(self, where: dict[str, str]) -> None:
        if where["job"] not in self.jobs:
            raise ApiError(404, f"Resource '{where['job']}' of kind 'JOB' in region"
                                f" '{self.region}' in project '{self.project}' does not exist.")

    def _find(self, where: dict[str, str]) -> Execution:
        name = f"{self._job_name(where['job'])}/executions/{where['execution']}"
        try:
            return self._executions[name]
        except KeyError:
            raise ApiError(404, f"Resource '{where['execution']}' of kind 'EXECUTION' in"
                                f" region '{self.region}' in project '{self.project}'"
                                " does not exist.") from None

    def _job_name(self, job: str) -> str:
        return f"projects/{self.project}/locations/{self.region}/jobs/{job}"

    def _run(self, job: str, overrides: Json) -> Json:
        if self._stopped.is_set():  # stop() is killing every task: start none
            raise ApiError(503, "the stand-in is stopping")
        task_count = int(_field(overrides, "taskCount", "task_count") or 1)
        env = dict(self.env)
        for container in _field(overrides, "containerOverrides", "container_overrides") or []:
            env.update({e["name"]: e.get("value", "") for e in container.get("env") or []})
        settings = self.jobs[job]
        override = overrides.get("timeout")
        task_timeout = settings.task_timeout if override is None else _seconds(override)
        name = f"{self._job_name(job)}/executions/{job}-{uuid.uuid4().hex[:5]}"
        parallelism = min(self.parallelism or task_count, task_count)
        tasks = None
        if self.run_tasks:
            tasks = TaskSet(
                command=self.command,
                env={**os.environ, **env, "CLOUD_RUN_JOB": job,
                     "CLOUD_RUN_EXECUTION": name.rsplit("/", 1)[-1]},
                task_count=task_count,
                parallelism=parallelism,
                max_retries=settings.max_retries,
                task_timeout=task_timeout,
            )
        execution = Execution(
            name=name, job=job, task_count=task_count, parallelism=parallelism,
            max_retries=settings.max_retries, env=env, task_timeout=task_timeout,
            timeout_override=override, tasks=tasks,
        )
        self._executions[name] = execution
        execution.advance()
        return self._new_operation(execution)

    def _new_operation(self, execution: Execution) -> Json:
        name = f"projects/{self.project}/locations/{self.region}/operations/{uuid.uuid4()}"
        self._operations[name] = execution.name
        return self._operation(name.rsplit("/", 1)[-1])

    def _operation(self, operation_id: str) -> Json:
        """A google.longrunning.Operation: the Execution is its metadata, and once the
        execution has ended, also its response."""
        name = f"projects/{self.project}/locations/{self.region}/operations/{operation_id}"
        if name not in self._operations:
            raise ApiError(404, f"Operation {name} does not exist.")
        execution = self._executions[self._operations[name]]
        resource = {"@type": EXECUTION_TYPE, **execution.to_json()}
        operation: Json = {"name": name, "metadata": resource,
                           "done": execution.completed_at is not None}
        if operation["done"]:
            operation["response"] = resource
        return operation

    def drive(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            with self._lock:
                for execution in self._executions.values():
                    execution.advance()


def _seconds(duration: Any) -> float:
    """A google.protobuf.Duration as proto3 JSON writes it ("3600s"), in seconds; 400
    INVALID_ARGUMENT for anything else, or past Cloud Run's limit of 168 hours."""
    match = _DURATION.match(duration) if isinstance(duration, str) else None
    if match is None or not 0 < float(match[1]) <= MAX_TASK_TIMEOUT_SECONDS:
        raise ApiError(400, f"Invalid value at 'overrides.timeout': {duration!r}")
    return float(match[1])


def _field(data: Json, camel: str, snake: str) -> Any:
    """Proto3 JSON accepts both spellings of a field name."""
    return data.get(camel, data.get(snake))


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobfleet.dev.cloud_run",
        description="Serve a stand-in Cloud Run Admin API whose tasks are local processes.",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--parallelism", type=int, default=0,
                        help="tasks running at once (0: all of them)")
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    parser.add_argument("--task-timeout", type=float, metavar="S",
                        help="kill a task attempt running longer (Cloud Run's task timeout)")
    parser.add_argument("--classes", type=Path, metavar="FILE",
                        help="serve a job per worker class of this file (the JSON of"
                             " `jobfleet worker-classes`) too")
    parser.add_argument("--env", type=_env_pair, action="append", default=[],
                        metavar="KEY=VALUE", help="the job's container environment")
    args = parser.parse_args(argv)
    try:
        classes = read_class_jobs(args.classes) if args.classes else []
    except ConfigurationError as exc:
        parser.error(str(exc))
    standin = CloudRunStandIn(
        project=args.project, region=args.region, job=args.job, parallelism=args.parallelism,
        max_retries=args.max_retries, env=dict(args.env), port=args.port,
        task_timeout=args.task_timeout,
        classes=classes,
    ).start()
    return serve_until_signalled(standin, [f"JOBFLEET_CLOUD_RUN_ENDPOINT={standin.url}"])

if __name__ == "__main__":
    sys.exit(main())
