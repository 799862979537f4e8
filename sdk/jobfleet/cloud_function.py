"""The completion function: a Firestore trigger on the shard counter documents.

`on_shard_updated` runs on functions-framework, started by `jobfleet function` (the
deployment's image runs it as the Cloud Run service `jobfleet-completion`, and
`jobfleet dev up` starts it the same way), behind an Eventarc trigger on the
`google.cloud.firestore.document.v1.updated` event of
`jobfleet_orchestrations/{orchestration}/shards/{shard}`. A shard's counters
are written only by commits that end instances of the shard, in the same commit, and a
worker makes such a commit at most once a second: the function runs once per worker
commit, not once per instance (the counters' creation at kick-off is not an update and
does not invoke it). The event holds the counters as that commit left them, so the
function needs no read to tell whether the shard is done; once it is, `settle` flips the
orchestration in a conditional write (one caller wins) and publishes the
JobCompletedEvent until the publish is recorded. Delivery is at least once and in any
order, so the function keeps no state.
"""

from __future__ import annotations

import functools
import logging
import sys

import functions_framework
from cloudevents.http import CloudEvent
from google.events.cloud.firestore_v1 import Document, DocumentEventData

from jobfleet.backends import open_bus, open_store
from jobfleet.backends.gcp.firestore_documents import SHARDS, unfinished_in
from jobfleet.config import Settings
from jobfleet.core.completion import Advance, settle_after_commit
from jobfleet.core.ports import EventBus, Store
from jobfleet.errors import UnknownOrchestration
from jobfleet.log_lines import context, install_formatter
from jobfleet.pipelines import advancer
from jobfleet.tracing import TraceContext

log = logging.getLogger("jobfleet.function")


@functools.cache
def _ports() -> tuple[Store, EventBus, Advance]:
    """One store and bus per function instance, reused across invocations, and what
    follows an end (a pipeline's next stage, webhooks: jobfleet.pipelines); log lines
    in the format Cloud Logging reads (log_lines.py)."""
    settings = Settings.from_env(backend="gcp")
    install_formatter(settings.line_format, "function", sys.stdout)
    context.project = settings.project
    return open_store(settings), open_bus(settings), advancer(settings)


def _counters(document: Document) -> dict[str, int]:
    # The counters are the integer fields; `expire_at` (a timestamp) is not one.
    return {name: int(value.integer_value) for name, value in document.fields.items()
            if "integer_value" in value}


def _orchestration_and_shard(document_name: str) -> tuple[str, int] | None:
    """.../documents/jobfleet_orchestrations/{orchestration}/shards/{shard}"""
    parts = document_name.split("/")
    if len(parts) < 4 or parts[-2] != SHARDS or not parts[-1].isdigit():
        return None
    return parts[-3], int(parts[-1])


@functions_framework.cloud_event
def on_shard_updated(cloud_event: CloudEvent) -> None:
    change = DocumentEventData.deserialize(cloud_event.get_data())
    if not change.value.name:  # a deletion (an abandoned kick-off cleaning up)
        return
    where = _orchestration_and_shard(change.value.name)
    if where is None:  # raising would only have it delivered again
        log.warning("ignored a change of %s: the function's trigger must be on updates of "
                    "jobfleet_orchestrations/{o}/shards/{s} (infra/README.md)",
                    change.value.name)
        return
    oid, shard = where
    unfinished = unfinished_in(_counters(change.value))
    if unfinished:
        return
    store, bus, advance = _ports()
    context.orchestration_id, context.job_id, context.job_name = oid, None, None
    context.trace_id = context.span_id = None
    try:
        snap = settle_after_commit(store, bus, oid, unfinished, advance)
    except UnknownOrchestration:  # deleted since: delivering it again cannot help
        log.warning("ignored shard %d of orchestration %s: there is no such orchestration",
                    shard, oid)
        return
    except Exception:
        log.exception("settling orchestration %s after shard %d ended failed; the event "
                      "will be redelivered", oid, shard)
        raise
    if snap is not None and snap.status.terminal and snap.event_published:
        trace = TraceContext.parse(snap.traceparent)
        if trace is not None:
            context.trace_id, context.span_id = trace.trace_id, trace.span_id
            context.trace_sampled = trace.sampled
        context.job_name = snap.job_name
        log.info("orchestration %s ended %s; its completion event is published",
                 oid, snap.status)
