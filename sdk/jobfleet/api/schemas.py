"""The API's request and response bodies, as pydantic models: they make the OpenAPI
document, and the core checks everything again (one rule, core/options.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobfleet.core.options import MAX_PARALLELISM, MAX_RETRIES, MAX_TIMEOUT

# One request's worth: the SDK streams more than this from an iterator.
MAX_PARAM_SETS = 100_000


class KickOff(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_name: str = Field(min_length=1, max_length=200, description="a registered job's name")
    params: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_PARAM_SETS,
        description="one JSON object per job instance",
    )
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    tags: dict[str, str] | None = None
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT, description="seconds")


class Links(BaseModel):
    self: str
    jobs: str
    results: str
    events: str
    cancel: str
    dashboard: str


class Orchestration(BaseModel):
    orchestration_id: str
    job_name: str
    status: str
    total: int
    pending: int
    in_progress: int
    succeeded: int
    failed: int
    cancelled: int
    tags: dict[str, str]
    created_at: float
    finished_at: float | None
    links: Links


class OrchestrationPage(BaseModel):
    orchestrations: list[Orchestration]
    next_page_token: str | None


class ErrorDetail(BaseModel):
    type: str
    message: str
    traceback: str = ""


class JobInstance(BaseModel):
    job_id: str
    index: int
    status: str
    attempts: int
    params: dict[str, Any]
    result: Any = None
    error: ErrorDetail | None = None
    started_at: float | None
    finished_at: float | None


class JobInstancePage(BaseModel):
    jobs: list[JobInstance]
    next_page_token: str | None


class Success(BaseModel):
    job_id: str
    index: int
    params: dict[str, Any]
    result: Any = None


class Failure(BaseModel):
    job_id: str
    index: int
    params: dict[str, Any]
    error: ErrorDetail
    attempts: int
    status: str


class Results(BaseModel):
    orchestration_id: str
    status: str
    complete: bool = Field(description="every instance has finished")
    successes: list[Success]
    failures: list[Failure]


class LogLine(BaseModel):
    text: str = Field(description="the line as `jobfleet logs` prints it")
    job_id: str | None = Field(description="the job instance that wrote it, if one")


class LogLines(BaseModel):
    orchestration_id: str
    job_id: str | None
    lines: list[LogLine] = Field(description="the newest lines, oldest first")
    truncated: bool = Field(description="older lines were left out (see `limit`)")


class Job(BaseModel):
    name: str
    retries: int
    backoff: float
    timeout: float | None
    params_schema: dict[str, Any]


class JobList(BaseModel):
    jobs: list[Job]


class Problem(BaseModel):
    code: str = Field(description="a stable, machine-readable name of the problem")
    message: str = Field(description="what is wrong and what to do")
    index: int | None = Field(default=None, description="the refused parameter set, if one")


class ErrorBody(BaseModel):
    error: Problem


class Health(BaseModel):
    status: str
    backend: str


class SweepReport(BaseModel):
    looked_at: int = Field(description="unsettled orchestrations looked at")
    announced: int = Field(description="events published that were never recorded")
    launched: int = Field(description="orchestrations whose kick-off died before launching")
    reaped: int = Field(description="orchestrations with hung workers' claims recovered")
    recovered: int = Field(description="recovery executions launched for shards left behind")
    ended: int = Field(description="orchestrations ended Errored: executions made no progress")
    failed: int = Field(description="orchestrations that could not be swept now (tried again)")
