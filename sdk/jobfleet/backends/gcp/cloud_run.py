"""The Cloud Run Jobs launcher: an orchestration's workers are the tasks of one execution.

The Cloud Run job (`JOBFLEET_CLOUD_RUN_JOB`) runs `jobfleet worker`; each RunJob
call overrides only its task count and environment. One orchestration is one
RunJob call (docs/design.md: Admin API calls are O(1) per orchestration, parameter
sets live in the store and never in the environment); past Cloud Run's 10,000
tasks per execution it is a few executions, whose tasks number their shards on
from JOBFLEET_SHARD_OFFSET. No task timeout is set: a task runs a whole shard of
instances, so the per-attempt timeout says nothing about how long a task may take
(the worker enforces it per attempt).

`launch` returns as soon as Cloud Run has accepted the execution: the long-running
operation's metadata already names it, and waiting for the operation would mean
waiting for every task to finish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
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
from jobfleet.errors import ConfigurationError, JobfleetError

MAX_TASKS_PER_EXECUTION = 10_000  # Cloud Run's cap
# A RunJob call is retried for up to a minute (ADMIN_API_RETRY): an orchestration with no
# execution for longer than this was committed by a kick-off that died before launching.
LAUNCH_GRACE_SECONDS = 120.0
# RunJob has no request id: a retry after a reply lost on the way back starts a second
# execution. Its tasks claim from the same shards, so it costs compute, not correctness.

Client = TypeVar("Client", run_v2.JobsClient, run_v2.ExecutionsClient)


class CloudRunLauncher:
    def __init__(
        self,
        settings: Settings,
        client: run_v2.JobsClient | None = None,
        executions: run_v2.ExecutionsClient | None = None,
    ) -> None:
        self.settings = settings
        self.job = (
            f"projects/{settings.require_project()}/locations/{settings.region}"
            f"/jobs/{settings.cloud_run_job}"
        )
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
        """One execution per 10,000 tasks; all of them start, or none is left running."""
        started: list[str] = []
        try:
            for offset in range(0, task_count, MAX_TASKS_PER_EXECUTION):
                count = min(MAX_TASKS_PER_EXECUTION, task_count - offset)
                env = self.settings.worker_environment(
                    orchestration.job_name, orchestration.id, jobs, shard_offset=offset,
                    shards=None if shards is None else shards[offset: offset + count],
                    traceparent=orchestration.traceparent,
                )
                started.append(self._run(env, count))
        except Exception:
            with contextlib.suppress(Exception):
                self.cancel(",".join(started))
            raise
        return ",".join(started)

    def _run(self, env: dict[str, str], task_count: int) -> str:
        overrides = run_v2.RunJobRequest.Overrides(
            task_count=task_count,
            container_overrides=[
                run_v2.RunJobRequest.Overrides.ContainerOverride(
                    env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()]
                )
            ],
        )
        request = run_v2.RunJobRequest(name=self.job, overrides=overrides)
        try:
            operation = self.jobs_client.run_job(
                request=request, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
            )
        except (NotFound, PermissionDenied) as exc:
            raise ConfigurationError(
                f"cannot run the Cloud Run job {self.job} ({exc.message}); deploy it (its"
                " container runs `jobfleet worker`) or point JOBFLEET_CLOUD_RUN_JOB,"
                " JOBFLEET_REGION and GOOGLE_CLOUD_PROJECT at one"
            ) from exc
        execution = operation.metadata
        if not isinstance(execution, run_v2.Execution) or not execution.name:
            raise JobfleetError(
                f"Cloud Run accepted a run of {self.job} (operation"
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


def _names(execution: str) -> list[str]:
    return [name for name in execution.split(",") if name]


def _client(kind: type[Client], settings: Settings) -> Client:
    """With JOBFLEET_CLOUD_RUN_ENDPOINT, the stand-in's; else the production client."""
    return kind(**client_arguments(settings.cloud_run_endpoint))
