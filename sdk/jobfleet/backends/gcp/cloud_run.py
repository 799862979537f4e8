"""The Cloud Run Jobs launcher: an orchestration's workers are the tasks of one execution.

The Cloud Run jobs run `jobfleet worker`: the base job (`JOBFLEET_CLOUD_RUN_JOB`) for the
jobs that declare no Resources, and one job per worker class,
`{JOBFLEET_CLOUD_RUN_JOB}-{class name}` (core/worker_classes.py), for those that do.
Every launch path goes through `launch` (the kick-off, the sweep's launches and
recovery executions, a pipeline's next stage), so each picks the job's class here.

Each RunJob call overrides the task count and the environment, and for a job of a class
the task timeout: the job's declared `task_timeout`, so that an execution gets the
timeout of the code that kicked it off even before `terraform apply` has caught up (and
not Cloud Run's default of 10 minutes). A job with no Resources keeps the base job's own
timeout: a task runs a whole shard of instances, so the per-attempt timeout says
nothing about how long a task may take (the worker enforces it per attempt).

One orchestration is one RunJob call (docs/design.md: Admin API calls are O(1) per
orchestration, parameter sets live in the store and never in the environment); past
Cloud Run's 10,000 tasks per execution it is a few executions, whose tasks number their
shards on from JOBFLEET_SHARD_OFFSET.

`launch` returns as soon as Cloud Run has accepted the execution: the long-running
operation's metadata already names it, and waiting for the operation would mean
waiting for every task to finish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from google.api_core.exceptions import FailedPrecondition, NotFound, PermissionDenied
from google.cloud import run_v2

from jobfleet.backends.gcp.google_apis import (
    ADMIN_API_RETRY,
    CALL_TIMEOUT_SECONDS,
    client_arguments,
)
from jobfleet.config import Settings
from jobfleet.core.models import NewOrchestration
from jobfleet.core.registry import get_job
from jobfleet.core.resources import Resources
from jobfleet.core.worker_classes import HOW_TO_CREATE, cloud_run_job
from jobfleet.errors import ConfigurationError, JobfleetError, UnknownJob

log = logging.getLogger(__name__)

MAX_TASKS_PER_EXECUTION = 10_000  # Cloud Run's cap
# A RunJob call is retried for up to a minute (ADMIN_API_RETRY): an orchestration with no
# execution for longer than this was committed by a kick-off that died before launching.
LAUNCH_GRACE_SECONDS = 120.0
# RunJob has no request id: a retry after a reply lost on the way back starts a second
# execution. Its tasks claim from the same shards, so it costs compute, not correctness.

Client = TypeVar("Client", run_v2.JobsClient, run_v2.ExecutionsClient)


@dataclass(frozen=True, slots=True)
class Target:
    """The Cloud Run job an orchestration's tasks run on, and their task timeout."""

    job: str  # projects/P/locations/R/jobs/NAME
    resources: Resources | None  # None: the base job, with its own timeout
    job_name: str  # the jobfleet job whose tasks these are

    @property
    def timeout(self) -> timedelta | None:
        # Resources refuses a task timeout past Cloud Run's limit of 168 hours.
        if self.resources is None:
            return None
        return timedelta(seconds=self.resources.task_timeout_seconds)


class CloudRunLauncher:
    def __init__(
        self,
        settings: Settings,
        client: run_v2.JobsClient | None = None,
        executions: run_v2.ExecutionsClient | None = None,
    ) -> None:
        self.settings = settings
        self.jobs_parent = f"projects/{settings.require_project()}/locations/{settings.region}"
        self.job = f"{self.jobs_parent}/jobs/{settings.cloud_run_job}"  # the base job
        # Built on first use: a worker opens the backend too, and never launches.
        self._jobs = client
        self._executions = executions

    @property
    def jobs_client(self) -> run_v2.JobsClient:
        if self._jobs is None:
            self._jobs = _client(run_v2.JobsClient, self.settings)
        return self._jobs

    @property
    def executions_client(self) -> run_v2.ExecutionsClient:
        if self._executions is None:
            self._executions = _client(run_v2.ExecutionsClient, self.settings)
        return self._executions

    launch_grace = LAUNCH_GRACE_SECONDS

    def launch(
        self,
        orchestration: NewOrchestration,
        task_count: int,
        jobs: list[str],
        shards: Sequence[int] | None = None,
    ) -> str:
        """One execution per 10,000 tasks of the job's class; all of them start, or none
        is left running."""
        target = self.target(orchestration.job_name)
        started: list[str] = []
        try:
            for offset in range(0, task_count, MAX_TASKS_PER_EXECUTION):
                count = min(MAX_TASKS_PER_EXECUTION, task_count - offset)
                env = self.settings.worker_environment(
                    orchestration.job_name, orchestration.id, jobs, shard_offset=offset,
                    shards=None if shards is None else shards[offset: offset + count],
                    traceparent=orchestration.traceparent,
                )
                started.append(self._run(target, env, count))
        except Exception:
            with contextlib.suppress(Exception):
                self.cancel(",".join(started))
            raise
        return ",".join(started)

    def target(self, job_name: str) -> Target:
        """The job's class's Cloud Run job, from the Resources its definition declares.

        A job not registered in this process runs on the base job, with the base job's
        timeout. A kick-off always has the definition (it refuses unknown jobs), so this
        is a sweep or a pipeline stage in a process whose JOBFLEET_JOBS lacks the job's
        module, or an orchestration of a job that a later deployment removed. Refusing
        would leave such an orchestration InProgress forever, every sweep failing on it;
        on the base job its workers either find the job (their JOBFLEET_JOBS may import
        it) or end it Errored with the worker's own "unknown job" failure, which a user
        can read. The warning says which job went where, for the first case."""
        try:
            resources = get_job(job_name).resources
        except UnknownJob:
            log.warning(
                "job %r is not registered in this process (JOBFLEET_JOBS): its tasks run on"
                " the base Cloud Run job %s, whatever Resources it declares", job_name,
                self.job,
            )
            resources = None
        name = cloud_run_job(self.settings.cloud_run_job, resources)
        return Target(f"{self.jobs_parent}/jobs/{name}", resources, job_name)

    def _run(self, target: Target, env: dict[str, str], task_count: int) -> str:
        overrides = run_v2.RunJobRequest.Overrides(
            task_count=task_count,
            container_overrides=[
                run_v2.RunJobRequest.Overrides.ContainerOverride(
                    env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()]
                )
            ],
            timeout=target.timeout,
        )
        request = run_v2.RunJobRequest(name=target.job, overrides=overrides)
        try:
            operation = self.jobs_client.run_job(
                request=request, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
            )
        except (NotFound, PermissionDenied) as exc:
            raise _missing(target, exc.message, self.settings.cloud_run_endpoint) from exc
        execution = operation.metadata
        if not isinstance(execution, run_v2.Execution) or not execution.name:
            raise JobfleetError(
                f"Cloud Run accepted a run of {target.job} (operation"
                f" {operation.operation.name}) but did not name its execution"
            )
        return execution.name

    def cancel(self, execution: str) -> None:
        for name in _names(execution):
            try:
                self.executions_client.cancel_execution(
                    name=name, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
                )
            except (NotFound, FailedPrecondition):
                pass  # gone, or ended already

    def stop_tasks(self, execution: str, owners: Sequence[str]) -> bool:
        """Cloud Run stops a single task only at its timeout: the sweep runs a recovery
        execution for the hung tasks' shards instead."""
        return False

    def is_running(self, execution: str) -> bool:
        """Running while any of its executions has no completion time. A failed call
        raises rather than answering False: False makes the caller give up on the
        orchestration's unfinished instances."""
        for name in _names(execution):
            try:
                found = self.executions_client.get_execution(
                    name=name, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
                )
            except NotFound:
                continue
            if "completion_time" not in found:
                return True
        return False


def _missing(target: Target, why: str, endpoint: str | None) -> ConfigurationError:
    """What to do about a Cloud Run job that is not there (or not ours to run)."""
    dev = (" (with `jobfleet dev up`: restart it with JOBFLEET_JOBS naming the job's module,"
           " and it serves the classes of that module)") if endpoint else ""
    if target.resources is None:
        return ConfigurationError(
            f"cannot run the Cloud Run job {target.job} ({why}); deploy it (its"
            " container runs `jobfleet worker`) or point JOBFLEET_CLOUD_RUN_JOB,"
            " JOBFLEET_REGION and GOOGLE_CLOUD_PROJECT at one"
        )
    return ConfigurationError(
        f"cannot run the Cloud Run job {target.job} of worker class"
        f" {target.resources.class_name}, which job {target.job_name!r} declares ({why}); the"
        f" class is new or its job was not created: {HOW_TO_CREATE}{dev}"
    )


def _names(execution: str) -> list[str]:
    return [name for name in execution.split(",") if name]


def _client(kind: type[Client], settings: Settings) -> Client:
    """With JOBFLEET_CLOUD_RUN_ENDPOINT, the stand-in's; else the production client."""
    return kind(**client_arguments(settings.cloud_run_endpoint))
