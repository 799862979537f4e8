"""The Cloud Logging reader, with the real google-cloud-logging client (its HTTP
transport) against a small local server speaking the Logging v2 REST `entries:list`:
there is no Cloud Logging emulator."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import logging_v2

from jobfleet.backends.gcp.cloud_logging import CloudLoggingLogs, entries_filter
from jobfleet.core.models import Counts, OrchestrationSnapshot, RunOptions, Status

PROJECT = "logs-project"
OID = "0e2f7c4a-0000-4000-8000-000000000001"


def entry(n: int, job_id: str, message: str, severity: str = "INFO") -> dict[str, Any]:
    """An entry as Cloud Logging stores a JSON line a Cloud Run job task wrote."""
    return {
        "logName": f"projects/{PROJECT}/logs/run.googleapis.com%2Fstdout",
        "resource": {"type": "cloud_run_job", "labels": {"job_name": "jobfleet-worker"}},
        "timestamp": f"2026-01-01T12:00:{n:02d}.500Z",
        "insertId": f"insert-{n}",
        "severity": severity,
        "labels": {"orchestration_id": OID, "job_id": job_id, "job_name": "thumbnail"},
        "jsonPayload": {"message": message},
    }


ENTRIES = [entry(1, "job-a", "resizing a.png"), entry(2, "job-b", "resizing b.png"),
           entry(3, "job-b", "Traceback: boom", "ERROR")]


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class LoggingApi(BaseHTTPRequestHandler):
    """POST /v2/entries:list, two entries a page, honouring orderBy and a job filter."""

    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, **body})
        query = body["filter"]
        since = re.search(r'timestamp>="([^"]+)"', query)
        found = [e for e in ENTRIES
                 if (f'labels.job_id="{e["labels"]["job_id"]}"' in query
                     or "labels.job_id" not in query)
                 and (since is None or _instant(e["timestamp"]) >= _instant(since.group(1)))]
        if body.get("orderBy") == "timestamp desc":
            found.reverse()
        start = int(body.get("pageToken") or 0)
        page = found[start: start + min(2, body.get("pageSize") or 2)]
        reply: dict[str, Any] = {"entries": page}
        if start + 2 < len(found):
            reply["nextPageToken"] = str(start + 2)
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[CloudLoggingLogs, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    handler = type("Handler", (LoggingApi,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = logging_v2.Client(  # type: ignore[no-untyped-call]
        project=PROJECT, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        _use_grpc=False,
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{server.server_port}"),
    )
    try:
        yield CloudLoggingLogs(PROJECT, client=client), requests
    finally:
        server.shutdown()
        server.server_close()


def snapshot() -> OrchestrationSnapshot:
    return OrchestrationSnapshot(
        id=OID, job_name="thumbnail", status=Status.ERRORED, counts=Counts(total=2, failed=1),
        options=RunOptions(0, 0.0, None, 2), tags={}, created_at=1767268800.0,
    )


def test_every_entry_of_the_orchestration_is_read_page_by_page_oldest_first(
    api: tuple[CloudLoggingLogs, list[dict[str, Any]]],
) -> None:
    reader, requests = api
    lines = reader.lines(snapshot(), None)
    assert [line.text for line in lines] == [
        "2026-01-01T12:00:01.500Z INFO    [job job-a] resizing a.png",
        "2026-01-01T12:00:02.500Z INFO    [job job-b] resizing b.png",
        "2026-01-01T12:00:03.500Z ERROR   [job job-b] Traceback: boom",
    ]
    assert [r["path"].split("?")[0] for r in requests] == ["/v2/entries:list"] * 2  # two pages
    first = requests[0]
    assert first["resourceNames"] == [f"projects/{PROJECT}"]
    assert first["filter"] == entries_filter(OID, since=snapshot().created_at - 60)
    assert first["orderBy"] == "timestamp asc"


def test_one_instance_and_only_the_newest_lines(
    api: tuple[CloudLoggingLogs, list[dict[str, Any]]],
) -> None:
    reader, requests = api
    lines = reader.lines(snapshot(), "job-b", last=1)
    assert [(line.job_id, line.text[-15:]) for line in lines] == [("job-b", "Traceback: boom")]
    assert 'labels.job_id="job-b"' in requests[0]["filter"]
    assert requests[0]["orderBy"] == "timestamp desc"


def test_follow_reads_what_is_there_and_stops_once_the_orchestration_ended(
    api: tuple[CloudLoggingLogs, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, _ = api
    monkeypatch.setattr("jobfleet.backends.gcp.cloud_logging.POLL_SECONDS", 0.0)
    lines = list(reader.follow(snapshot(), None, ended=lambda: True))
    assert [line.text[-14:] for line in lines] == [
        "resizing a.png", "resizing b.png", "raceback: boom"]
