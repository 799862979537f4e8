"""The API's request and response bodies, as pydantic models: they make the OpenAPI
document, and the core checks everything again (one rule, core/options.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobfleet.core.options import MAX_PARALLELISM, MAX_RETRIES, MAX_TIMEOUT
from jobfleet.core.pipeline import MAX_STAGES, When
from jobfleet.core.schedules import CatchUp, FireState, Overlap, Trigger
from jobfleet.core.webhooks import MAX_WEBHOOKS

# One request's worth: the SDK streams more than this from an iterator.
MAX_PARAM_SETS = 100_000


class NextStage(BaseModel):
    """A pipeline stage to come; its params are fixed, or what a function of the
    previous stage's results returns (a name the API process can import)."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=200, description="a registered job's name")
    params: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=MAX_PARAM_SETS,
        description="fixed parameter sets (or params_from)",
    )
    params_from: str | None = Field(
        default=None, min_length=1, max_length=300, examples=["my_jobs:rows_of"],
        description="'module:function' called with the previous stage's results when it "
        "ends; returns the parameter sets (or params)",
    )
    when: When = Field(default=When.COMPLETED,
                       description="completed: only after the previous stage Completed; "
                       "always: after any end")
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT, description="seconds")
    tags: dict[str, str] = Field(default_factory=dict)


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
    webhooks: list[str] | None = Field(
        default=None, max_length=MAX_WEBHOOKS,
        description="URLs that receive the signed completion event (default: the job's)",
    )
    then: list[NextStage] | None = Field(
        default=None, max_length=MAX_STAGES,
        description="stages that follow, in order: this kick-off is the pipeline's first",
    )


RerunChoice = Literal["failed", "cancelled"]


def _failed() -> list[RerunChoice]:
    return ["failed"]


class Rerun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    which: list[RerunChoice] = Field(
        default_factory=_failed, min_length=1, max_length=2,
        description="the instances to run again: failed (Errored), cancelled, or both",
    )
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM,
                                    description="default: the run's, at most one per instance")


class Links(BaseModel):
    self: str
    jobs: str
    results: str
    events: str
    cancel: str
    rerun: str
    dashboard: str


class StageLink(BaseModel):
    id: str
    job_name: str
    status: str
    stage: int = Field(description="its position in the pipeline, from 1")
    next_note: str | None = Field(description="why the stage after it did not start")


class RunLinks(Links):
    """The URLs, and how this run links to others (ids; null or empty when none)."""

    parent: str | None = Field(description="the pipeline stage this one follows")
    next: str | None = Field(description="the stage started after this one, once it is")
    next_note: str | None = Field(description="why the next stage did not start")
    pipeline: str | None = Field(description="the pipeline's first stage (null: no stage)")
    stage: int | None = Field(description="this stage's position, from 1")
    stages_total: int | None = Field(description="the stages if every one runs")
    stages: list[StageLink] = Field(description="the stages started so far, in order")
    rerun_of: str | None = Field(description="the run this one re-runs")
    reruns: list[str] = Field(description="this run's re-runs, oldest first")


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


class OrchestrationDetail(Orchestration):
    links: RunLinks


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
    runs: list[str] | None = Field(
        default=None, description="with merged=true: the run and its re-runs, whose last "
        "outcome of each index is given (null otherwise)",
    )


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


# -- schedules -----------------------------------------------------------------------------

MAX_ZONE_NAME = 64  # the longest IANA zone name is 32 characters


def _settable(**constraints: Any) -> Any:
    """A PATCH field that may be left out but not set to null: unset is None, which
    `exclude_unset` drops; an explicit null fails the field's own (non-null) type."""

    def no_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)

    return Field(default=None, json_schema_extra=no_default, **constraints)


class NewSchedule(BaseModel):
    """A schedule to create; core/schedules.py checks it all again and names what is
    wrong (InvalidSchedule) before anything is created."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100,
                      description="letters, digits, '-' and '_' (a Cloud Scheduler job id)")
    job_name: str = Field(min_length=1, max_length=200, description="a registered job's name")
    cron: str = Field(min_length=1, max_length=200, examples=["0 6 * * 1-5"],
                      description="unix-cron, five fields, as Cloud Scheduler takes it")
    timezone: str = Field(default="UTC", min_length=1, max_length=MAX_ZONE_NAME,
                          description="an IANA time zone the cron is read in")
    params: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=MAX_PARAM_SETS,
        description="fixed parameter sets, one per job instance (or params_provider)",
    )
    params_provider: str | None = Field(
        default=None, min_length=1, max_length=300,
        description="a registered params provider, called at every fire (or params)",
    )
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT, description="seconds")
    tags: dict[str, str] = Field(default_factory=dict)
    overlap: Overlap = Field(default=Overlap.SKIP,
                             description="what a fire does while the previous run is unfinished")
    catch_up: CatchUp = Field(default=CatchUp.LATEST,
                              description="what a scheduler that was down does with missed fires")
    description: str = Field(default="", max_length=2000)
    paused: bool = False


class ScheduleChanges(BaseModel):
    """The fields to change; those left out stay. `params`, `params_provider`,
    `parallelism`, `retries` and `timeout` may be set to null (the default)."""

    model_config = ConfigDict(extra="forbid")

    job_name: str = _settable(min_length=1, max_length=200)
    cron: str = _settable(min_length=1, max_length=200)
    timezone: str = _settable(min_length=1, max_length=MAX_ZONE_NAME)
    params: list[dict[str, Any]] | None = Field(default=None, min_length=1,
                                                max_length=MAX_PARAM_SETS)
    params_provider: str | None = Field(default=None, min_length=1, max_length=300)
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT)
    tags: dict[str, str] = _settable()
    overlap: Overlap = _settable()
    catch_up: CatchUp = _settable()
    description: str = _settable(max_length=2000)
    paused: bool = _settable(description="the same as /pause or /resume")


class FireLinks(BaseModel):
    orchestration: str
    dashboard: str


class Fire(BaseModel):
    schedule: str
    scheduled_time: str = Field(description="the time fired, RFC 3339 (UTC)")
    scheduled_at: float = Field(description="the same, in seconds since the epoch")
    trigger: Trigger
    state: FireState
    reason: str = Field(description="why it was skipped or failed")
    attempt: int = Field(description="deliveries that claimed it")
    fired_at: float
    orchestration_id: str | None = Field(description="the run it started, if it did")
    run_status: str | None = Field(description="that run's status now (null when none)")
    links: FireLinks | None


class ScheduleLinks(BaseModel):
    self: str
    fire: str
    trigger: str
    next: str
    runs: str = Field(description="the runs it started (orchestrations tagged schedule:NAME)")
    dashboard: str


class Schedule(BaseModel):
    name: str
    job_name: str
    cron: str
    timezone: str
    params: list[Any] | None
    params_provider: str | None
    parallelism: int | None
    retries: int | None
    timeout: float | None
    tags: dict[str, str]
    overlap: Overlap
    catch_up: CatchUp
    paused: bool
    description: str
    origin: str = Field(description="code (declared in a jobs module) or runtime")
    created_at: float
    updated_at: float
    next_fire_time: str | None = Field(
        description="when the cron next names, RFC 3339 (a paused schedule skips it)"
    )
    next_fire_times: list[str] = Field(description="the next few (5 for one schedule)")
    last_fire: Fire | None
    recent_fires: list[Fire] = Field(description="newest scheduled time first")
    links: ScheduleLinks


class ScheduleList(BaseModel):
    schedules: list[Schedule]


class FireAnswer(BaseModel):
    fire: Fire
    orchestration_id: str | None = Field(description="the run started for that time, if one")
    state: FireState
    duplicate: bool = Field(description="this time was fired before: nothing new started")


class NextFireTimes(BaseModel):
    name: str
    timezone: str
    paused: bool
    times: list[str] = Field(description="RFC 3339 (UTC)")
