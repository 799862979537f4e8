"""Log lines: how workers, the API and the function write them, and how they are read back.

Two formats (docs/design.md, Logs): `json`, one JSON object a line in the shape Cloud
Logging reads from a container's output (severity, message, the
`logging.googleapis.com/labels` orchestration_id / job_id / job_name, and the trace),
the default on the gcp backend; `text`, one readable line each, the default locally:

    2025-01-31T12:00:00.123Z INFO    [job 6f1c...] what the job printed

A worker tags every line written while an attempt runs with that instance's job id,
whether the job printed it (stdout, stderr) or logged it (`logging`), so that
`jobfleet logs ID --job JOB_ID` can pick one instance's lines out of the
orchestration's log. The worker's own lines outside an attempt say `[shard N]`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO, cast

TEXT, JSON = "text", "json"
LOG_FORMATS = (TEXT, JSON)

LABELS = "logging.googleapis.com/labels"
TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"

FLUSH_SECONDS = 0.2  # a printing job's lines reach the file at least this often
FLUSH_BYTES = 64 * 1024
_TEXT_JOB = re.compile(r"^\S+ \S+ +\[job ([^\]\s]+)\] ")


class LogContext:
    """What every line is labelled with. One per process (module `context`), and not a
    context variable on purpose: a thread a job starts prints for the same instance."""

    __slots__ = ("job_id", "job_name", "orchestration_id", "project", "source", "span_id",
                 "trace_id", "trace_sampled")

    def __init__(self) -> None:
        self.orchestration_id: str | None = None
        self.job_name: str | None = None
        self.job_id: str | None = None  # set while an attempt runs
        self.source = "jobfleet"  # who writes outside an attempt: "shard 3", "api", ...
        self.trace_id: str | None = None  # 32 hex digits
        self.span_id: str | None = None  # 16 hex digits
        self.trace_sampled = False
        self.project: str | None = None  # for the trace's resource name


context = LogContext()


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def render(severity: str, message: str, fmt: str, *, now: float | None = None,
           ctx: LogContext = context) -> str:
    """One record as it is written, without the final newline: a JSON object, or in
    text one line per line of the message, each tagged (so that a filter on the job id
    keeps a traceback whole)."""
    stamp = _timestamp(time.time() if now is None else now)
    if fmt == JSON:
        return json.dumps(json_record(severity, message, stamp, ctx), ensure_ascii=False)
    who = f"job {ctx.job_id}" if ctx.job_id else ctx.source
    prefix = f"{stamp} {severity:<7} [{who}] "
    return "\n".join(prefix + line for line in message.split("\n"))


def json_record(severity: str, message: str, stamp: str, ctx: LogContext) -> dict[str, Any]:
    record: dict[str, Any] = {"severity": severity, "message": message, "time": stamp}
    labels = {
        name: value for name, value in (
            ("orchestration_id", ctx.orchestration_id), ("job_id", ctx.job_id),
            ("job_name", ctx.job_name),
        ) if value
    }
    if labels:
        record[LABELS] = labels
    if ctx.trace_id:
        record[TRACE] = (f"projects/{ctx.project}/traces/{ctx.trace_id}" if ctx.project
                         else ctx.trace_id)
        if ctx.span_id:
            record[SPAN_ID] = ctx.span_id
        record[TRACE_SAMPLED] = ctx.trace_sampled
    return record


# -- writing ----------------------------------------------------------------------------


class TaggedStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr in a worker: every complete line becomes a
    record of `severity` labelled from the context. Records are written to the file
    descriptor in whole lines, one write for many, so that lines of workers sharing a
    log file never interleave mid-line; and not once per instance: at a flush (the
    worker flushes once per batch), or when FLUSH_SECONDS or FLUSH_BYTES have passed."""

    def __init__(self, target: TextIO, severity: str, fmt: str) -> None:
        super().__init__()
        self.target, self.severity, self.fmt = target, severity, fmt
        self._partial = ""
        self._pending: list[str] = []
        self._size = 0
        self._since = time.monotonic()
        self._lock = threading.Lock()  # the heartbeat thread logs too
        try:
            self._fd: int | None = target.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", None) or "utf-8"

    @property
    def buffer(self) -> Any:
        """Bytes written here are not tagged."""
        return self.target.buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.target.fileno()

    def write(self, text: str) -> int:
        if "\n" not in text:
            self._partial += text
            if len(self._partial) > FLUSH_BYTES:
                self.record(self.severity, self._partial)
                self._partial = ""
            return len(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.record(self.severity, line)
        return len(text)

    def record(self, severity: str, message: str) -> None:
        line = render(severity, message, self.fmt) + "\n"
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
        if self._size >= FLUSH_BYTES or time.monotonic() - self._since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self._since = time.monotonic()
        if not self._pending:
            return
        with self._lock:
            data = "".join(self._pending).encode(self.encoding, "replace")
            self._pending.clear()
            self._size = 0
        if self._fd is None:
            self.target.write(data.decode(self.encoding))
            self.target.flush()
            return
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def finish(self) -> None:
        """The last partial line too (the process is ending)."""
        if self._partial:
            self.record(self.severity, self._partial)
            self._partial = ""
        self.flush()


class RecordHandler(logging.Handler):
    """`logging` records into a TaggedStream, with their own severity."""

    def __init__(self, stream: TaggedStream) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.stream.record(severity_of(record.levelno), message)
        except Exception:
            self.handleError(record)


class LineFormatter(logging.Formatter):
    """For processes whose logging someone else set up (uvicorn, the function)."""

    def __init__(self, fmt: str = TEXT) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return render(severity_of(record.levelno), message, self.fmt, now=record.created)


def severity_of(level: int) -> str:
    if level >= logging.CRITICAL:
        return "CRITICAL"
    if level >= logging.ERROR:
        return "ERROR"
    if level >= logging.WARNING:
        return "WARNING"
    if level >= logging.INFO:
        return "INFO"
    return "DEBUG"


class WorkerOutput:
    """A worker's stdout and stderr tagged, and the root logger writing through them."""

    def __init__(self, fmt: str) -> None:
        self.original = (sys.stdout, sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        self.stdout = TaggedStream(sys.stdout, "INFO", fmt)
        self.stderr = TaggedStream(sys.stderr, "ERROR", fmt)
        self.handler = RecordHandler(self.stderr)
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        sys.stdout = cast(TextIO, self.stdout)
        sys.stderr = cast(TextIO, self.stderr)

    def flush(self) -> None:
        self.stdout.flush()
        self.stderr.flush()

    def close(self) -> None:
        self.stdout.finish()
        self.stderr.finish()
        logging.getLogger().removeHandler(self.handler)
        sys.stdout, sys.stderr = self.original


def install_formatter(fmt: str, source: str, stream: TextIO | None = None) -> logging.Handler:
    """Root logging in `fmt` for a process that is not a worker (the API, the function)."""
    context.source = source
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter(fmt))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


# -- reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of an orchestration's logs as `jobfleet logs` prints it."""

    text: str
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "job_id": self.job_id}


def parse(line: str) -> LogLine:
    """A line of a local log file: text (tagged or not) or a JSON record, shown as text."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if isinstance(data, dict) and "message" in data:
            labels = data.get(LABELS) or {}
            job_id = labels.get("job_id") if isinstance(labels, dict) else None
            return LogLine(
                text_line(str(data.get("time", "")), str(data.get("severity", "DEFAULT")),
                          job_id, str(data["message"])),
                job_id,
            )
    found = _TEXT_JOB.match(line)
    return LogLine(line, found.group(1) if found else None)


def text_line(stamp: str, severity: str, job_id: str | None, message: str) -> str:
    """A record shown as a text line, whatever format it was written in."""
    who = f"[job {job_id}] " if job_id else ""
    return f"{stamp} {severity:<7} {who}{message}"
