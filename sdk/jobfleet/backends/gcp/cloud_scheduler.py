"""Cloud Scheduler jobs as the timing of schedules: one job per schedule, which POSTs
to the API's fire route at every cron time, with an OIDC token of the scheduler's
service account. Cloud Scheduler keeps the time (cron in a time zone, retries with
backoff); what a fire starts, and that a duplicate starts nothing, is the API's
(`jobfleet.scheduling`).

Schedule `nightly` is the job `projects/P/locations/R/jobs/jobfleet-nightly`; the
sweep is `jobfleet_sweep`, which no schedule's job can be called (a schedule name
starts with a letter or digit), so `deployed()` never mistakes it for one.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from google.api_core.exceptions import AlreadyExists, NotFound, PermissionDenied
from google.cloud import scheduler_v1

from jobfleet.backends.gcp.google_apis import (
    ADMIN_API_RETRY,
    CALL_TIMEOUT_SECONDS,
    client_arguments,
)
from jobfleet.config import Settings
from jobfleet.core.schedules import Schedule
from jobfleet.errors import ConfigurationError

JOB_PREFIX = "jobfleet-"
SWEEP_JOB = "jobfleet_sweep"
SWEEP_CRON = "* * * * *"
FIRE_PATH = "/v1/schedules/{name}/fire"
SWEEP_PATH = "/v1/sweep"

# A failed fire is tried again 20, 60, 140, 300 and 600 s after the first attempt
# (Cloud Scheduler allows 5 retries): the last two come after the hold of a firer that
# died has lapsed (scheduling.FIRE_HOLD_SECONDS), so a retry takes its fire over.
# (Cloud Scheduler gives up earlier when the next cron time comes first; the sweep's
# catch-up covers that.) The API dedupes retries by (schedule, scheduled time), so a
# retry of a fire that did start creates nothing.
RETRY_COUNT = 5
MIN_BACKOFF_SECONDS = 20
MAX_BACKOFF_SECONDS = 300
MAX_DOUBLINGS = 4
# How long the API has to answer a fire: a kick-off streams its parameter sets first.
ATTEMPT_DEADLINE_SECONDS = 180
# What apply() owns on an existing job; everything else is Cloud Scheduler's.
UPDATED_FIELDS = (
    "description", "schedule", "time_zone", "http_target", "retry_config", "attempt_deadline",
)

State = scheduler_v1.Job.State


class CloudSchedulerTimer:
    def __init__(
        self, settings: Settings, client: scheduler_v1.CloudSchedulerClient | None = None
    ) -> None:
        self.settings = settings
        self._client = client  # built on first use, like the launcher's

    @property
    def client(self) -> scheduler_v1.CloudSchedulerClient:
        if self._client is None:
            self._client = scheduler_v1.CloudSchedulerClient(
                **client_arguments(self.settings.scheduler_endpoint)
            )
        return self._client

    @property
    def parent(self) -> str:
        return f"projects/{self.settings.require_project()}/locations/{self.settings.region}"

    def job_name(self, schedule_name: str) -> str:
        return f"{self.parent}/jobs/{JOB_PREFIX}{schedule_name}"

    # -- the ScheduleTimer port ---------------------------------------------------

    def apply(self, schedule: Schedule) -> None:
        """Create or update the schedule's job, then pause or resume it to match.

        A paused schedule's job is created enabled and paused right after: Cloud
        Scheduler takes no state on create. A fire in between is the API's to refuse.
        """
        description = schedule.description or f"jobfleet schedule {schedule.name}"
        job = self._job(
            self.job_name(schedule.name), schedule.cron, schedule.timezone,
            FIRE_PATH.format(name=schedule.name), description[:500],
        )
        self._put(job, paused=schedule.paused)

    def remove(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.client.delete_job(
                name=self.job_name(name), retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
            )

    # -- beyond the port: for `schedules sync` and the deployment ---------------------

    def ensure_sweep(self, every_cron: str = SWEEP_CRON) -> None:
        """The sweep as a Cloud Scheduler job, so that production heals itself: POST
        /v1/sweep on `every_cron` (UTC), with the same OIDC token as the fires."""
        job = self._job(
            f"{self.parent}/jobs/{SWEEP_JOB}", every_cron, "UTC", SWEEP_PATH,
            "jobfleet sweep: brings back what faults left behind",
        )
        self._put(job, paused=False)

    def deployed(self) -> list[str]:
        """The names of the schedules that have a job here (the sweep is not one)."""
        names = []
        pages = self.client.list_jobs(
            parent=self.parent, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
        )
        for job in pages:
            job_id = job.name.rsplit("/", 1)[-1]
            if job_id.startswith(JOB_PREFIX):
                names.append(job_id.removeprefix(JOB_PREFIX))
        return sorted(names)

    # -- the calls ------------------------------------------------------------------

    def _job(
        self, name: str, cron: str, timezone: str, path: str, description: str
    ) -> scheduler_v1.Job:
        api_url = self._api_url()
        return scheduler_v1.Job(
            name=name,
            description=description,
            schedule=cron,
            time_zone=timezone,
            http_target=scheduler_v1.HttpTarget(
                uri=f"{api_url}{path}",
                http_method=scheduler_v1.HttpMethod.POST,
                oidc_token=scheduler_v1.OidcToken(
                    service_account_email=self._service_account(), audience=api_url,
                ),
            ),
            retry_config=scheduler_v1.RetryConfig(
                retry_count=RETRY_COUNT,
                min_backoff_duration=timedelta(seconds=MIN_BACKOFF_SECONDS),
                max_backoff_duration=timedelta(seconds=MAX_BACKOFF_SECONDS),
                max_doublings=MAX_DOUBLINGS,
            ),
            attempt_deadline=timedelta(seconds=ATTEMPT_DEADLINE_SECONDS),
        )

    def _put(self, job: scheduler_v1.Job, *, paused: bool) -> None:
        """get, then create or update (only when the definition differs), then pause or
        resume: repeating it changes nothing, so `schedules sync` may run it freely."""
        try:
            current = self._call("get_job", name=job.name)
        except NotFound:
            try:
                current = self._call("create_job", parent=self.parent, job=job)
            except AlreadyExists:  # created meanwhile by another deploy
                current = self._call("get_job", name=job.name)
        if _definition(current) != _definition(job):
            current = self._call(
                "update_job", job=job,
                update_mask={"paths": list(UPDATED_FIELDS)},
            )
        if paused and current.state != State.PAUSED:
            self._call("pause_job", name=job.name)
        elif not paused and current.state == State.PAUSED:
            self._call("resume_job", name=job.name)

    def _call(self, method: str, **request: object) -> scheduler_v1.Job:
        try:
            job: scheduler_v1.Job = getattr(self.client, method)(
                request=request, retry=ADMIN_API_RETRY, timeout=CALL_TIMEOUT_SECONDS
            )
        except PermissionDenied as exc:
            raise ConfigurationError(
                f"cannot manage Cloud Scheduler jobs in {self.parent} ({exc.message}): the"
                " caller needs roles/cloudscheduler.admin there, and roles/iam."
                "serviceAccountUser on JOBFLEET_SCHEDULER_SERVICE_ACCOUNT"
            ) from exc
        return job

    def _api_url(self) -> str:
        url = (self.settings.api_url or "").rstrip("/")
        if not url:
            raise ConfigurationError(
                "Cloud Scheduler jobs POST to the jobfleet API: set JOBFLEET_API_URL to its"
                " URL (e.g. https://jobfleet-api-abc123-uc.a.run.app), the same value as the"
                " API's JOBFLEET_API_AUDIENCE"
            )
        return url

    def _service_account(self) -> str:
        account = self.settings.scheduler_service_account
        if not account:
            raise ConfigurationError(
                "Cloud Scheduler signs its calls to the API as a service account: set"
                " JOBFLEET_SCHEDULER_SERVICE_ACCOUNT to its e-mail, and list that e-mail in"
                " the API's JOBFLEET_API_PRINCIPALS"
            )
        return account


def _definition(job: scheduler_v1.Job) -> tuple[object, ...]:
    """What apply() sets, as comparable values (the server fills in defaults elsewhere)."""
    target, retry = job.http_target, job.retry_config
    return (
        job.description, job.schedule, job.time_zone, target.uri, int(target.http_method),
        target.oidc_token.service_account_email, target.oidc_token.audience,
        retry.retry_count, _seconds(retry.min_backoff_duration),
        _seconds(retry.max_backoff_duration), retry.max_doublings,
        _seconds(job.attempt_deadline),
    )


def _seconds(duration: object) -> float:
    # proto-plus hands Durations over as datetime.timedelta (typed as the protobuf's)
    return duration.total_seconds() if isinstance(duration, timedelta) else 0.0
