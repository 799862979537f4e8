"""A Cloud Scheduler job as the stand-in (`cloud_scheduler.py`) keeps it: the resource
as the caller set it, checked and completed with Cloud Scheduler's defaults as the real
API does, and written back in its wire format (string or numeric enums)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jobfleet.core.cron import Cron
from jobfleet.dev.http_targets import seconds
from jobfleet.dev.rest_standin import ApiError, Json
from jobfleet.errors import InvalidSchedule

HTTP_METHODS = ["HTTP_METHOD_UNSPECIFIED", "POST", "GET", "HEAD", "PUT", "DELETE", "PATCH",
                "OPTIONS"]
STATES = ["STATE_UNSPECIFIED", "ENABLED", "PAUSED", "DISABLED", "UPDATE_FAILED"]
# Cloud Scheduler's defaults for a job that sets no retryConfig or attemptDeadline.
DEFAULT_RETRY = {"retryCount": 0, "maxRetryDuration": "0s", "minBackoffDuration": "5s",
                 "maxBackoffDuration": "3600s", "maxDoublings": 5}
DEFAULT_DEADLINE = "180s"
UPDATABLE = ("description", "schedule", "timeZone", "httpTarget", "retryConfig",
             "attemptDeadline")


@dataclass
class SchedulerJob:
    """One job: its resource as the caller set it (camelCase), and what the stand-in
    keeps of its runs. Times are the stand-in's clock's, but for `last_attempt_time`."""

    resource: Json
    state: str = "ENABLED"
    user_update_time: float = field(default_factory=time.time)
    next_at: float | None = None  # the scheduled time of the next execution
    busy: bool = False  # a scheduled execution is being attempted or awaits a retry
    last_attempt_time: float | None = None
    status: Json | None = None  # google.rpc.Status of the last attempt

    @property
    def job_id(self) -> str:
        return str(self.resource["name"]).rsplit("/", 1)[-1]

    @property
    def cron(self) -> Cron:
        return Cron(self.resource["schedule"], self.resource.get("timeZone") or "UTC")

    def to_json(self, numeric_enums: bool) -> Json:
        def enum(names: list[str], value: str) -> str | int:
            return names.index(value) if numeric_enums else value

        target = dict(self.resource["httpTarget"])
        target["httpMethod"] = enum(HTTP_METHODS, target.get("httpMethod") or "POST")
        body: Json = {
            **{k: v for k, v in self.resource.items() if k != "httpTarget"},
            "httpTarget": target,
            "userUpdateTime": timestamp(self.user_update_time),
            "state": enum(STATES, self.state),
        }
        if self.status is not None:
            body["status"] = self.status
        if self.next_at is not None and self.state == "ENABLED":
            body["scheduleTime"] = timestamp(self.next_at)
        if self.last_attempt_time is not None:
            body["lastAttemptTime"] = timestamp(self.last_attempt_time)
        return body


def checked(resource: Json) -> Json:
    """The resource with Cloud Scheduler's defaults, or INVALID_ARGUMENT as it would."""
    if any(k in resource for k in ("pubsubTarget", "appEngineHttpTarget")):
        raise ApiError(400, "this stand-in fires HTTP targets only")
    target = resource.get("httpTarget")
    if not isinstance(target, dict) or not str(target.get("uri") or "").startswith(
            ("http://", "https://")):
        raise ApiError(400, "httpTarget.uri must be an http:// or https:// URL")
    method = target.get("httpMethod") or "POST"
    if isinstance(method, int):
        method = HTTP_METHODS[method] if 0 <= method < len(HTTP_METHODS) else "?"
    if method not in HTTP_METHODS[1:]:
        method = "POST" if method == HTTP_METHODS[0] else None
        if method is None:
            raise ApiError(400, "httpTarget.httpMethod is not an HTTP method")
    try:
        Cron(str(resource.get("schedule") or ""), resource.get("timeZone") or "UTC")
    except InvalidSchedule as exc:
        raise ApiError(400, f"Schedule or time zone is invalid: {exc}") from None
    retry = {**DEFAULT_RETRY, **(resource.get("retryConfig") or {})}
    if not 0 <= int(retry["retryCount"]) <= 5:
        raise ApiError(400, "retryConfig.retryCount must be between 0 and 5")
    deadline = resource.get("attemptDeadline") or DEFAULT_DEADLINE
    if not 15 <= seconds(deadline) <= 1800:
        raise ApiError(400, "attemptDeadline must be between 15s and 30m for HTTP targets")
    return {**resource, "httpTarget": {**target, "httpMethod": method}, "retryConfig": retry,
            "attemptDeadline": deadline}


def timestamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def camel_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel(data: Json) -> Json:
    """Proto3 JSON accepts snake_case field names too; the stand-in keeps camelCase.
    `headers` is a map, whose keys are data."""
    return {
        camel_name(k): (camel(v) if isinstance(v, dict) and k != "headers" else v)
        for k, v in data.items()
    }
