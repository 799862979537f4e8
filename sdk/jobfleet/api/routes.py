"""The `/v1` endpoints: each translates HTTP to one SDK call and back, nothing more."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse

from jobfleet import tracing
from jobfleet.api import schemas
from jobfleet.api.live import LiveHub
from jobfleet.core.models import JobInstance, OrchestrationSnapshot, Status
from jobfleet.core.options import parse_tag_filter
from jobfleet.core.params import params_schema
from jobfleet.core.pipeline import Stage
from jobfleet.core.registry import get_job, known_jobs
from jobfleet.core.sweep import report
from jobfleet.errors import InvalidOption, JobfleetError, UnknownOrchestration
from jobfleet.fleet import JobFleet, Orchestration
from jobfleet.run_links import links_of, rerun_tree

PREFIX = "/v1"
PING_SECONDS = 15

router = APIRouter(prefix=PREFIX)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody, "description": text}
    for code, text in {
        400: "bad query or page token",
        401: "no valid bearer token",
        403: "the token's principal is not allowed",
        404: "no such orchestration",
        422: "the request does not fit the schema, or a parameter set is refused",
    }.items()
}


class Conflict(JobfleetError):
    """The request is valid but the orchestration's state does not allow it."""


class UnknownPageToken(UnknownOrchestration):
    def __init__(self, token: str) -> None:
        JobfleetError.__init__(
            self, f"page_token {token!r} names no orchestration: use the next_page_token "
            "of a listing, or leave it out for the first page"
        )
        self.orchestration_id = token


def fleet_of(request: Request) -> JobFleet:
    fleet: JobFleet = request.app.state.fleet
    return fleet


def read_handle(request: Request, orchestration_id: str) -> Orchestration:
    """A handle for a call that reads the orchestration anyway, and so raises
    UnknownOrchestration itself: `JobFleet.orchestration` would read it once more."""
    return fleet_of(request).handle(orchestration_id)


def hub_of(request: Request) -> LiveHub:
    hub: LiveHub = request.app.state.hub
    return hub


def links(orchestration_id: str) -> dict[str, str]:
    base = f"{PREFIX}/orchestrations/{orchestration_id}"
    return {
        "self": base, "jobs": f"{base}/jobs", "results": f"{base}/results",
        "events": f"{base}/events", "cancel": f"{base}/cancel", "rerun": f"{base}/rerun",
        "dashboard": f"/orchestrations/{orchestration_id}",
    }


def orchestration_json(snap: OrchestrationSnapshot) -> dict[str, Any]:
    return {**snap.to_json(), "links": links(snap.id)}


def detail_json(fleet: JobFleet, snap: OrchestrationSnapshot) -> dict[str, Any]:
    """One orchestration with how it links to others: its pipeline, its re-runs."""
    return {**snap.to_json(), "links": {**links(snap.id), **links_of(fleet, snap).to_json()}}


def stage_of(fleet: JobFleet, position: int, spec: schemas.NextStage) -> Stage:
    """A stage of a kick-off's `then`. Its params function must be in one of the
    server's jobs modules: a name from a request never imports any other module, nor
    runs a file."""
    if spec.params is not None and spec.params_from is not None:
        raise InvalidOption(
            f"stage {position} ({spec.job}): give params or params_from, not both"
        )
    modules = fleet.settings.jobs_modules
    if spec.params_from is not None and spec.params_from.rpartition(":")[0] not in modules:
        known = ", ".join(modules) or "none: start it with --jobs-module or JOBFLEET_JOBS"
        raise InvalidOption(
            f"stage {position} ({spec.job}): params_from {spec.params_from!r} must be "
            f"'module:function' in one of the server's jobs modules ({known})"
        )
    return Stage(
        spec.job, params=spec.params if spec.params is not None else spec.params_from,
        when=spec.when, parallelism=spec.parallelism, retries=spec.retries,
        timeout=spec.timeout, tags=spec.tags,
    )


@router.post(
    "/orchestrations", status_code=202, response_model=schemas.Orchestration,
    responses=ERRORS, summary="Kick off a job over parameter sets",
)
def kick_off(body: schemas.KickOff, request: Request, response: Response) -> dict[str, Any]:
    """Every parameter set is checked before anything runs; a refused one is named by
    its index and nothing is created. A `traceparent` header puts the kick-off (and so
    its workers and event) in the caller's trace. `then` makes it a pipeline's first
    stage; every stage is checked first too, and a refused one is named."""
    fleet = fleet_of(request)
    stages = [stage_of(fleet, n, spec) for n, spec in enumerate(body.then or [], start=2)]
    with tracing.continued(request.headers.get("traceparent")):
        orchestration = fleet.kick_off(
            body.job_name, body.params, parallelism=body.parallelism, tags=body.tags,
            retries=body.retries, timeout=body.timeout, webhooks=body.webhooks,
            then=stages or None,
        )
    response.headers["Location"] = links(orchestration.id)["self"]
    return orchestration_json(orchestration.status())


@router.get(
    "/orchestrations", response_model=schemas.OrchestrationPage, responses=ERRORS,
    summary="Orchestrations, newest first",
)
def history(
    request: Request,
    job_name: str | None = None,
    status: Status | None = None,
    tag: Annotated[str | None, Query(description="KEY:VALUE", pattern="^[^:]+:")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: str | None = None,
) -> dict[str, Any]:
    try:
        page = fleet_of(request).history(
            limit=limit + 1, job_name=job_name, status=status,
            tag=None if tag is None else parse_tag_filter(tag), before=page_token,
        )
    except UnknownOrchestration:
        raise UnknownPageToken(page_token or "") from None
    return {  # one more than asked for says whether another page follows
        "orchestrations": [orchestration_json(s) for s in page[:limit]],
        "next_page_token": page[limit - 1].id if len(page) > limit else None,
    }


@router.get(
    "/orchestrations/{orchestration_id}", response_model=schemas.OrchestrationDetail,
    responses=ERRORS, summary="One orchestration's status, counts and links to others",
)
def orchestration(orchestration_id: str, request: Request) -> dict[str, Any]:
    """`links` also says where it sits in its pipeline and what re-runs it."""
    snap = read_handle(request, orchestration_id).status()
    return detail_json(fleet_of(request), snap)


@router.get(
    "/orchestrations/{orchestration_id}/jobs", response_model=schemas.JobInstancePage,
    responses=ERRORS, summary="Job instances by index",
)
def jobs(
    orchestration_id: str,
    request: Request,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str | None, Query(pattern="^[0-9]{1,18}$")] = None,
) -> dict[str, Any]:
    after = -1 if page_token is None else int(page_token)
    page: list[JobInstance] = read_handle(request, orchestration_id).instances(
        status=status, after_index=after, limit=limit + 1
    )
    return {
        "jobs": [i.to_json() for i in page[:limit]],
        "next_page_token": str(page[limit - 1].index) if len(page) > limit else None,
    }


@router.get(
    "/orchestrations/{orchestration_id}/results", response_model=schemas.Results,
    responses=ERRORS, summary="Successes and failures, with their original params",
)
def results(
    orchestration_id: str,
    request: Request,
    merged: Annotated[bool, Query(description="lay the re-runs' outcomes over the run's: "
                                  "the last of each original index")] = False,
) -> dict[str, Any]:
    """What has finished so far; `complete` says whether that is everything."""
    handle = read_handle(request, orchestration_id)
    runs = rerun_tree(fleet_of(request), orchestration_id) if merged else None
    if runs is None:
        snap, (successes, failures) = handle.status_and_results()
        complete = snap.status.terminal
    else:  # read after the runs' statuses, so that `complete` holds for them
        snap, complete = runs[0], all(r.status.terminal for r in runs)
        successes, failures = handle.merged_results()
    return {
        "orchestration_id": orchestration_id,
        "status": str(snap.status),
        "complete": complete,
        "successes": [s.to_json() for s in successes],
        "failures": [f.to_json() for f in failures or []],
        "runs": None if runs is None else [r.id for r in runs],
    }


@router.get(
    "/orchestrations/{orchestration_id}/logs", response_model=schemas.LogLines,
    responses=ERRORS, summary="The newest log lines, of every instance or of one",
)
def logs(
    orchestration_id: str,
    request: Request,
    job_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    """Locally from the orchestration's log files, on Google Cloud from Cloud Logging;
    the newest `limit` lines, and whether older ones were left out."""
    lines = list(read_handle(request, orchestration_id).logs(job_id, last=limit + 1))
    return {
        "orchestration_id": orchestration_id,
        "job_id": job_id,
        "lines": [line.to_json() for line in lines[-limit:]],
        "truncated": len(lines) > limit,
    }


@router.get(
    "/orchestrations/{orchestration_id}/events", responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}},
                        "description": "snapshot, transitions, progress, completed"},
    },
    response_class=EventSourceResponse, summary="Live events (server-sent events)",
)
async def events(
    orchestration_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """`snapshot` first, then `transition` (an instance moved; its id resumes the stream
    through `Last-Event-ID`) and `progress` (the counts) as they happen, and last
    `completed`, the JobCompletedEvent; then the stream ends."""
    handle = await asyncio.to_thread(fleet_of(request).orchestration, orchestration_id)
    return EventSourceResponse(hub_of(request).stream(handle, last_event_id), ping=PING_SECONDS)


@router.post(
    "/orchestrations/{orchestration_id}/cancel", response_model=schemas.Orchestration,
    responses={**ERRORS, 409: {"model": schemas.ErrorBody, "description": "already ended"}},
    summary="Cancel the unfinished instances",
)
def cancel(orchestration_id: str, request: Request) -> dict[str, Any]:
    snap = fleet_of(request).orchestration(orchestration_id).cancel()
    if snap.status is not Status.CANCELLED:
        raise Conflict(
            f"orchestration {orchestration_id} already ended {snap.status}; nothing to cancel"
        )
    return orchestration_json(snap)


@router.post(
    "/orchestrations/{orchestration_id}/rerun", status_code=201,
    response_model=schemas.OrchestrationDetail,
    responses={**ERRORS, 409: {"model": schemas.ErrorBody, "description": "still running"}},
    summary="Re-run the failed (or cancelled) instances of an ended orchestration",
)
def rerun(
    orchestration_id: str, request: Request, response: Response,
    body: schemas.Rerun | None = None,
) -> dict[str, Any]:
    """A new orchestration over exactly those instances, with their params and original
    indexes, tagged `rerun_of`; 422 `nothing_to_rerun` when there is none."""
    body = body or schemas.Rerun()
    fleet = fleet_of(request)
    handle = read_handle(request, orchestration_id)
    snap = handle.status()
    if not snap.status.terminal:
        raise Conflict(f"orchestration {orchestration_id} is still running; wait for it or "
                       "cancel it, then re-run what failed")
    again = handle.rerun(list(dict.fromkeys(body.which)), parallelism=body.parallelism)
    response.headers["Location"] = links(again.id)["self"]
    return detail_json(fleet, again.status())


@router.post(
    "/sweep", response_model=schemas.SweepReport, responses=ERRORS,
    summary="Bring back what faults left behind (Cloud Scheduler calls it every minute)",
)
def sweep(request: Request) -> dict[str, Any]:
    return report(fleet_of(request).sweep())


@router.get("/jobs", response_model=schemas.JobList, responses=ERRORS,
            summary="Registered jobs and the JSON schema of their params")
def registered_jobs() -> dict[str, Any]:
    found = []
    for name in known_jobs():
        d = get_job(name)
        found.append({
            "name": name, "retries": d.retries, "backoff": d.backoff, "timeout": d.timeout,
            "params_schema": params_schema(d),
        })
    return {"jobs": found}

