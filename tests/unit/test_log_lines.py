"""The log line formats, the trace context, and the Cloud Logging filter."""

from __future__ import annotations

import io
import json

import pytest

from jobfleet.backends.gcp.cloud_logging import entries_filter
from jobfleet.config import Settings
from jobfleet.errors import ConfigurationError
from jobfleet.log_lines import JSON, TEXT, LogContext, TaggedStream, parse, render
from jobfleet.tracing import TraceContext

NOON = 1767268800.25  # 2026-01-01T12:00:00.250Z


def worker_context(job_id: str | None = "job-7") -> LogContext:
    ctx = LogContext()
    ctx.orchestration_id, ctx.job_name, ctx.job_id = "orch-1", "thumbnail", job_id
    ctx.source = "shard 3"
    ctx.trace_id, ctx.span_id, ctx.trace_sampled = "ab" * 16, "cd" * 8, True
    ctx.project = "my-project"
    return ctx


def test_a_json_line_is_what_cloud_logging_reads_from_a_container() -> None:
    record = json.loads(render("WARNING", "disk full", JSON, now=NOON, ctx=worker_context()))
    assert record == {
        "severity": "WARNING",
        "message": "disk full",
        "time": "2026-01-01T12:00:00.250Z",
        "logging.googleapis.com/labels": {
            "orchestration_id": "orch-1", "job_id": "job-7", "job_name": "thumbnail"},
        "logging.googleapis.com/trace": f"projects/my-project/traces/{'ab' * 16}",
        "logging.googleapis.com/spanId": "cd" * 8,
        "logging.googleapis.com/trace_sampled": True,
    }


def test_outside_an_attempt_a_json_line_has_no_job_id_and_no_trace_when_none_is_known() -> None:
    ctx = worker_context(job_id=None)
    ctx.trace_id = None
    record = json.loads(render("INFO", "started", JSON, now=NOON, ctx=ctx))
    assert record["logging.googleapis.com/labels"] == {
        "orchestration_id": "orch-1", "job_name": "thumbnail"}
    assert "logging.googleapis.com/trace" not in record


def test_a_text_record_tags_each_of_its_lines_so_a_filter_keeps_a_traceback_whole() -> None:
    text = render("ERROR", "Traceback:\n  boom", TEXT, now=NOON, ctx=worker_context())
    assert text.splitlines() == [
        "2026-01-01T12:00:00.250Z ERROR   [job job-7] Traceback:",
        "2026-01-01T12:00:00.250Z ERROR   [job job-7]   boom",
    ]
    assert [parse(line).job_id for line in text.splitlines()] == ["job-7", "job-7"]
    outside = render("INFO", "idle", TEXT, now=NOON, ctx=worker_context(job_id=None))
    assert outside == "2026-01-01T12:00:00.250Z INFO    [shard 3] idle"
    assert parse(outside).job_id is None
    assert parse("jobfleet: task 0 attempt 0 exited with 1").job_id is None


def test_a_json_line_reads_back_as_a_text_line_of_its_job() -> None:
    line = parse(render("INFO", "hello", JSON, now=NOON, ctx=worker_context()))
    assert line.job_id == "job-7"
    assert line.text == "2026-01-01T12:00:00.250Z INFO    [job job-7] hello"


def test_a_tagged_stream_makes_one_record_per_complete_line() -> None:
    target = io.StringIO()
    stream = TaggedStream(target, "INFO", JSON)
    stream.write("one\ntw")
    stream.write("o\n")
    stream.write("three")
    stream.flush()
    assert [json.loads(r)["message"] for r in target.getvalue().splitlines()] == ["one", "two"]
    stream.finish()
    assert json.loads(target.getvalue().splitlines()[-1])["message"] == "three"


def test_the_log_format_is_json_on_gcp_text_locally_unless_chosen() -> None:
    assert Settings.from_env({}).line_format == TEXT
    assert Settings.from_env({"JOBFLEET_BACKEND": "gcp"}).line_format == JSON
    assert Settings.from_env({"JOBFLEET_LOG_FORMAT": "json"}).line_format == JSON
    chosen = Settings.from_env(
        {"JOBFLEET_BACKEND": "gcp", "JOBFLEET_LOG_FORMAT": "TEXT", "GOOGLE_CLOUD_PROJECT": "p"})
    assert chosen.line_format == TEXT
    assert chosen.environment()["JOBFLEET_LOG_FORMAT"] == "text"
    with pytest.raises(ConfigurationError, match="JOBFLEET_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"JOBFLEET_LOG_FORMAT": "xml"})


def test_a_traceparent_is_parsed_and_written_back() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    found = TraceContext.parse(header)
    assert found == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert found.traceparent == header
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"):
        assert TraceContext.parse(bad) is None


def test_the_worker_environment_carries_the_traceparent() -> None:
    env = Settings().worker_environment("j", "o", [], traceparent="00-" + "a" * 32 + "-" +
                                        "b" * 16 + "-00")
    assert env["TRACEPARENT"].startswith("00-aaaa")
    assert "TRACEPARENT" not in Settings().worker_environment("j", "o", [])


def test_the_cloud_logging_filter_names_the_execution_and_the_instance() -> None:
    assert entries_filter("orch-1") == (
        'resource.type="cloud_run_job" AND labels.orchestration_id="orch-1"')
    assert entries_filter("orch-1", "job-7", since=NOON) == (
        'resource.type="cloud_run_job" AND labels.orchestration_id="orch-1"'
        ' AND labels.job_id="job-7" AND timestamp>="2026-01-01T12:00:00.250000Z"')
    assert entries_filter('a"b\\c') == (
        'resource.type="cloud_run_job" AND labels.orchestration_id="a\\"b\\\\c"')
