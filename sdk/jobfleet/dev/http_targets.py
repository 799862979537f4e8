"""How Cloud Scheduler calls an HTTP target, for the stand-in (`dev/cloud_scheduler.py`):
the request it sends, what counts as a failed attempt, and the wait before a retry."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from typing import Any

from jobfleet.core.cron import iso
from jobfleet.dev.id_tokens import SigningKey, service_account_claims, sign

Json = dict[str, Any]
USER_AGENT = "Google-Cloud-Scheduler"
# google.rpc.Code of a failed attempt, by the target's HTTP status.
RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 500: 13, 501: 12,
             503: 14, 504: 4}
UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN = 14, 4, 2


def deliver(
    target: Json, job_id: str, scheduled: float, deadline: float, key: SigningKey, kid: str
) -> tuple[int | None, Json | None]:
    """One HTTP attempt: the target's status, and a google.rpc.Status if it failed."""
    headers = {
        **(target.get("headers") or {}),
        "X-CloudScheduler": "true",
        "X-CloudScheduler-JobName": job_id,
        "X-CloudScheduler-ScheduleTime": iso(scheduled),
        "User-Agent": USER_AGENT,
    }
    body = base64.b64decode(target["body"]) if target.get("body") else None
    if body is not None:
        headers.setdefault("Content-Type", "application/octet-stream")
    oidc = target.get("oidcToken")
    if oidc:
        claims = service_account_claims(
            oidc["serviceAccountEmail"], oidc.get("audience") or target["uri"]
        )
        headers["Authorization"] = f"Bearer {sign(key, kid, claims)}"
    request = urllib.request.Request(
        target["uri"], data=body, headers=headers,
        method=target.get("httpMethod") or "POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=deadline) as answer:
            answer.read()
            return answer.status, None
    except urllib.error.HTTPError as refused:
        refused.close()
        code = RPC_CODES.get(refused.code, UNKNOWN)
        return refused.code, {"code": code, "message": f"HTTP {refused.code}"}
    except TimeoutError:
        return None, {"code": DEADLINE_EXCEEDED, "message": "attempt deadline exceeded"}
    except (urllib.error.URLError, OSError) as failed:
        return None, {"code": UNAVAILABLE, "message": f"cannot reach the target: {failed}"}


def backoff(retry: Json, attempt: int) -> float:
    """Cloud Scheduler's wait before retry `attempt + 1`: min, doubling max_doublings
    times, then growing linearly by the last doubling's step, capped at max."""
    low = seconds(retry.get("minBackoffDuration") or "5s")
    high = seconds(retry.get("maxBackoffDuration") or "3600s")
    doublings = int(retry.get("maxDoublings") or 0)
    if attempt <= doublings:
        wait = low * 2.0**attempt
    else:
        wait = low * 2.0**doublings * (1 + attempt - doublings)
    return min(wait, high)


def seconds(duration: str) -> float:
    """A google.protobuf.Duration in JSON ("10s", "1.5s")."""
    return float(str(duration).removesuffix("s"))
