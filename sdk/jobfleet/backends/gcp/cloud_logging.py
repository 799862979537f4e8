"""An orchestration's log lines on Google Cloud: Cloud Logging entries of its Cloud Run
job tasks, found by the labels the workers write (log_lines.py): one filter,
`entries_filter`, which a user can also paste into the Logs Explorer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from jobfleet.core.models import OrchestrationSnapshot
from jobfleet.errors import ConfigurationError
from jobfleet.log_lines import LogLine, text_line

POLL_SECONDS = 5.0
PAGE_SIZE = 1000
# Entries are looked for from a little before the kick-off: the clocks of the kick-off
# and of the tasks differ a little.
CLOCK_SKEW_SECONDS = 60.0
LOGGING_EXTRA = 'reading Cloud Logging needs the gcp extra: pip install "jobfleet[gcp]"'


def quoted(value: str) -> str:
    """A string in the Logging query language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entries_filter(
    orchestration_id: str, job_id: str | None = None, *, since: float | None = None
) -> str:
    """The Cloud Logging filter for an orchestration's task entries (of one instance)."""
    parts = ['resource.type="cloud_run_job"', f"labels.orchestration_id={quoted(orchestration_id)}"]
    if job_id is not None:
        parts.append(f"labels.job_id={quoted(job_id)}")
    if since is not None:
        parts.append(f"timestamp>={quoted(rfc3339(since))}")
    return " AND ".join(parts)


def log_line(entry: Any) -> LogLine:
    """A google-cloud-logging entry (text or JSON payload) as a line."""
    labels = entry.labels or {}
    job_id = labels.get("job_id")
    payload = entry.payload
    if isinstance(payload, dict):
        message = payload.get("message")
        text = str(message) if message is not None else json.dumps(payload, sort_keys=True)
    else:
        text = "" if payload is None else str(payload)
    stamp = entry.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if entry.timestamp else ""
    return LogLine(text_line(stamp, entry.severity or "DEFAULT", job_id, text), job_id)


class CloudLoggingLogs:
    def __init__(self, project: str, client: Any | None = None) -> None:
        self.project = project
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from google.cloud import logging_v2
            except ImportError as exc:
                raise ConfigurationError(f"{LOGGING_EXTRA} ({exc})") from None
            self._client = logging_v2.Client(project=self.project)  # type: ignore[no-untyped-call]
        return self._client

    def _entries(self, query: str, *, newest_first: bool, limit: int | None) -> Iterable[Any]:
        return self.client.list_entries(  # type: ignore[no-any-return]
            resource_names=[f"projects/{self.project}"], filter_=query,
            order_by="timestamp desc" if newest_first else "timestamp asc",
            max_results=limit, page_size=min(limit or PAGE_SIZE, PAGE_SIZE),
        )

    def lines(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, *, last: int | None = None
    ) -> list[LogLine]:
        query = entries_filter(
            orchestration.id, job_id, since=orchestration.created_at - CLOCK_SKEW_SECONDS
        )
        if last is None:
            return [log_line(e) for e in self._entries(query, newest_first=False, limit=None)]
        newest = list(self._entries(query, newest_first=True, limit=last))
        return [log_line(e) for e in reversed(newest)]

    def follow(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, ended: Callable[[], bool]
    ) -> Iterator[LogLine]:
        """Polls for entries from the newest one seen (those of that instant are
        recognized by their insert id), until `ended()`; Cloud Logging shows an entry some
        seconds after it was written, so the last poll comes a while after the end."""
        since = orchestration.created_at - CLOCK_SKEW_SECONDS
        seen: set[str] = set()
        last_poll = False
        while True:
            query = entries_filter(orchestration.id, job_id, since=since)
            for entry in self._entries(query, newest_first=False, limit=None):
                if entry.insert_id in seen:
                    continue
                stamp = entry.timestamp.timestamp() if entry.timestamp else since
                if stamp > since:
                    since, seen = stamp, set()
                seen.add(entry.insert_id)
                yield log_line(entry)
            if last_poll:
                return
            last_poll = ended()
            time.sleep(POLL_SECONDS)
