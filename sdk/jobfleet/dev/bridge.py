"""The trigger bridge for dev and tests: Firestore changes as Eventarc CloudEvents.

In the cloud, Eventarc turns each write under `jobfleet_orchestrations/{id}/jobs/{job_id}`
into a `google.cloud.firestore.document.v1.written` CloudEvent and POSTs it to the
completion function. The Firestore emulator has no Eventarc, so this bridge listens to the
emulator and sends the same request (binary content mode, the same attributes, a
`DocumentEventData` protobuf body), so the function runs unchanged on a laptop.

Where it differs from Eventarc, harmlessly for a function that reads the store: a
listener sees consistent snapshots, so quick successive writes to one document may
arrive as one change; and documents that exist when the bridge starts are not announced.

Run it with `python -m jobfleet.dev.bridge --project P --function-url URL`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
import logging
import math
import os
import queue
import random
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore import Client, DocumentReference, GeoPoint
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.watch import ChangeType, DocumentChange
from google.events.cloud.firestore_v1 import Document, DocumentEventData

from jobfleet.errors import ConfigurationError

log = logging.getLogger(__name__)

WRITTEN = "google.cloud.firestore.document.v1.written"
DATASCHEMA = (
    "https://github.com/googleapis/google-cloudevents/blob/main/"
    "proto/google/events/cloud/firestore/v1/data.proto"
)
DATABASE = "(default)"
NAMESPACE = "(default)"
ORCHESTRATIONS = "jobfleet_orchestrations"
DEFAULT_LOCATION = "us-central1"

CONCURRENCY = 16
MAX_PENDING = 100_000
RETRIES = 4
RETRY_PAUSE = 0.05  # doubled on each retry
POST_TIMEOUT = 30.0
SHUFFLE_WINDOW = 0.05  # seconds over which the copies of a change are spread when shuffling

# The raw protobuf classes: building these is several times faster than through proto-plus,
# and a burst of 10,000 finishing instances is tens of thousands of changes.
EventDataPb: Any = DocumentEventData.pb()
DocumentPb: Any = Document.pb()

SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One CloudEvent request; its copies (deliveries > 1) share it, id included."""

    document: str
    headers: dict[str, str]
    body: bytes


def set_time(target: Any, when: dt.datetime) -> None:
    target.FromDatetime(when)
    if isinstance(when, DatetimeWithNanoseconds) and when.nanosecond:
        target.nanos = when.nanosecond  # Firestore's digits past the microsecond (0 if none)


def set_value(target: Any, value: object, documents: str) -> None:
    """Write a value as the listener decoded it back into a Firestore `Value` proto.

    `documents` is the database's `projects/{p}/databases/(default)/documents` prefix that
    a reference value is named under.
    """
    if value is None:
        target.null_value = 0
    elif isinstance(value, bool):
        target.boolean_value = value
    elif isinstance(value, int):
        target.integer_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, dt.datetime):
        set_time(target.timestamp_value, value)
    elif isinstance(value, DocumentReference):
        target.reference_value = f"{documents}/{value.path}"
    elif isinstance(value, GeoPoint):
        target.geo_point_value.latitude = value.latitude
        target.geo_point_value.longitude = value.longitude
    elif isinstance(value, Mapping):
        fields = target.map_value
        fields.SetInParent()  # an empty map is still a map
        for key, item in value.items():
            set_value(fields.fields[key], item, documents)
    elif isinstance(value, Sequence):
        values = target.array_value
        values.SetInParent()
        for item in value:
            set_value(values.values.add(), item, documents)
    else:
        raise TypeError(f"no Firestore value for {type(value).__name__}: {value!r}")


def to_document(snapshot: DocumentSnapshot[Any], documents: str) -> Any:
    document = DocumentPb(name=f"{documents}/{snapshot.reference.path}")
    for key, value in (snapshot.to_dict() or {}).items():
        set_value(document.fields[key], value, documents)
    if snapshot.create_time is not None:
        set_time(document.create_time, snapshot.create_time)
    if snapshot.update_time is not None:
        set_time(document.update_time, snapshot.update_time)
    return document


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


class FunctionEndpoint:
    """One keep-alive connection to the function, reopened after an error; one per worker."""

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

    def post(self, delivery: Delivery) -> int:
        """POST once; the HTTP status. Raises OSError / HTTPException when there is none."""
        connection = self._connection or self._connect()
        try:
            connection.request("POST", self._path, body=delivery.body, headers=delivery.headers)
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


class FirestoreBridge:
    """Listens to the `jobs` collection group and POSTs each change to the function.

    Deliveries go through a bounded queue to a pool of `concurrency` workers, so that a
    burst is posted in parallel and the listener never waits on the function. A delivery
    answered with a 5xx, or not answered, is retried `RETRIES` times with a growing pause.
    `deliveries=3, shuffle=True` sends every change three times (same `ce-id`), the
    copies spread over `shuffle_window` seconds so that they interleave with other
    changes' copies: Eventarc's at-least-once, out-of-order delivery, on purpose.
    """

    def __init__(
        self,
        project: str,
        function_url: str,
        collection_group: str = "jobs",
        deliveries: int = 1,
        shuffle: bool = False,
        *,
        concurrency: int = CONCURRENCY,
        max_pending: int = MAX_PENDING,
        shuffle_window: float = SHUFFLE_WINDOW,
        location: str = DEFAULT_LOCATION,
    ) -> None:
        if deliveries < 1 or concurrency < 1:
            raise ConfigurationError("deliveries and concurrency must be at least 1")
        FunctionEndpoint(function_url)  # refuse a bad URL now, not in every worker
        self.project = project
        self.function_url = function_url
        self.collection_group = collection_group
        self.deliveries = deliveries
        self.shuffle = shuffle
        self.concurrency = concurrency
        self.shuffle_window = shuffle_window
        self.location = location
        self.changes = 0  # document changes seen
        self.delivered = 0  # requests the function answered with 2xx
        self.invocations = 0  # requests the function answered at all (retries included)
        self.failed = 0  # deliveries given up: a 4xx, or no 2xx after the retries
        self._documents = f"projects/{project}/databases/{DATABASE}/documents"
        self._source = f"//firestore.googleapis.com/projects/{project}/databases/{DATABASE}"
        self._queue: queue.PriorityQueue[tuple[float, int, Delivery | None]] = (
            queue.PriorityQueue(max_pending)
        )
        self._order = itertools.count()
        self._last_seen: dict[str, Any] = {}  # path -> Document proto, for old_value
        self._pending = 0
        self._lock = threading.Condition()
        self._ready = threading.Event()
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._client: Any = None  # a firestore Client; its close() and the Watch's are untyped
        self._watch: Any = None

    def start(self, timeout: float = 30.0) -> FirestoreBridge:
        """Start posting, and listen; returns once the listener has the current state."""
        self._workers = [
            threading.Thread(target=self._post_loop, name=f"bridge-post-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()
        self._client = Client(project=self.project)
        query = self._client.collection_group(self.collection_group)
        self._watch = query.on_snapshot(self._on_snapshot)
        if not self._ready.wait(timeout):
            self.stop(drain=False)
            where = os.environ.get("FIRESTORE_EMULATOR_HOST", "Firestore (no emulator set)")
            raise ConfigurationError(
                f"the bridge had no snapshot from {where} within {timeout:g}s; "
                "is FIRESTORE_EMULATOR_HOST right and the emulator running?"
            )
        return self

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every change seen so far has been delivered (or given up)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop listening; deliver what is queued (unless `drain=False`); end the workers."""
        if self._watch is not None:
            self._watch.unsubscribe()
            self._watch = None
        if drain:
            self.wait_idle(timeout)
        self._stopping = True
        for _ in self._workers:
            self._queue.put((math.inf, next(self._order), None))
        for worker in self._workers:
            worker.join(timeout)
        self._workers = []
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> FirestoreBridge:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _on_snapshot(
        self, documents: list[DocumentSnapshot[Any]], changes: list[DocumentChange], read_time: Any
    ) -> None:
        # Runs on the listener's thread: an exception escaping would end the listener.
        try:
            if not self._ready.is_set():
                for snapshot in documents:  # the state before the bridge: not announced
                    self._last_seen[snapshot.reference.path] = to_document(
                        snapshot, self._documents
                    )
                self._ready.set()
                return
            for change in changes:
                delivery = self._capture(change, read_time)
                if delivery is not None:
                    self._enqueue(delivery)
        except Exception:
            log.exception("the bridge could not turn a Firestore change into a CloudEvent")

    def _capture(self, change: DocumentChange, read_time: dt.datetime) -> Delivery | None:
        snapshot: DocumentSnapshot[Any] = change.document
        path = snapshot.reference.path
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != ORCHESTRATIONS:
            return None  # a `jobs` collection elsewhere: not what the trigger matches
        data = EventDataPb()
        old = self._last_seen.get(path)
        if change.type is ChangeType.REMOVED:
            self._last_seen.pop(path, None)
            if old is None:
                old = to_document(snapshot, self._documents)
            data.old_value.CopyFrom(old)
            when = read_time
        else:
            new = to_document(snapshot, self._documents)
            self._last_seen[path] = new
            data.value.CopyFrom(new)
            if old is not None:
                data.old_value.CopyFrom(old)
                data.update_mask.field_paths.extend(changed_fields(old, new))
            when = snapshot.update_time or read_time
        return Delivery(path, self._headers(path, when), data.SerializeToString())

    def _headers(self, path: str, when: dt.datetime) -> dict[str, str]:
        """The attributes Eventarc sets on a Firestore event, as binary-mode headers."""
        return {
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-type": WRITTEN,
            "ce-source": self._source,
            "ce-subject": f"documents/{path}",
            "ce-time": rfc3339(when),
            "ce-dataschema": DATASCHEMA,
            "ce-project": self.project,
            "ce-location": self.location,
            "ce-database": DATABASE,
            "ce-namespace": NAMESPACE,
            "ce-document": path,
            "content-type": "application/protobuf",
        }

    def _enqueue(self, delivery: Delivery) -> None:
        with self._lock:
            self.changes += 1
            self._pending += self.deliveries
        now = time.monotonic()
        for _ in range(self.deliveries):
            due = now + random.uniform(0, self.shuffle_window) if self.shuffle else 0.0
            self._queue.put((due, next(self._order), delivery))

    def _post_loop(self) -> None:
        endpoint = FunctionEndpoint(self.function_url)
        try:
            while True:
                due, _, delivery = self._queue.get()
                if delivery is None:
                    return
                if not self._stopping:
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    self._deliver(endpoint, delivery)
                with self._lock:
                    self._pending -= 1
                    if not self._pending:
                        self._lock.notify_all()
        finally:
            endpoint.close()

    def _deliver(self, endpoint: FunctionEndpoint, delivery: Delivery) -> None:
        problem = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            try:
                status = endpoint.post(delivery)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            with self._lock:
                self.invocations += 1
                if 200 <= status < 300:
                    self.delivered += 1
                    return
            problem = f"HTTP {status}"
            if status < 500:
                break  # the function refused the event; sending it again will not help
        with self._lock:
            self.failed += 1
        log.warning("gave up delivering the change of %s: %s", delivery.document, problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobfleet.dev.bridge",
        description="POST each change of the Firestore emulator's job documents to a "
        "function as the CloudEvent Eventarc would send.",
    )
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    parser.add_argument("--function-url", required=True)
    parser.add_argument("--collection-group", default="jobs")
    parser.add_argument("--deliveries", type=int, default=1, help="copies of every change")
    parser.add_argument("--shuffle", action="store_true", help="deliver out of order")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    if not args.project:
        parser.error("--project is required (or set GOOGLE_CLOUD_PROJECT)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    finished = threading.Event()

    def finish(signum: int, frame: FrameType | None) -> None:
        finished.set()

    signal.signal(signal.SIGINT, finish)
    signal.signal(signal.SIGTERM, finish)
    try:
        bridge = FirestoreBridge(
            args.project,
            args.function_url,
            args.collection_group,
            args.deliveries,
            args.shuffle,
            concurrency=args.concurrency,
        ).start()
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("bridging %s/*/%s to %s", ORCHESTRATIONS, args.collection_group, args.function_url)
    finished.wait()
    bridge.stop()
    log.info(
        "stopped: %d changes, %d delivered, %d failed",
        bridge.changes, bridge.delivered, bridge.failed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
