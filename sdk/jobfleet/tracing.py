"""Trace context with OpenTelemetry: a fan-out is one trace.

The kick-off runs in a span (`jobfleet.kick_off`) and keeps its W3C `traceparent` in
the orchestration; every task gets it as TRACEPARENT, each attempt runs in a child
span (`jobfleet.attempt`), the worker's log lines carry the trace, and the
JobCompletedEvent carries the traceparent as an attribute.

Only `opentelemetry-api` is required. With no OpenTelemetry SDK configured, spans
record nothing, and a kick-off outside any trace gets a new, unsampled trace id all
the same, so that its log lines still group by trace. Spans are exported to Cloud
Trace when JOBFLEET_TRACE_EXPORT=cloud-trace (pip install "jobfleet[trace]"); an
application that set up its own tracer provider keeps it.
"""

from __future__ import annotations

import importlib
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobfleet.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

# OpenTelemetry is imported where it is used, not here: every worker process imports
# this module, and most never start a span (20 ms of start-up each).

TRACER_NAME = "jobfleet"
TRACE_EXPORTS = ("cloud-trace",)
TRACE_EXTRA = 'exporting to Cloud Trace needs its extra: pip install "jobfleet[trace]"'
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16
    sampled: bool

    @classmethod
    def parse(cls, traceparent: str | None) -> TraceContext | None:
        """A W3C traceparent (version 00), or None when absent or malformed."""
        found = _TRACEPARENT.match((traceparent or "").strip().lower())
        if found is None or set(found.group(1)) == {"0"} or set(found.group(2)) == {"0"}:
            return None
        return cls(found.group(1), found.group(2), bool(int(found.group(3), 16) & 1))

    @classmethod
    def of(cls, span: SpanContext) -> TraceContext:
        return cls(f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def span_context(self) -> SpanContext:
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext(
            trace_id=int(self.trace_id, 16), span_id=int(self.span_id, 16), is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT),
        )


def recording() -> bool:
    """Whether an OpenTelemetry SDK is set up (spans are worth starting). Whoever set
    one up imported OpenTelemetry's trace API first."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@contextmanager
def continued(traceparent: str | None) -> Iterator[None]:
    """Run in the trace of an incoming request's `traceparent` header, if it has one."""
    parent = TraceContext.parse(traceparent)
    if parent is None:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan

    token = otel_context.attach(
        trace.set_span_in_context(NonRecordingSpan(parent.span_context()))
    )
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def kick_off_span(job_name: str) -> Iterator[TraceContext]:
    """The kick-off's span, a child of the caller's current span if there is one."""
    from opentelemetry import trace

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        "jobfleet.kick_off", attributes={"jobfleet.job_name": job_name}
    ) as span:
        context = span.get_span_context()
        if context.is_valid:
            yield TraceContext.of(context)
        else:  # no SDK and no trace around: a trace id of our own, for the logs
            yield TraceContext(secrets.token_hex(16), secrets.token_hex(8), sampled=False)


@contextmanager
def attempt_span(parent: TraceContext | None, job_name: str, job_id: str) -> Iterator[str | None]:
    """A span for one attempt, continuing the kick-off's trace; yields its span id (None
    when nothing records, in which case the log lines name the kick-off's span)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan

    tracer = trace.get_tracer(TRACER_NAME)
    context = None if parent is None else trace.set_span_in_context(
        NonRecordingSpan(parent.span_context())
    )
    with tracer.start_as_current_span(
        "jobfleet.attempt", context=context,
        attributes={"jobfleet.job_name": job_name, "jobfleet.job_id": job_id},
    ) as span:
        yield f"{span.get_span_context().span_id:016x}"


_configured = False


def configure(export: str | None, project: str | None) -> None:
    """Export spans as JOBFLEET_TRACE_EXPORT says, once per process, unless the
    application already set a tracer provider."""
    global _configured
    if not export or _configured or recording():
        return
    if export not in TRACE_EXPORTS:
        raise ConfigurationError(
            f"unknown trace export {export!r} (JOBFLEET_TRACE_EXPORT); "
            f"choose {', '.join(TRACE_EXPORTS)} or leave it unset"
        )
    try:
        sdk = importlib.import_module("opentelemetry.sdk.trace")
        export_module = importlib.import_module("opentelemetry.sdk.trace.export")
        cloud_trace = importlib.import_module("opentelemetry.exporter.cloud_trace")
    except ImportError as exc:
        raise ConfigurationError(f"{TRACE_EXTRA} ({exc.name} is missing)") from None
    provider = sdk.TracerProvider()
    exporter = cloud_trace.CloudTraceSpanExporter(project_id=project)
    provider.add_span_processor(export_module.BatchSpanProcessor(exporter))
    importlib.import_module("opentelemetry.trace").set_tracer_provider(provider)
    _configured = True
