"""The Google Cloud shape end to end on one machine, on the real emulators.

`jobfleet dev up`, on the session's emulators and trigger relay, starts the Cloud Run
stand-in (real `jobfleet worker` tasks) and the completion function on
functions-framework, and routes the emulator's trigger events for its project to the
function; the SDK with the gcp backend kicks off; a Pub/Sub subscription receives the
one JobCompletedEvent that the function publishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore

from conftest import TESTS, Emulators, ServerFactory, eventually
from jobfleet import JobCompletedEvent, JobFleet, Status
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.backends.gcp.pubsub import EventSubscriber, ensure_subscription
from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions
from jobfleet.dev.emulators import free_port, stop_group, stop_groups
from jobfleet.dev.write_tally import WriteTally

pytestmark = pytest.mark.slow

TOPIC = "jobfleet-job-completed"


def _env_with_tests(extra: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def stack(
    emulators: Emulators, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`jobfleet dev up` on the session's emulators and relay; its exports, then `dev down`."""
    home = tmp_path_factory.mktemp("dev-home")
    env = _env_with_tests({**emulators.environment(), "JOBFLEET_HOME": str(home)})
    command = [sys.executable, "-m", "jobfleet", "dev"]
    up = subprocess.run([*command, "up", "--project", emulators.project, "--parallelism", "4"],
                        env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in up.stdout.splitlines() if line.startswith("export ")
    )
    assert exports["JOBFLEET_TRIGGER_RELAY"] == emulators.relay_url  # reused, with its emulator
    assert exports["FIRESTORE_EMULATOR_HOST"] == emulators.firestore_host
    try:
        yield {**exports, "JOBFLEET_HOME": str(home)}
    finally:
        down = subprocess.run([*command, "down"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, down.stderr
        assert not (home / "dev" / "stack.json").exists()
        routes = emulators.relay.stats()["routes"].values()
        assert not [r for r in routes if r["project"] == emulators.project]  # route removed


@pytest.fixture
def gcp_fleet(stack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    for name, value in _env_with_tests({**stack, "JOBFLEET_JOBS": "sample_jobs"}).items():
        monkeypatch.setenv(name, value)
    with JobFleet() as fleet:
        yield fleet


class Received:
    """The events a subscription delivered, for the test to wait on."""

    def __init__(self) -> None:
        self.events: list[JobCompletedEvent] = []
        self.changed = threading.Condition()

    def __call__(self, event: JobCompletedEvent) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def of(self, orchestration_id: str, timeout: float) -> list[JobCompletedEvent]:
        with self.changed:
            self.changed.wait_for(
                lambda: any(e.orchestration_id == orchestration_id for e in self.events),
                timeout,
            )
        time.sleep(3)  # a duplicate would have arrived by now
        return [e for e in self.events if e.orchestration_id == orchestration_id]


def subscribe(project: str, filter: str | None = None) -> tuple[EventSubscriber, Received]:
    received = Received()
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    ensure_subscription(project, TOPIC, name, filter)
    return EventSubscriber(project, name, received), received


def test_a_fan_out_of_500_is_announced_once_with_counts_tags_and_results(
    gcp_fleet: JobFleet, emulators: Emulators
) -> None:
    subscriber, received = subscribe(emulators.project, 'attributes.team = "data"')
    params = [{"n": n, "fail": n % 50 == 7} for n in range(500)]
    with subscriber:
        orchestration = gcp_fleet.kick_off(
            "maybe_fail", params, parallelism=4, tags={"team": "data"}
        )
        successes, failures = orchestration.results(timeout=300)
        events = received.of(orchestration.id, timeout=30)

    assert len(events) == 1
    event = events[0]
    assert (event.status, event.total, event.succeeded, event.failed) == (
        Status.ERRORED, 500, 490, 10,
    )
    assert event.tags == {"team": "data"} and event.job_name == "maybe_fail"
    assert failures is not None
    assert [f.index for f in failures] == [n for n in range(500) if n % 50 == 7]
    assert all(f.params == params[f.index] for f in failures)
    assert all(s.result == s.params["n"] * 10 for s in successes)
    assert len({s.job_id for s in successes} | {f.job_id for f in failures}) == 500
    endpoint = os.environ["JOBFLEET_CLOUD_RUN_ENDPOINT"]
    with urllib.request.urlopen(f"{endpoint}/_standin/calls", timeout=10) as reply:
        calls = json.load(reply)
    assert calls["RunJob"] >= 1


def test_a_killed_worker_task_is_retried_and_every_instance_ends(
    gcp_fleet: JobFleet, emulators: Emulators, tmp_path: Path
) -> None:
    subscriber, received = subscribe(emulators.project)
    params = [{"n": n, "seconds": 1.0, "dir": str(tmp_path)} for n in range(8)]
    with subscriber:
        orchestration = gcp_fleet.kick_off("sleepy", params, parallelism=2, retries=1)
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline:
            for marker in tmp_path.glob("running-*"):
                if pid := int(marker.read_text() or 0):
                    os.kill(pid, signal.SIGKILL)
                    killed = int(marker.name.removeprefix("running-"))
                    break
            time.sleep(0.02)
        assert killed is not None
        snap = orchestration.wait(timeout=300)
        events = received.of(orchestration.id, timeout=30)

    assert snap.status is Status.COMPLETED
    assert snap.counts.succeeded == 8 and snap.counts.done == 8
    assert len(events) == 1 and events[0].status is Status.COMPLETED


def test_every_trigger_delivered_three_times_out_of_order_still_announces_once(
    emulators: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project of its own: only this test's route sees its documents. The function is
    invoked once per commit that ends instances (each updates its shard's counters, and
    nothing else does), not once per instance: the relay's count of trigger events equals
    the counter writes a write tally saw, well under the number of instances."""
    project = f"triple-{uuid.uuid4().hex[:8]}"
    env = _env_with_tests({
        **emulators.environment(), "GOOGLE_CLOUD_PROJECT": project, "JOBFLEET_BACKEND": "gcp",
        "JOBFLEET_TOPIC": TOPIC, "JOBFLEET_JOBS": "sample_jobs",
    })
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = FirestoreStore(project=project)
    total, shards = 150, 3
    oid = str(uuid.uuid4())
    options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=shards)
    store.create_orchestration(
        NewOrchestration(oid, "maybe_fail", options, {"stage": "triple"}, time.time()),
        [[NewInstance(str(uuid.uuid4()), i, i % shards, {"n": i, "fail": i == 5})
          for i in range(total)]],
    )

    port = free_port()
    function_log = tmp_path / "function.log"
    with open(function_log, "wb") as log:
        function = subprocess.Popen(
            [sys.executable, "-m", "jobfleet", "function", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        )
    relay = emulators.relay
    route = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        subscriber, received = subscribe(project)
        _wait_for_port(port)
        route = relay.register(project, f"http://127.0.0.1:{port}/", deliveries=3, shuffle=True)
        tally = relay.start_tally(project)
        with subscriber:
            workers = [
                subprocess.Popen([sys.executable, "-m", "jobfleet", "worker"], env={
                    **env, "JOB_NAME": "maybe_fail", "ORCHESTRATION_ID": oid,
                    "CLOUD_RUN_TASK_INDEX": str(shard), "CLOUD_RUN_TASK_COUNT": str(shards),
                }, start_new_session=True)
                for shard in range(shards)
            ]
            assert [w.wait(timeout=120) for w in workers] == [0] * shards
            events = received.of(oid, timeout=60)
            # Every write is in the tally (the claim and the finish of each instance, with
            # the counters they moved) before the route's events are all counted.
            assert eventually(lambda: writes_to(tally, JOBS_KIND) == 2 * total, 60)
            assert relay.wait_idle(route, timeout=60)
            published = store.get_orchestration(oid).event_published
            relay.stop_tally(tally)
    finally:
        if route is not None:
            relay.unregister(route)
        stop_group(function)
        stop_groups(workers)
        store.close()

    assert len(events) == 1
    assert (events[0].status, events[0].succeeded, events[0].failed) == (Status.ERRORED, 149, 1)
    commits = writes_to(tally, SHARDS_KIND)  # the counters were created before the tally
    assert route.changes == commits
    assert shards <= commits < total // 2  # at least one per shard; not one per instance
    assert route.delivered == 3 * commits  # every event three times
    assert route.failed == 0
    assert tally.summary()["kinds"][SHARDS_KIND]["peak_1s"] == 1  # spaced by commit_spacing
    assert published


JOBS_KIND = "jobfleet_orchestrations/*/jobs/*"
SHARDS_KIND = "jobfleet_orchestrations/*/shards/*"


def writes_to(tally: WriteTally, kind: str) -> int:
    return int(tally.summary()["kinds"].get(kind, {}).get("writes", 0))


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_the_cli_works_unchanged_against_the_stack(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """`jobfleet run/status/results/list/events` with the exports of `dev up`."""
    env = _env_with_tests({**stack, "JOBFLEET_JOBS": "sample_jobs"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jobfleet", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    params = tmp_path / "params.json"
    params.write_text(json.dumps([{"n": n, "fail": n == 3} for n in range(12)]))
    run = cli("run", "maybe_fail", "--params", str(params), "--tag", "via=cli", "--json")
    assert run.returncode == 1, run.stderr  # one instance errored
    summary = json.loads(run.stdout)
    assert (summary["status"], summary["succeeded"], summary["failed"]) == ("Errored", 11, 1)
    oid = summary["orchestration_id"]

    status = json.loads(cli("status", oid, "--json").stdout)
    assert status["total"] == 12 and status["tags"] == {"via": "cli"}
    results = json.loads(cli("results", oid, "--failed", "--json").stdout)
    assert [f["params"] for f in results["failures"]] == [{"n": 3, "fail": True}]
    assert oid in [o["orchestration_id"] for o in json.loads(cli("list", "--json").stdout)]
    events = [json.loads(line) for line in cli("events", "--json").stdout.splitlines()]
    assert [e["status"] for e in events if e["orchestration_id"] == oid] == ["Errored"]
    assert cli("status", "no-such-id").returncode == 2


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_dev_up_alone_starts_every_part_and_dev_down_stops_every_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without emulators to reuse: its own emulators and relay, each in its own group."""
    env = _env_with_tests({"JOBFLEET_HOME": str(tmp_path)})
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "JOBFLEET_TRIGGER_RELAY"):
        env.pop(name, None)
    command = [sys.executable, "-m", "jobfleet", "dev"]
    up = subprocess.run([*command, "up", "--project", "dev-alone"], env=env,
                        capture_output=True, text=True, timeout=180)
    state = tmp_path / "dev" / "stack.json"
    groups: dict[str, int] = json.loads(state.read_text())["groups"] if state.exists() else {}
    client = None
    try:
        assert up.returncode == 0, up.stderr
        assert set(groups) == {"firestore-emulator", "relay", "pubsub-emulator", "cloud-run",
                               "function", "sweeper", "cloud-scheduler"}
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines() if line.startswith("export ")
        )
        scheduler = exports["JOBFLEET_CLOUD_SCHEDULER_ENDPOINT"]
        assert _get_json(f"{scheduler}/v1/projects/dev-alone/locations/us-central1/jobs") == {
            "jobs": []
        }
        assert "JOBFLEET_API_CERTS_URL" not in exports  # no API URL given: nothing to verify
        relay = exports["JOBFLEET_TRIGGER_RELAY"]
        [route] = _get_json(f"{relay}/_relay/stats")["routes"].values()
        assert route["project"] == "dev-alone"

        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", exports["FIRESTORE_EMULATOR_HOST"])
        client = firestore.Client(project="dev-alone")
        counters = client.document("jobfleet_orchestrations/o-1/shards/0")
        counters.set({"total": 2, "succeeded": 0})  # a creation: no event
        counters.update({"succeeded": 1})  # the shard is not done: nothing to settle
        deadline = time.monotonic() + 30
        while route["delivered"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            [route] = _get_json(f"{relay}/_relay/stats")["routes"].values()
        assert (route["changes"], route["delivered"], route["failed"]) == (1, 1, 0)
    finally:
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
        down = subprocess.run([*command, "down"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [part for part, pid in groups.items() if not _gone(pid)] == []
    assert not state.exists()


def test_dev_up_refuses_an_emulator_without_the_relay_it_sends_to(
    emulators: Emulators, tmp_path: Path
) -> None:
    env = _env_with_tests({**emulators.environment(), "JOBFLEET_HOME": str(tmp_path)})
    env.pop("JOBFLEET_TRIGGER_RELAY")
    up = subprocess.run([sys.executable, "-m", "jobfleet", "dev", "up"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert up.returncode != 0
    assert "no trigger relay answers at JOBFLEET_TRIGGER_RELAY=(unset)" in up.stderr
    assert not (tmp_path / "dev" / "stack.json").exists()



def test_the_http_api_follows_a_fan_out_live_on_the_google_cloud_shape(
    stack: dict[str, str], serve: ServerFactory
) -> None:
    """The API on the gcp backend: kick-off over HTTP starts Cloud Run tasks, the live
    events come from Firestore listeners, and the results carry the params."""
    import httpx

    from sse_client import events

    server = serve(token="gcp-api-token",
                   env=_env_with_tests({**stack, "JOBFLEET_JOBS": "sample_jobs"}))
    assert httpx.get(server.url + "/healthz", timeout=30).json()["backend"] == "gcp"
    params = [{"n": n, "fail": n == 3} for n in range(12)]
    created = httpx.post(server.url + "/v1/orchestrations", headers=server.headers(),
                         json={"job_name": "maybe_fail", "params": params}, timeout=60)
    assert created.status_code == 202, created.text
    oid = created.json()["orchestration_id"]

    with httpx.stream("GET", server.url + f"/v1/orchestrations/{oid}/events",
                      headers=server.headers(), timeout=300) as reply:
        stream = list(events(reply.iter_lines()))

    assert stream[0].event == "snapshot" and stream[-1].event == "completed"
    assert (stream[-1].data["status"], stream[-1].data["failed"]) == ("Errored", 1)
    final = {e.data["index"]: e.data["status"] for e in stream if e.event == "transition"}
    assert final == {n: "Errored" if n == 3 else "Completed" for n in range(12)}
    results = httpx.get(server.url + f"/v1/orchestrations/{oid}/results",
                        headers=server.headers(), timeout=60).json()
    assert [f["params"] for f in results["failures"]] == [{"n": 3, "fail": True}]
    assert len(results["successes"]) == 11


def test_last_event_id_resume_on_firestore_sends_no_transition_twice(
    stack: dict[str, str], serve: ServerFactory
) -> None:
    """Firestore stamps changes with the writers' clocks and the feed re-reads a margin
    for their skew: a resumed client must still get each transition once, none missed."""
    import httpx

    from sse_client import Event, events

    server = serve(token="gcp-api-token",
                   env=_env_with_tests({**stack, "JOBFLEET_JOBS": "sample_jobs"}))
    params = [{"n": n, "seconds": 0.3} for n in range(8)]
    created = httpx.post(server.url + "/v1/orchestrations", headers=server.headers(),
                         json={"job_name": "sleepy", "params": params, "parallelism": 2},
                         timeout=60)
    assert created.status_code == 202, created.text
    path = f"/v1/orchestrations/{created.json()['orchestration_id']}/events"
    before: list[Event] = []
    with httpx.stream("GET", server.url + path, headers=server.headers(), timeout=300) as reply:
        for event in events(reply.iter_lines()):
            before.append(event)
            if sum(e.event == "transition" for e in before) == 3:
                break  # the connection drops

    with httpx.stream("GET", server.url + path, timeout=300,
                      headers={**server.headers(), "Last-Event-ID": before[-1].id or ""}) as reply:
        resumed = list(events(reply.iter_lines()))

    seen = [e.id for e in before if e.event == "transition"]
    again = [e for e in resumed if e.event == "transition"]
    assert resumed[0].event == "snapshot" and resumed[-1].event == "completed"
    assert not set(seen) & {e.id for e in again}  # nothing seen twice...
    assert len({e.id for e in again}) == len(again)
    final = {e.data["index"]: e.data["status"] for e in before + again if e.event == "transition"}
    assert final == dict.fromkeys(range(8), "Completed")  # ...and nothing missed
