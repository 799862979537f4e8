"""The `/v1/schedules` endpoints, and the fire route Cloud Scheduler calls: each
translates HTTP to one `JobFleet.schedules` call and back, like routes.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from jobfleet import tracing
from jobfleet.api import schemas
from jobfleet.api.routes import ERRORS, PREFIX, fleet_of
from jobfleet.core.cron import iso, parse_iso
from jobfleet.core.schedules import SCHEDULE_TAG, Fire, Schedule
from jobfleet.errors import FireInProgress, JobfleetError, UnknownOrchestration, UnknownSchedule
from jobfleet.fleet import JobFleet
from jobfleet.scheduling import FireResult

SCHEDULE_TIME_HEADER = "X-CloudScheduler-ScheduleTime"
FIRE_RETRY_AFTER_SECONDS = 5  # a delivery holding the time is normally done by then
NEXT_TIMES = 5
MAX_NEXT_TIMES = 100
MAX_FIRES = 100

router = APIRouter(prefix=PREFIX, tags=["schedules"])


def _problem(description: str) -> dict[str, Any]:
    return {"model": schemas.ErrorBody, "description": description}


SCHEDULE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: _problem("no such schedule"),
    422: _problem("the request does not fit the schema, or the schedule is refused "
                  "(cron, time zone, job, params, options): the message names the problem"),
}
FIRING_ERRORS: dict[int | str, dict[str, Any]] = {
    **SCHEDULE_ERRORS,
    500: _problem("the fire failed (params provider or kick-off) and was recorded as "
                  "failed: a retried delivery fires it again"),
    503: _problem("another delivery is firing this time right now; retry after Retry-After"),
}


class BadScheduleTime(JobfleetError):
    """The fire route's X-CloudScheduler-ScheduleTime header is missing or not a time."""


class FireFailed(JobfleetError):
    """A fire that failed after it was claimed: recorded as failed, so a retried
    delivery of the same time fires it again."""

    def __init__(self, name: str, scheduled_at: float, cause: Exception) -> None:
        super().__init__(
            f"schedule {name!r} at {iso(scheduled_at)} failed to fire: "
            f"{type(cause).__name__}: {cause}. It is recorded as failed; delivering the "
            "same time again fires it again"
        )


# -- reading -----------------------------------------------------------------------------


@router.get("/schedules", response_model=schemas.ScheduleList, responses=SCHEDULE_ERRORS,
            summary="Schedules by name, each with its next fire time and last fires")
def list_schedules(
    request: Request,
    fires: Annotated[int, Query(ge=0, le=MAX_FIRES, description="recent fires per schedule")] = 1,
) -> dict[str, Any]:
    fleet = fleet_of(request)
    return {"schedules": [schedule_json(fleet, s, next_times=1, fires=fires)
                          for s in fleet.schedules.list()]}


@router.get("/schedules/{name}", response_model=schemas.Schedule, responses=SCHEDULE_ERRORS,
            summary="One schedule: its definition, next fire times and recent fires")
def get_schedule(
    name: str,
    request: Request,
    fires: Annotated[int, Query(ge=1, le=MAX_FIRES, description="recent fires")] = 20,
) -> dict[str, Any]:
    fleet = fleet_of(request)
    return schedule_json(fleet, fleet.schedules.get(name), next_times=NEXT_TIMES, fires=fires)


@router.get("/schedules/{name}/next", response_model=schemas.NextFireTimes,
            responses=SCHEDULE_ERRORS, summary="The next fire times the cron names")
def next_fire_times(
    name: str,
    request: Request,
    count: Annotated[int, Query(ge=1, le=MAX_NEXT_TIMES)] = NEXT_TIMES,
) -> dict[str, Any]:
    schedules = fleet_of(request).schedules
    schedule = schedules.get(name)
    return {"name": name, "timezone": schedule.timezone, "paused": schedule.paused,
            "times": [iso(t) for t in schedule.timing.next_times(time.time(), count)]}


# -- declaring ---------------------------------------------------------------------------


@router.post("/schedules", status_code=201, response_model=schemas.Schedule,
             responses={**SCHEDULE_ERRORS, 409: _problem("a schedule of that name exists")},
             summary="Create a schedule")
def create_schedule(
    body: schemas.NewSchedule, request: Request, response: Response
) -> dict[str, Any]:
    """Checked first (cron, time zone, job, params against the job's schema, options):
    a refusal names the problem and creates nothing."""
    fleet = fleet_of(request)
    options = body.model_dump(exclude={"name", "job_name", "cron", "paused"})
    made = fleet.schedules.create(body.name, job=body.job_name, cron=body.cron,
                                  paused=body.paused, **options)
    response.headers["Location"] = links(made.name)["self"]
    return schedule_json(fleet, made, next_times=NEXT_TIMES, fires=0)


@router.patch("/schedules/{name}", response_model=schemas.Schedule, responses=SCHEDULE_ERRORS,
              summary="Change some fields of a schedule")
def update_schedule(
    name: str, body: schemas.ScheduleChanges, request: Request
) -> dict[str, Any]:
    fleet = fleet_of(request)
    changes = body.model_dump(exclude_unset=True)
    paused = changes.pop("paused", None)
    changed = fleet.schedules.update(name, **changes) if changes else fleet.schedules.get(name)
    if paused is not None:
        changed = fleet.schedules.pause(name) if paused else fleet.schedules.resume(name)
    return schedule_json(fleet, changed, next_times=NEXT_TIMES, fires=0)


@router.delete("/schedules/{name}", status_code=204, response_class=Response,
               responses=SCHEDULE_ERRORS, summary="Delete a schedule (its runs stay)")
def delete_schedule(name: str, request: Request) -> Response:
    fleet_of(request).schedules.delete(name)
    return Response(status_code=204)


@router.post("/schedules/{name}/pause", response_model=schemas.Schedule,
             responses=SCHEDULE_ERRORS, summary="Stop firing until resumed")
def pause_schedule(name: str, request: Request) -> dict[str, Any]:
    fleet = fleet_of(request)
    return schedule_json(fleet, fleet.schedules.pause(name), next_times=NEXT_TIMES, fires=0)


@router.post("/schedules/{name}/resume", response_model=schemas.Schedule,
             responses=SCHEDULE_ERRORS, summary="Fire again from the next cron time on")
def resume_schedule(name: str, request: Request) -> dict[str, Any]:
    fleet = fleet_of(request)
    return schedule_json(fleet, fleet.schedules.resume(name), next_times=NEXT_TIMES, fires=0)


# -- firing ------------------------------------------------------------------------------


@router.post("/schedules/{name}/trigger", status_code=201, response_model=schemas.FireAnswer,
             responses=FIRING_ERRORS, summary="Run the schedule now, outside its cron")
def trigger(name: str, request: Request) -> dict[str, Any]:
    """Fires the current time, paused or not; the overlap policy still applies (a
    skipped fire is recorded with its reason, and started nothing)."""
    fleet = fleet_of(request)
    with tracing.continued(request.headers.get("traceparent")):
        result = _firing(name, time.time(), lambda: fleet.schedules.trigger(name))
    return fire_answer(fleet, result)


@router.post("/schedules/{name}/fire", response_model=schemas.FireAnswer,
             responses={**FIRING_ERRORS, 400: _problem(
                 f"{SCHEDULE_TIME_HEADER} is missing or not an RFC 3339 time")},
             summary="Fire one scheduled time, once however often it is delivered "
                     "(what Cloud Scheduler calls)")
def fire(
    name: str,
    request: Request,
    schedule_time: Annotated[str | None, Header(
        alias=SCHEDULE_TIME_HEADER,
        description="the scheduled time, RFC 3339, as Cloud Scheduler sends it",
    )] = None,
) -> dict[str, Any]:
    """200 with what came of the time: a run started, skipped (paused, or the previous
    run is unfinished) or, for a time fired before, `duplicate` with that first answer.
    503 with Retry-After while another delivery is firing the same time, and 500 when
    the fire failed: both make Cloud Scheduler retry the delivery."""
    scheduled_at = _scheduled_at(schedule_time)
    fleet = fleet_of(request)
    with tracing.continued(request.headers.get("traceparent")):
        result = _firing(name, scheduled_at,
                         lambda: fleet.schedules.fire(name, scheduled_at))
    return fire_answer(fleet, result)


def _scheduled_at(header: str | None) -> float:
    if header is None or not header.strip():
        raise BadScheduleTime(
            f"the {SCHEDULE_TIME_HEADER} header is missing: it names the scheduled time to "
            "fire, in RFC 3339 (Cloud Scheduler sends it on every delivery). To run a "
            "schedule now, POST /v1/schedules/NAME/trigger"
        )
    try:
        return parse_iso(header)
    except (ValueError, OverflowError):
        shown = header if len(header) <= 60 else header[:60] + "..."
        raise BadScheduleTime(
            f"the {SCHEDULE_TIME_HEADER} header {shown!r} is not an RFC 3339 time with an "
            "offset, such as 2030-01-31T06:00:00Z"
        ) from None


def _firing(name: str, scheduled_at: float, fire: Callable[[], FireResult]) -> FireResult:
    """What a fire raised, as the API answers it: a failure after the claim becomes
    FireFailed (500), so that Cloud Scheduler's retry delivers the time again."""
    try:
        result = fire()
    except (UnknownSchedule, FireInProgress):
        raise
    except Exception as exc:
        raise FireFailed(name, scheduled_at, exc) from exc
    return result


# -- answers -----------------------------------------------------------------------------


def links(name: str) -> dict[str, str]:
    base = f"{PREFIX}/schedules/{name}"
    return {
        "self": base, "fire": f"{base}/fire", "trigger": f"{base}/trigger",
        "next": f"{base}/next", "runs": f"{PREFIX}/orchestrations?tag={SCHEDULE_TAG}:{name}",
        "dashboard": f"/schedules#schedule-{name}",
    }


def schedule_json(
    fleet: JobFleet, schedule: Schedule, *, next_times: int, fires: int
) -> dict[str, Any]:
    """The schedule as the API shows it: `fires` recent fires, and the last one always."""
    upcoming = [iso(t) for t in schedule.timing.next_times(time.time(), next_times)]
    recent = [fire_json(fleet, f)
              for f in fleet.schedules.history(schedule.name, limit=max(fires, 1))]
    return {
        **schedule.to_json(),
        "next_fire_time": upcoming[0] if upcoming else None,
        "next_fire_times": upcoming,
        "last_fire": recent[0] if recent else None,
        "recent_fires": recent[:fires],
        "links": links(schedule.name),
    }


def fire_json(fleet: JobFleet, fire: Fire) -> dict[str, Any]:
    run = fire.orchestration_id
    return {
        "schedule": fire.schedule,
        "scheduled_time": iso(fire.scheduled_at),
        "scheduled_at": fire.scheduled_at,
        "trigger": fire.trigger,
        "state": fire.state,
        "reason": fire.reason,
        "attempt": fire.attempt,
        "fired_at": fire.fired_at,
        "orchestration_id": run,
        "run_status": None if run is None else _run_status(fleet, run),
        "links": None if run is None else {
            "orchestration": f"{PREFIX}/orchestrations/{run}",
            "dashboard": f"/orchestrations/{run}",
        },
    }


def fire_answer(fleet: JobFleet, result: FireResult) -> dict[str, Any]:
    return {
        "fire": fire_json(fleet, result.fire),
        "orchestration_id": result.fire.orchestration_id,
        "state": result.fire.state,
        "duplicate": result.duplicate,
    }


def _run_status(fleet: JobFleet, orchestration_id: str) -> str | None:
    try:
        return str(fleet.handle(orchestration_id).status().status)
    except UnknownOrchestration:
        return None
