"""The Firestore-to-CloudEvent bridge, received by a real functions-framework function."""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud import firestore
from google.events.cloud.firestore_v1 import DocumentEventData
from werkzeug.serving import make_server

from conftest import Emulators
from jobfleet.dev.bridge import FirestoreBridge
from jobfleet.dev.emulators import free_port

WAIT = 20.0
JOB = "jobfleet_orchestrations/orch-1/jobs/job-7"

FUNCTION_SOURCE = '''
import threading

import functions_framework

RECEIVED = []
FAIL_FIRST_DELIVERY = False
_seen = set()
_lock = threading.Lock()


@functions_framework.cloud_event
def on_job_written(cloud_event):
    with _lock:
        first = cloud_event["id"] not in _seen
        _seen.add(cloud_event["id"])
        RECEIVED.append(cloud_event)
    if FAIL_FIRST_DELIVERY and first:
        raise RuntimeError("the store is briefly unreachable")
'''


class Function:
    """A CloudEvent function on functions-framework, served on loopback."""

    def __init__(self, url: str, module: ModuleType) -> None:
        self.url = url
        self.module: Any = module  # the function's source file, loaded by functions-framework

    @property
    def received(self) -> list[CloudEvent]:
        return list(self.module.RECEIVED)

    def wait_for(self, count: int, timeout: float = WAIT) -> list[CloudEvent]:
        assert eventually(lambda: len(self.module.RECEIVED) >= count, timeout), (
            f"the function got {len(self.module.RECEIVED)} of {count} events"
        )
        time.sleep(0.3)  # room for an unexpected extra event to show up
        return self.received


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    eventually(lambda: not (set(threading.enumerate()) - before), timeout=5)
    assert not set(threading.enumerate()) - before


@pytest.fixture
def function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Function]:
    name = f"completion_function_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{name}.py"
    source.write_text(FUNCTION_SOURCE)
    monkeypatch.setattr(sys, "path", list(sys.path))  # create_app adds the source's folder
    app = create_app(  # type: ignore[no-untyped-call]
        target="on_job_written", source=str(source), signature_type="cloudevent"
    )
    module = sys.modules.pop(name)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="function-server")
    serving.start()
    yield Function(f"http://127.0.0.1:{server.server_port}/", module)
    server.shutdown()
    server.server_close()
    serving.join()


@pytest.fixture
def project(gcp_env: Emulators) -> str:
    """A project of its own: an empty database that no other test writes to."""
    return f"bridge-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def db(project: str) -> Iterator[firestore.Client]:
    client = firestore.Client(project=project)
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def start_bridge(project: str, function: Function) -> Iterator[Callable[..., FirestoreBridge]]:
    started: list[FirestoreBridge] = []

    def start(**options: Any) -> FirestoreBridge:
        url = options.pop("function_url", function.url)
        bridge = FirestoreBridge(project, url, **options).start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


def data_of(event: CloudEvent) -> Any:
    return DocumentEventData.deserialize(event.data)


def has(message: Any, field: str) -> bool:
    return bool(type(message).pb(message).HasField(field))


def plain(value: Any) -> object:
    """A Firestore `Value` proto as the Python value it stands for."""
    kind = type(value).pb(value).WhichOneof("value_type")
    if kind == "map_value":
        return {key: plain(item) for key, item in value.map_value.fields.items()}
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "null_value":
        return None
    return getattr(value, kind)


def fields(document: Any) -> dict[str, object]:
    return {key: plain(value) for key, value in document.fields.items()}


def test_each_write_arrives_as_the_cloudevent_eventarc_sends(
    project: str, db: firestore.Client, function: Function, start_bridge: Callable[..., Any]
) -> None:
    start_bridge()
    claimed_at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    job = db.document(JOB)
    job.set({
        "status": "Pending",
        "attempts": 0,
        "progress": 0.5,
        "cancelled": False,
        "error": None,
        "params": {"size": 3, "names": ["a", "b"], "nested": {"deep": [1, {"x": True}]}},
        "checksum": b"\x00\xff",
        "claimed_at": claimed_at,
        "orchestration": db.document("jobfleet_orchestrations/orch-1"),
    })
    job.update({"status": "Completed", "attempts": 1, "result": {"rows": [1, 2, 3]}})
    job.delete()

    events = function.wait_for(3)
    assert len(events) == 3
    documents = f"projects/{project}/databases/(default)/documents"
    for event in events:
        assert event.get_attributes() == {
            "specversion": "1.0",
            "id": event["id"],
            "type": "google.cloud.firestore.document.v1.written",
            "source": f"//firestore.googleapis.com/projects/{project}/databases/(default)",
            "subject": f"documents/{JOB}",
            "time": event["time"],
            "datacontenttype": "application/protobuf",
            "dataschema": "https://github.com/googleapis/google-cloudevents/blob/main/"
            "proto/google/events/cloud/firestore/v1/data.proto",
            "project": project,
            "location": "us-central1",
            "database": "(default)",
            "namespace": "(default)",
            "document": JOB,
        }
    assert len({event["id"] for event in events}) == 3

    # Delivery is concurrent, so tell the writes apart by what they carry.
    by_kind = {(has(data_of(e), "old_value"), has(data_of(e), "value")): e for e in events}
    created = data_of(by_kind[False, True])
    updated = data_of(by_kind[True, True])
    deleted = data_of(by_kind[True, False])

    assert created.value.name == f"{documents}/{JOB}"
    assert fields(created.value) == {
        "status": "Pending",
        "attempts": 0,
        "progress": 0.5,
        "cancelled": False,
        "error": None,
        "params": {"size": 3, "names": ["a", "b"], "nested": {"deep": [1, {"x": True}]}},
        "checksum": b"\x00\xff",
        "claimed_at": claimed_at,
        "orchestration": f"{documents}/jobfleet_orchestrations/orch-1",
    }
    assert not has(created, "update_mask")

    assert fields(updated.old_value) == fields(created.value)
    assert fields(updated.value)["status"] == "Completed"
    assert fields(updated.value)["result"] == {"rows": [1, 2, 3]}
    assert list(updated.update_mask.field_paths) == ["attempts", "result", "status"]
    assert updated.value.create_time == updated.old_value.create_time
    assert updated.value.update_time > updated.old_value.update_time

    assert fields(deleted.old_value) == fields(updated.value)
    assert deleted.old_value.name == f"{documents}/{JOB}"
    times = [by_kind[k]["time"] for k in ((False, True), (True, True), (True, False))]
    assert times == sorted(times)


def test_only_job_documents_changed_after_start_are_announced_with_known_old_values(
    db: firestore.Client, function: Function, start_bridge: Callable[..., Any]
) -> None:
    existing = db.document("jobfleet_orchestrations/orch-2/jobs/before")
    existing.set({"status": "InProgress"})
    bridge = start_bridge()
    db.document("jobfleet_orchestrations/orch-2").set({"status": "InProgress"})
    db.document("elsewhere/x/jobs/not-a-job-instance").set({"status": "Completed"})
    existing.update({"status": "Completed"})

    [event] = function.wait_for(1)
    assert event["document"] == "jobfleet_orchestrations/orch-2/jobs/before"
    data = data_of(event)
    assert fields(data.old_value) == {"status": "InProgress"}  # seen when the bridge started
    assert fields(data.value) == {"status": "Completed"}
    assert (bridge.changes, bridge.delivered) == (1, 1)


def test_deliveries_3_shuffled_sends_every_change_three_times_out_of_order(
    db: firestore.Client, function: Function, start_bridge: Callable[..., Any]
) -> None:
    bridge = start_bridge(deliveries=3, shuffle=True)
    batch = db.batch()
    for n in range(10):
        batch.set(db.document(f"jobfleet_orchestrations/orch-3/jobs/job-{n}"), {"n": n})
    batch.commit()

    events = function.wait_for(30)
    assert len(events) == 30
    copies = Counter(event["id"] for event in events)
    assert sorted(copies.values()) == [3] * 10
    assert len({event["document"] for event in events}) == 10
    for event_id in copies:
        bodies = {event.data for event in events if event["id"] == event_id}
        assert len(bodies) == 1  # a redelivery is the same event
    arrival = [event["id"] for event in events]
    one_after_another = all(len(set(arrival[i : i + 3])) == 1 for i in range(0, 30, 3))
    assert not one_after_another
    assert (bridge.changes, bridge.delivered) == (10, 30)


def test_a_function_error_is_retried_until_the_change_is_delivered(
    db: firestore.Client, function: Function, start_bridge: Callable[..., Any]
) -> None:
    function.module.FAIL_FIRST_DELIVERY = True  # answered with HTTP 500
    bridge = start_bridge()
    for n in range(3):
        db.document(f"jobfleet_orchestrations/orch-4/jobs/job-{n}").set({"n": n})

    events = function.wait_for(6)
    assert sorted(Counter(event["id"] for event in events).values()) == [2, 2, 2]
    assert eventually(lambda: bridge.delivered == 3)
    assert (bridge.invocations, bridge.failed) == (6, 0)


def test_an_unreachable_function_is_retried_then_given_up(
    db: firestore.Client, start_bridge: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    bridge = start_bridge(function_url=f"http://127.0.0.1:{free_port()}/")
    db.document("jobfleet_orchestrations/orch-5/jobs/job-0").set({"n": 0})

    assert eventually(lambda: bridge.failed == 1)
    assert (bridge.changes, bridge.delivered, bridge.invocations) == (1, 0, 0)
    assert "gave up delivering the change of jobfleet_orchestrations/orch-5/jobs/job-0" in (
        caplog.text
    )


def test_the_bridge_command_delivers_until_it_is_stopped(
    project: str, db: firestore.Client, function: Function
) -> None:
    command = [
        sys.executable, "-m", "jobfleet.dev.bridge",
        "--project", project, "--function-url", function.url,
    ]
    bridge = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_log() -> None:
        for line in bridge.stderr or ():
            lines.put(line)

    reading = threading.Thread(target=read_log, name="bridge-log")
    reading.start()
    try:
        log = wait_for_line(lines, "bridging")
        db.document("jobfleet_orchestrations/orch-6/jobs/job-0").set({"status": "Pending"})
        [event] = function.wait_for(1)
        assert event["subject"] == "documents/jobfleet_orchestrations/orch-6/jobs/job-0"
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=WAIT) == 0
        log += wait_for_line(lines, "stopped")
        assert "stopped: 1 changes, 1 delivered, 0 failed" in log
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        reading.join()


def wait_for_line(lines: queue.Queue[str], text: str) -> str:
    seen = ""
    deadline = time.monotonic() + WAIT
    while text not in seen:
        seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
    return seen
