"""The completion Cloud Function: a Firestore trigger on job documents.

Deployed from functions/ (whose main.py re-exports `on_job_written`) with the
`google.cloud.firestore.document.v1.written` event on
`jobfleet_orchestrations/{orchestration}/jobs/{job}`. Delivery is at least once
and in any order, so the function keeps no state: a write that made an instance
terminal leads to `settle`, which flips the orchestration in a transaction (one
caller wins) and publishes the JobCompletedEvent until the publish is recorded.
"""

from __future__ import annotations

import functools
import logging
import sys

import functions_framework
from cloudevents.http import CloudEvent
from google.events.cloud.firestore_v1 import Document, DocumentEventData

from jobfleet.backends import open_bus, open_store
from jobfleet.config import Settings
from jobfleet.core.completion import settle_after_instance
from jobfleet.core.models import Status
from jobfleet.core.ports import EventBus, Store
from jobfleet.core.states import became_terminal
from jobfleet.log_lines import context, install_formatter
from jobfleet.tracing import TraceContext

log = logging.getLogger("jobfleet.function")


@functools.cache
def _ports() -> tuple[Store, EventBus]:
    """One store and bus per function instance, reused across invocations; log lines
    in the format Cloud Logging reads (log_lines.py)."""
    settings = Settings.from_env(backend="gcp")
    install_formatter(settings.line_format, "function", sys.stdout)
    context.project = settings.project
    return open_store(settings), open_bus(settings)


def _status(document: Document) -> Status | None:
    field = document.fields.get("status") if document.name else None
    return Status(field.string_value) if field is not None else None


def _orchestration_id(document_name: str) -> str:
    """.../documents/jobfleet_orchestrations/{orchestration}/jobs/{job}"""
    parts = document_name.split("/")
    return parts[-3]


@functions_framework.cloud_event
def on_job_written(cloud_event: CloudEvent) -> None:
    change = DocumentEventData.deserialize(cloud_event.get_data())
    if not became_terminal(_status(change.old_value), _status(change.value)):
        return
    shard = int(change.value.fields["shard"].integer_value)
    store, bus = _ports()
    oid = _orchestration_id(change.value.name)
    job_name = change.value.fields.get("job_name")
    context.orchestration_id, context.job_id = oid, change.value.name.rsplit("/", 1)[-1]
    context.job_name = job_name.string_value if job_name is not None else None
    context.trace_id = context.span_id = None
    try:
        snap = settle_after_instance(store, bus, oid, shard)
        if snap is not None and snap.status.terminal and snap.event_published:
            trace = TraceContext.parse(snap.traceparent)
            if trace is not None:
                context.trace_id, context.span_id = trace.trace_id, trace.span_id
                context.trace_sampled = trace.sampled
            context.job_id = None
            log.info("orchestration %s ended %s; its completion event is published",
                     oid, snap.status)
    except Exception:
        log.exception("settling orchestration %s failed; the event will be redelivered", oid)
        raise
