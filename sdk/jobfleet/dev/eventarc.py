"""Firestore trigger events: what the emulator sends, what Eventarc sends, and sending it.

Eventarc POSTs a `google.cloud.firestore.document.v1.updated` (or `.written`, ...)
CloudEvent in binary content mode: `ce-*` headers, `content-type: application/protobuf` and a
`DocumentEventData` body (the new document, the old one, and for an update the mask of
changed fields). The Firestore emulator, given a trigger through its
`/emulator/v1/projects/{p}/eventarcTrigger` API, POSTs nearly that to its
`--functions_emulator` address, with these differences (measured on
cloud-firestore-emulator 1.19.9, Google Cloud SDK 528): `ce-source` reads
`projects/projects/...`; the body is the protobuf in base64 text; `ce-time` has whole
seconds; the update mask is always there and empty; `ce-datacontenttype` is set beside
`content-type`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from google.events.cloud.firestore_v1 import DocumentEventData
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from jobfleet.errors import ConfigurationError

WRITTEN = "google.cloud.firestore.document.v1.written"  # creates, updates and deletes
UPDATED = "google.cloud.firestore.document.v1.updated"  # updates only
DATASCHEMA = (
    "https://github.com/googleapis/google-cloudevents/blob/main/"
    "proto/google/events/cloud/firestore/v1/data.proto"
)
DATABASE = "(default)"
NAMESPACE = "(default)"
# The completion function's trigger: updates of the shard counters (cloud_function.py).
SHARD_COUNTERS = "jobfleet_orchestrations/{orchestration}/shards/{shard}"
EVERY_DOCUMENT = "{path=**}"
NO_DOCUMENTS = "jobfleet_retired_triggers/{document}"
DEFAULT_LOCATION = "us-central1"
EMULATOR_TIMEOUT = 10.0
POST_TIMEOUT = 30.0

# The raw protobuf class: parsing and building it is several times faster than through
# proto-plus, and a write tally (write_tally.py) of 10,000 instances sees tens of
# thousands of events.
EventDataPb: Any = DocumentEventData.pb()

SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@dataclass(frozen=True, slots=True)
class FirestoreEvent:
    """One CloudEvent as Eventarc sends it: the document's path, headers and body."""

    document: str
    headers: dict[str, str]
    body: bytes


def field_path(name: str) -> str:
    if SIMPLE_FIELD.fullmatch(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def changed_fields(old: Any, new: Any) -> list[str]:
    """The update mask: the top-level fields an update added, removed or changed."""
    names = set(old.fields) | set(new.fields)
    return sorted(
        field_path(name)
        for name in names
        if name not in old.fields or name not in new.fields or old.fields[name] != new.fields[name]
    )


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cloud_event_headers(
    project: str, path: str, when: dt.datetime, event_id: str, location: str,
    event_type: str = UPDATED,
) -> dict[str, str]:
    """The attributes Eventarc sets on a Firestore event, as binary-mode headers."""
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": f"//firestore.googleapis.com/projects/{project}/databases/{DATABASE}",
        "ce-subject": f"documents/{path}",
        "ce-time": rfc3339(when),
        "ce-dataschema": DATASCHEMA,
        "ce-project": project,
        "ce-location": location,
        "ce-database": DATABASE,
        "ce-namespace": NAMESPACE,
        "ce-document": path,
        "content-type": "application/protobuf",
    }


def as_eventarc_sends(
    project: str,
    event_id: str,
    emulator_body: bytes,
    received: dt.datetime,
    location: str = DEFAULT_LOCATION,
    event_type: str = UPDATED,
) -> FirestoreEvent:
    """The emulator's trigger request as Eventarc's; ValueError if it is not one.

    `ce-time` is the new document's update time; a delete, which has none, gets
    `received`, the time the request arrived.
    """
    try:
        data = EventDataPb.FromString(base64.b64decode(emulator_body))
    except (binascii.Error, DecodeError) as exc:
        raise ValueError(f"not a base64 DocumentEventData: {exc}") from exc
    written, before = data.HasField("value"), data.HasField("old_value")
    if not (written or before):
        raise ValueError("the event names no document")
    data.ClearField("update_mask")
    if written and before:
        data.update_mask.field_paths.extend(changed_fields(data.old_value, data.value))
    document = data.value if written else data.old_value
    path = document.name.partition("/documents/")[2]
    when = document.update_time.ToDatetime(tzinfo=dt.UTC) if written else received
    headers = cloud_event_headers(project, path, when, event_id, location, event_type)
    return FirestoreEvent(path, headers, data.SerializeToString())


def register_trigger(
    firestore_host: str, project: str, trigger_id: str, documents: str = SHARD_COUNTERS,
    event_type: str = UPDATED,
) -> None:
    """Have the emulator POST every change of `event_type` (by default: every update of the
    project's shard counters) to the documents matching `documents` as `trigger_id`.

    The emulator has no call to remove a trigger; registering an id again replaces it,
    so `retire_trigger` points it at documents that jobfleet never writes.
    """
    url = (
        f"http://{firestore_host}/emulator/v1/projects/{urllib.parse.quote(project, safe='')}"
        f"/eventarcTrigger?eventarcTriggerId={urllib.parse.quote(trigger_id, safe='')}"
    )
    trigger = {
        "eventType": event_type,
        "database": DATABASE,
        "namespace": NAMESPACE,
        "document": {"value": documents, "matchType": "PATH_PATTERN"},
    }
    request = urllib.request.Request(
        url, data=json.dumps(trigger).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=EMULATOR_TIMEOUT) as reply:
            reply.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ConfigurationError(
            f"the Firestore emulator at {firestore_host} refused the trigger: "
            f"HTTP {exc.code} {detail}"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(
            f"could not register a trigger with the Firestore emulator at {firestore_host} "
            f"({exc}); is it running?"
        ) from exc


def retire_trigger(firestore_host: str, project: str, trigger_id: str) -> None:
    register_trigger(firestore_host, project, trigger_id, NO_DOCUMENTS)


class FunctionEndpoint:
    """One keep-alive connection to the function, reopened after an error."""

    def __init__(self, url: str, timeout: float = POST_TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"function URL {url!r} must be http(s)://host[:port]/path")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(self, event: FirestoreEvent) -> int:
        """POST once; the HTTP status. Raises OSError / HTTPException when there is none."""
        connection = self._connection or self._connect()
        try:
            connection.request("POST", self._path, body=event.body, headers=event.headers)
            reply = connection.getresponse()
            reply.read()
        except BaseException:
            self.close()
            raise
        if reply.will_close:
            self.close()
        return reply.status

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._connection = kind(self._host, self._port, timeout=self._timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
