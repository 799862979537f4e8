"""The trigger relay: the Firestore emulator's trigger events, received by a real
functions-framework function as the CloudEvents Eventarc sends."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
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

from conftest import Emulators, eventually
from jobfleet.dev.emulators import firestore_binary, firestore_emulator, free_port, stop_group
from jobfleet.dev.relay import Route, TriggerRelay
from jobfleet.dev.relay_http import add_route, remove_route, start_tally, tally_summary
from jobfleet.errors import ConfigurationError

WAIT = 20.0
SHARD = "jobfleet_orchestrations/orch-1/shards/7"

FUNCTION_SOURCE = '''
import threading

import functions_framework

RECEIVED = []
FAIL_FIRST_DELIVERY = False
_seen = set()
_lock = threading.Lock()


@functions_framework.cloud_event
def on_shard_updated(cloud_event):
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


@pytest.fixture(autouse=True)
def no_leaked_threads(emulators: Emulators) -> Iterator[None]:
    """No test leaves a thread behind; the session relay's own threads come and go with
    the emulator's connections, so they are not the test's."""

    def started() -> set[threading.Thread]:
        return {
            thread for thread in set(threading.enumerate()) - before
            if not thread.name.startswith(emulators.relay.thread_prefix)
        }

    before = set(threading.enumerate())
    yield
    eventually(lambda: not started(), timeout=5)
    assert not started()


@pytest.fixture
def function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Function]:
    name = f"completion_function_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{name}.py"
    source.write_text(FUNCTION_SOURCE)
    monkeypatch.setattr(sys, "path", list(sys.path))  # create_app adds the source's folder
    app = create_app(  # type: ignore[no-untyped-call]
        target="on_shard_updated", source=str(source), signature_type="cloudevent"
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
    """A project of its own: an empty database, and triggers only this test's."""
    return f"relay-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def db(project: str) -> Iterator[firestore.Client]:
    client = firestore.Client(project=project)
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def relay(emulators: Emulators) -> TriggerRelay:
    """The session's relay: the one address the session's emulator sends events to."""
    return emulators.relay


@pytest.fixture
def route(
    relay: TriggerRelay, project: str, function: Function
) -> Iterator[Callable[..., Route]]:
    """Registers routes for the test's project; removes them before the function stops."""
    added: list[Route] = []

    def register(**options: Any) -> Route:
        url = options.pop("function_url", function.url)
        added.append(relay.register(project, url, **options))
        return added[-1]

    yield register
    for each in added:
        relay.unregister(each)


def update(db: firestore.Client, path: str) -> None:
    """Create a shard counter (no event: the trigger is on updates), then update it once."""
    db.document(path).set({"total": 1, "succeeded": 0})
    db.document(path).update({"succeeded": firestore.Increment(1)})


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
    if kind == "geo_point_value":
        return (value.geo_point_value.latitude, value.geo_point_value.longitude)
    return getattr(value, kind)


def fields(document: Any) -> dict[str, object]:
    return {key: plain(value) for key, value in document.fields.items()}


def test_each_update_arrives_as_the_cloudevent_eventarc_sends(
    project: str, db: firestore.Client, function: Function, route: Callable[..., Route]
) -> None:
    """The completion trigger is `document.v1.updated`: a creation or a deletion of a
    shard counter sends nothing, each update one event with the old and new values."""
    route()
    claimed_at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    shard = db.document(SHARD)
    created: dict[str, object] = {
        "total": 3,
        "succeeded": 0,
        "progress": 0.5,
        "cancelled": False,
        "error": None,
        "params": {"size": 3, "names": ["a", "b"], "nested": {"deep": [1, {"x": True}]}},
        "empty": {"map": {}, "array": []},
        "checksum": b"\x00\xff",
        "claimed_at": claimed_at,
        "where": firestore.GeoPoint(51.5, -0.12),
        "orchestration": db.document("jobfleet_orchestrations/orch-1"),
    }
    shard.set(created)
    shard.update({"succeeded": firestore.Increment(2), "result": {"rows": [1, 2, 3]}})
    shard.update({"succeeded": firestore.Increment(1)})
    shard.delete()

    events = function.wait_for(2)
    assert len(events) == 2
    documents = f"projects/{project}/databases/(default)/documents"
    for event in events:
        assert event.get_attributes() == {
            "specversion": "1.0",
            "id": event["id"],
            "type": "google.cloud.firestore.document.v1.updated",
            "source": f"//firestore.googleapis.com/projects/{project}/databases/(default)",
            "subject": f"documents/{SHARD}",
            "time": event["time"],
            "datacontenttype": "application/protobuf",
            "dataschema": "https://github.com/googleapis/google-cloudevents/blob/main/"
            "proto/google/events/cloud/firestore/v1/data.proto",
            "project": project,
            "location": "us-central1",
            "database": "(default)",
            "namespace": "(default)",
            "document": SHARD,
        }
    assert len({event["id"] for event in events}) == 2

    # Delivery is concurrent, so tell the writes apart by what they carry.
    first, second = sorted(
        events, key=lambda e: int(data_of(e).value.fields["succeeded"].integer_value)
    )
    one, two = data_of(first), data_of(second)
    assert one.value.name == f"{documents}/{SHARD}"
    assert fields(one.old_value) == {
        **created, "claimed_at": claimed_at, "where": (51.5, -0.12), "checksum": b"\x00\xff",
        "orchestration": f"{documents}/jobfleet_orchestrations/orch-1",
    }
    assert fields(one.value)["succeeded"] == 2
    assert fields(one.value)["result"] == {"rows": [1, 2, 3]}
    assert list(one.update_mask.field_paths) == ["result", "succeeded"]
    assert one.value.create_time == one.old_value.create_time
    assert one.value.update_time > one.old_value.update_time
    assert fields(two.old_value) == fields(one.value)
    assert fields(two.value)["succeeded"] == 3
    assert list(two.update_mask.field_paths) == ["succeeded"]
    assert first["time"] < second["time"]
    # The commit time to the microsecond, not the emulator's whole second.
    assert dt.datetime.fromisoformat(first["time"]) == one.value.update_time


def test_only_updates_of_the_routes_shard_counters_are_announced_with_their_old_values(
    project: str, db: firestore.Client, function: Function, route: Callable[..., Route]
) -> None:
    existing = db.document("jobfleet_orchestrations/orch-2/shards/0")
    existing.set({"total": 2, "succeeded": 1})
    announced = route()
    db.document("jobfleet_orchestrations/orch-2").set({"status": "InProgress"})
    db.document("jobfleet_orchestrations/orch-2/jobs/a").set({"status": "Pending"})
    db.document("jobfleet_orchestrations/orch-2/jobs/a").update({"status": "Completed"})
    db.document("jobfleet_orchestrations/orch-2/shards/1").set({"total": 1})  # a creation
    db.document("elsewhere/x/shards/0").set({"total": 1})
    db.document("elsewhere/x/shards/0").update({"total": 2})
    other = firestore.Client(project=f"{project}-other")
    other.document("jobfleet_orchestrations/orch-2/shards/0").set({"total": 2})
    other.document("jobfleet_orchestrations/orch-2/shards/0").update({"succeeded": 2})
    other.close()  # type: ignore[no-untyped-call]
    existing.update({"succeeded": 2})

    [event] = function.wait_for(1)
    assert event["document"] == "jobfleet_orchestrations/orch-2/shards/0"
    data = data_of(event)
    assert fields(data.old_value) == {"total": 2, "succeeded": 1}
    assert fields(data.value) == {"total": 2, "succeeded": 2}
    assert list(data.update_mask.field_paths) == ["succeeded"]
    assert (announced.changes, announced.delivered) == (1, 1)


def test_deliveries_3_shuffled_sends_every_change_three_times_out_of_order(
    db: firestore.Client, function: Function, route: Callable[..., Route]
) -> None:
    for n in range(10):
        db.document(f"jobfleet_orchestrations/orch-3/shards/{n}").set({"n": n})
    triple = route(deliveries=3, shuffle=True)
    batch = db.batch()
    for n in range(10):
        batch.update(db.document(f"jobfleet_orchestrations/orch-3/shards/{n}"), {"n": -n})
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
    assert (triple.changes, triple.delivered) == (10, 30)


def test_a_function_error_is_retried_until_the_change_is_delivered(
    db: firestore.Client, function: Function, route: Callable[..., Route]
) -> None:
    function.module.FAIL_FIRST_DELIVERY = True  # answered with HTTP 500
    retried = route()
    for n in range(3):
        update(db, f"jobfleet_orchestrations/orch-4/shards/{n}")

    events = function.wait_for(6)
    assert sorted(Counter(event["id"] for event in events).values()) == [2, 2, 2]
    assert eventually(lambda: retried.delivered == 3, WAIT)
    assert (retried.invocations, retried.failed) == (6, 0)


def test_an_unreachable_function_is_retried_then_given_up(
    db: firestore.Client, route: Callable[..., Route], caplog: pytest.LogCaptureFixture
) -> None:
    lost = route(function_url=f"http://127.0.0.1:{free_port()}/")
    update(db, "jobfleet_orchestrations/orch-5/shards/0")

    assert eventually(lambda: lost.failed == 1, WAIT)
    assert (lost.changes, lost.delivered, lost.invocations) == (1, 0, 0)
    assert "gave up delivering the change of jobfleet_orchestrations/orch-5/shards/0" in (
        caplog.text
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def test_another_process_adds_and_removes_a_route_over_http(
    relay: TriggerRelay, project: str, db: firestore.Client, function: Function
) -> None:
    added = add_route(relay.url, project, function.url, deliveries=2)
    trigger_id = added["trigger_id"]
    try:
        update(db, "jobfleet_orchestrations/orch-7/shards/0")
        assert len(function.wait_for(2)) == 2
        stats = get_json(f"{relay.url}/_relay/stats")
        assert stats["routes"][trigger_id] == {
            **added, "changes": 1, "delivered": 2, "invocations": 2, "failed": 0, "pending": 0,
        }
    finally:
        remove_route(relay.url, trigger_id)
    assert trigger_id not in get_json(f"{relay.url}/_relay/stats")["routes"]
    unrouted = relay.unrouted
    update(db, "jobfleet_orchestrations/orch-7/shards/1")
    time.sleep(1.0)  # time for an event that should not come
    assert len(function.received) == 2
    assert relay.unrouted == unrouted  # the emulator no longer sends the route's events


def test_a_route_on_an_emulator_that_is_not_there_is_refused(function: Function) -> None:
    with TriggerRelay(f"127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(ConfigurationError, match="is it running"):
            nowhere.register("any-project", function.url)
        assert nowhere.stats()["routes"] == {}


def test_without_the_emulator_installed_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ConfigurationError, match="gcloud components install cloud-firestore-"):
        firestore_binary()


def test_the_relay_command_delivers_until_it_is_stopped(
    project: str, function: Function, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own emulator: an emulator sends its events to the one relay it was started with."""
    port = free_port()
    emulator = firestore_emulator(tmp_path, relay=f"127.0.0.1:{port}")
    emulator.start()
    emulator.wait_ready()
    command = [
        sys.executable, "-m", "jobfleet.dev.relay", "--port", str(port),
        "--firestore", emulator.host_port, "--project", project, "--function-url", function.url,
    ]
    relay = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_log() -> None:
        for line in relay.stderr or ():
            lines.put(line)

    reading = threading.Thread(target=read_log, name="relay-log")
    reading.start()
    client = None
    try:
        log = wait_for_line(lines, "relaying")
        assert f"on http://127.0.0.1:{port} for the Firestore emulator at " in log
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host_port)
        client = firestore.Client(project=project)
        update(client, "jobfleet_orchestrations/orch-6/shards/0")
        [event] = function.wait_for(1)
        assert event["subject"] == "documents/jobfleet_orchestrations/orch-6/shards/0"
        [stats] = get_json(f"http://127.0.0.1:{port}/_relay/stats")["routes"].values()
        assert (stats["project"], stats["delivered"]) == (project, 1)
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=WAIT) == 0
        log += wait_for_line(lines, "stopped")
        assert "stopped: 1 changes, 1 delivered, 0 failed" in log
    finally:
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
        stop_group(relay)
        emulator.stop()
        reading.join()


def wait_for_line(lines: queue.Queue[str], text: str) -> str:
    seen = ""
    deadline = time.monotonic() + WAIT
    while text not in seen:
        try:
            seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} in the log:\n{seen}") from None
    return seen


def test_a_write_tally_counts_each_documents_writes_by_commit_time_and_relays_nothing(
    relay: TriggerRelay, project: str, db: firestore.Client, function: Function,
    route: Callable[..., Route],
) -> None:
    """How the GCP benchmark measures writes per document per second."""
    routed = route()
    tally_id = start_tally(relay.url, project)
    hot = db.document("jobfleet_orchestrations/o/shards/0")
    for n in range(5):
        hot.set({"n": n})
    db.document("jobfleet_orchestrations/o/jobs/a").set({"n": 1})
    db.document("jobfleet_orchestrations/o/jobs/b").set({"n": 1})
    db.document("jobfleet_orchestrations/o/jobs/b").delete()
    assert eventually(lambda: tally_summary(relay.url, tally_id)["writes"] == 8, WAIT)
    summary = tally_summary(relay.url, tally_id, stop=True)
    hot.set({"n": 5})  # no longer counted

    assert summary["kinds"] == {
        "jobfleet_orchestrations/*/shards/*": {
            "documents": 1, "writes": 5, "peak_1s": 5,
            "peak_1s_document": "jobfleet_orchestrations/o/shards/0",
            "sustained_per_s": 0.5,
            "sustained_document": "jobfleet_orchestrations/o/shards/0",
        },
        "jobfleet_orchestrations/*/jobs/*": {
            "documents": 2, "writes": 3, "peak_1s": 2,
            "peak_1s_document": "jobfleet_orchestrations/o/jobs/b",
            "sustained_per_s": 0.2,
            "sustained_document": "jobfleet_orchestrations/o/jobs/b",
        },
    }
    assert (summary["peak_1s"], summary["sustained_per_s"], summary["window"]) == (5, 0.5, 10.0)
    assert relay.tally(tally_id) is None
    assert eventually(lambda: routed.delivered == 5, WAIT)  # the route's own: 4 updates, 1 more
    assert [e["document"] for e in function.received] == [
        "jobfleet_orchestrations/o/shards/0"] * 5
