"""The ASGI app: the `/v1` routes, the dashboard, `/healthz`, `/metrics`, and what every
request passes through (Host and body size checks, a bearer token, an Origin check for
the dashboard's cookie, errors as JSON that names the problem)."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobfleet.api import routes, schedule_routes, schemas, webhook_routes
from jobfleet.api.auth import Authenticator, AuthError, Principal, Unauthenticated, bearer_token
from jobfleet.api.body_limit import BodyLimit
from jobfleet.api.live import LiveHub
from jobfleet.api.metrics import Metrics
from jobfleet.api.origins import HostCheck, HostPolicy, OriginCheck
from jobfleet.api.problems import problem
from jobfleet.api.settings import ApiSettings
from jobfleet.errors import (
    ConfigurationError,
    FireInProgress,
    InvalidOption,
    InvalidParams,
    InvalidSchedule,
    JobfleetError,
    LaunchFailed,
    NothingToRerun,
    ScheduleExists,
    UnknownJob,
    UnknownOrchestration,
    UnknownSchedule,
)
from jobfleet.fleet import JobFleet

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
SESSION_COOKIE = "jobfleet_token"
OPEN_PATHS = frozenset({"/healthz", "/v1/session"})  # the login takes its token in the body
SIGN_IN_MAX_BODY_BYTES = 64 * 1024  # a token of at most 8,192 characters, as JSON

# The SDK's errors, as HTTP: status and a stable code.
ERROR_STATUS: list[tuple[type[JobfleetError], int, str]] = [
    (UnknownOrchestration, 404, "unknown_orchestration"),
    (UnknownJob, 422, "unknown_job"),
    (InvalidParams, 422, "invalid_params"),
    (InvalidOption, 422, "invalid_option"),
    (NothingToRerun, 422, "nothing_to_rerun"),
    (routes.Conflict, 409, "conflict"),
    (LaunchFailed, 503, "launch_failed"),
    (ConfigurationError, 500, "configuration"),
    (UnknownSchedule, 404, "unknown_schedule"),
    (InvalidSchedule, 422, "invalid_schedule"),
    (ScheduleExists, 409, "schedule_exists"),
    (schedule_routes.BadScheduleTime, 400, "invalid_schedule_time"),
    # Both make Cloud Scheduler deliver the time again (any answer but 2xx does).
    (FireInProgress, 503, "fire_in_progress"),
    (schedule_routes.FireFailed, 500, "fire_failed"),
]
SCHEDULER_STOP_SECONDS = 10.0


def create_app(
    fleet: JobFleet | None = None,
    authenticator: Authenticator | None = None,
    settings: ApiSettings | None = None,
    *,
    local_scheduler: bool = False,
) -> FastAPI:
    """`fleet` and `settings` default to ones from the environment (the fleet is opened
    when the app starts). With `local_scheduler`, a fleet on the local backend fires its
    schedules from this process while it serves (on Google Cloud, Cloud Scheduler does)."""
    settings = ApiSettings.from_env() if settings is None else settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        own = fleet is None
        app.state.fleet = JobFleet() if own else fleet
        app.state.hub = LiveHub()
        app.state.metrics = Metrics(app.state.fleet, app.state.hub)
        stop = threading.Event()
        scheduler = (
            _start_scheduler(app.state.fleet, stop)
            if local_scheduler and app.state.fleet.settings.backend == "local" else None
        )
        try:
            yield
        finally:
            stop.set()
            if scheduler is not None:
                scheduler.join(SCHEDULER_STOP_SECONDS)
            if own:
                app.state.fleet.close()

    app = FastAPI(
        title="jobfleet", version=version("jobfleet"), lifespan=lifespan,
        description="Fan a job out over parameter sets, follow it live, collect its results.",
    )
    app.state.authenticator = authenticator
    app.include_router(routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(webhook_routes.router)
    _add_error_handlers(app)
    _add_pages(app)
    # The last added runs first: a request is timed, its Host checked, its body bounded,
    # its token checked, and then its Origin, knowing how the token came.
    app.add_middleware(OriginCheck, ambient=authenticator is None)
    app.add_middleware(BearerAuth, authenticator=authenticator)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       by_path={"/v1/session": SIGN_IN_MAX_BODY_BYTES})
    hosts = HostPolicy.default(settings.hosts, authenticated=authenticator is not None)
    app.add_middleware(HostCheck, policy=hosts)
    app.add_middleware(RequestTiming)
    return app


def _start_scheduler(fleet: JobFleet, stop: threading.Event) -> threading.Thread:
    """The local scheduler on a thread of its own, until `stop` is set."""
    from jobfleet.local_scheduler import LocalScheduler

    def run() -> None:
        try:
            LocalScheduler(fleet).run(stop)
        except Exception:
            log.exception("the local scheduler stopped; schedules no longer fire here")

    thread = threading.Thread(target=run, name="jobfleet-scheduler", daemon=True)
    thread.start()
    log.info("the local scheduler fires this home's schedules (serve --no-scheduler: not)")
    return thread


# -- the routes that are not /v1 resources ---------------------------------------------------


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=8192)


def _add_pages(app: FastAPI) -> None:
    @app.get("/healthz", response_model=schemas.Health, summary="Liveness; needs no token")
    def healthz(request: Request) -> dict[str, str]:
        fleet: JobFleet = request.app.state.fleet
        return {"status": "ok", "backend": fleet.settings.backend}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    def metrics(request: Request) -> Response:
        exposition = request.app.state.metrics.exposition()
        return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/session", status_code=204, responses=routes.ERRORS,
              summary="Sign the dashboard in: keeps a valid token in an HttpOnly cookie")
    async def sign_in(body: Login, request: Request) -> Response:
        authenticator: Authenticator | None = request.app.state.authenticator
        if authenticator is not None:
            await run_in_threadpool(authenticator.authenticate, body.token)
        response = Response(status_code=204)
        response.set_cookie(
            SESSION_COOKIE, body.token, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )
        return response

    @app.delete("/v1/session", status_code=204, summary="Sign the dashboard out")
    def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/orchestrations/{orchestration_id}", include_in_schema=False)
    def orchestration_page(orchestration_id: str) -> FileResponse:
        return FileResponse(STATIC / "orchestration.html")

    @app.get("/schedules", include_in_schema=False)
    def schedules_page() -> FileResponse:
        return FileResponse(STATIC / "schedules.html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")


# -- errors --------------------------------------------------------------------------------


def refusal(exc: AuthError) -> JSONResponse:
    return problem(exc.status, type(exc).__name__.lower(), str(exc))


def _describe(errors: Any) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobfleetError)
    async def sdk_error(request: Request, exc: JobfleetError) -> JSONResponse:
        if isinstance(exc, AuthError):
            return refusal(exc)
        for kind, status, code in ERROR_STATUS:
            if isinstance(exc, kind):
                extra: dict[str, Any] = (
                    {"index": exc.index} if isinstance(exc, InvalidParams) else {}
                )
                headers = (
                    {"Retry-After": str(schedule_routes.FIRE_RETRY_AFTER_SECONDS)}
                    if isinstance(exc, FireInProgress) else None
                )
                if status >= 500:
                    log.warning("%s %s: %s", request.method, request.url.path, exc)
                return problem(status, code, str(exc), headers=headers, **extra)
        log.error("unmapped jobfleet error on %s: %s", request.url.path, exc)
        return problem(500, "internal", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(400, "invalid_json", "the body is not valid JSON: " + _describe(errors))
        return problem(422, "invalid_request", _describe(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        response = problem(exc.status_code, code, message)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route of the path
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error serving %s %s", request.method, request.url.path)
        return problem(500, "internal", f"internal error ({type(exc).__name__}); see the log")


# -- what every request passes through ---------------------------------------------------------


class BearerAuth:
    """Every route but OPEN_PATHS needs a valid token: `Authorization: Bearer`, or the
    dashboard's session cookie, which holds the same token. Pages answer a browser that
    has neither with the sign-in page; everything else with a JSON 401 or 403."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator | None) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.authenticator is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            principal, credential = await run_in_threadpool(self._principal, request)
        except AuthError as exc:
            response: Response = refusal(exc)
            if _is_page(request) and exc.status == 401:
                response = FileResponse(STATIC / "login.html", status_code=401)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {}).update(principal=principal, credential=credential)
        await self.app(scope, receive, send)

    def _principal(self, request: Request) -> tuple[Principal, str]:
        """Who is calling, and whether the "bearer" header or the "cookie" said so."""
        assert self.authenticator is not None
        header = request.headers.get("authorization")
        cookie = request.cookies.get(SESSION_COOKIE)
        if header is None and cookie:
            return self.authenticator.authenticate(cookie), "cookie"
        try:
            return self.authenticator.authenticate(bearer_token(header)), "bearer"
        except Unauthenticated:
            if cookie:
                return self.authenticator.authenticate(cookie), "cookie"
            raise


def _is_page(request: Request) -> bool:
    return (
        request.method == "GET"
        and not request.url.path.startswith(("/v1/", "/static/", "/metrics", "/openapi"))
        and "text/html" in request.headers.get("accept", "")
    )


class RequestTiming:
    """Latency of every request by route template, for /metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics: Metrics = scope["app"].state.metrics
            template = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe(scope["method"], template, status, started)
