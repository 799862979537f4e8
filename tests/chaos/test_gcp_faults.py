"""The fault model on the Google Cloud shape, on the emulators, with real processes.

Each test runs an orchestration on the Firestore emulator through the Cloud Run stand-in
(in this process; its tasks are real `jobfleet worker` processes), the completion
function on functions-framework (fed by the session's trigger relay) and the Pub/Sub
emulator, does one thing an operator dreads (an execution cancelled from outside, a
task out of retries, the completion function down for the last write, a hung task, a
kick-off killed between commit and launch), and calls `fleet.sweep()` every second
while it waits. Then the invariants: every instance terminal; exactly one
JobCompletedEvent, counted raw on a plain subscription (not the de-duplicating
EventSubscriber); no instance charged an attempt it did not run; no process left.

Every test uses a project of its own, so that its documents, route and topic are its
alone; the lease is short (LEASE) so that a hung worker is noticed within seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, run_v2
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from conftest import TESTS, Emulators
from jobfleet import JobCompletedEvent, JobFleet, Status
from jobfleet.backends.gcp.pubsub import decode, ensure_topic, subscription_path, topic_path
from jobfleet.core.models import WORKER_LOST, JobInstance, OrchestrationSnapshot
from jobfleet.core.sweep import LAUNCHED, RECOVERED
from jobfleet.dev.cloud_run import CloudRunStandIn
from jobfleet.dev.emulators import free_port, stop_group, stop_groups
from jobfleet.dev.eventarc import (
    DEFAULT_LOCATION,
    EventDataPb,
    FirestoreEvent,
    FunctionEndpoint,
    cloud_event_headers,
)
from jobfleet.dev.relay import Route

pytestmark = pytest.mark.slow

TOPIC = "jobfleet-job-completed"
REGION, JOB = "us-central1", "jobfleet-worker"
LEASE = 3.0  # seconds: a worker silent for longer is taken for dead
SWEEP_EVERY = 1.0
WAIT = 200.0  # bounds every wait for the orchestration (never asserted on)
QUIET = 4.0  # after the event, how long a second copy gets to show up on the subscription

# The job of these tests, as a script file (JOBFLEET_JOBS accepts those): it leaves a
# start marker per attempt (which instance, which process, which execution), then kills
# its own worker (`poison`), waits for a gate file (`gate`), or sleeps.
CHAOS_JOBS = '''
import json, os, signal, time
from pathlib import Path
from jobfleet import job

@job("chaos", retries=0, backoff=0.05)
def chaos(params):
    folder, n = Path(params["dir"]), params["n"]
    mark = {"n": n, "pid": os.getpid(), "execution": os.environ.get("CLOUD_RUN_EXECUTION"),
            "task": os.environ.get("CLOUD_RUN_TASK_INDEX"),
            "attempt": os.environ.get("CLOUD_RUN_TASK_ATTEMPT")}
    unique = f"{n}-{os.getpid()}-{time.monotonic_ns()}"
    draft = folder / f".start-{unique}"
    draft.write_text(json.dumps(mark))
    draft.rename(folder / f"start-{unique}.json")  # whole or not at all
    if params.get("poison"):
        os.kill(os.getpid(), signal.SIGKILL)
    if params.get("gate"):
        deadline = time.monotonic() + 600
        while not (folder / params["gate"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(params.get("seconds", 0))
    return n
'''

KICK_OFF = """
import json, sys
from jobfleet import JobFleet
with JobFleet() as fleet:
    fleet.kick_off("chaos", json.loads(sys.argv[1]), parallelism=2, retries=0)
"""


# -- the shape ----------------------------------------------------------------------------


class RawEvents:
    """A plain subscription on the topic, made before the run: every publish is one
    message here (nothing de-duplicates them), pulled and acknowledged by hand."""

    def __init__(self, project: str) -> None:
        topic = topic_path(project, TOPIC)
        publisher = PublisherClient()
        try:
            ensure_topic(publisher, topic)
        finally:
            publisher.transport.close()
        self.subscriber = SubscriberClient()
        self.path = subscription_path(project, f"raw-{uuid.uuid4().hex[:10]}")
        self.subscriber.create_subscription(
            request={"name": self.path, "topic": topic, "ack_deadline_seconds": 60}
        )
        self.received: list[JobCompletedEvent] = []

    def pull(self) -> int:
        try:
            reply = self.subscriber.pull(
                request={"subscription": self.path, "max_messages": 100}, timeout=5
            )
        except (api_exceptions.DeadlineExceeded, api_exceptions.RetryError):
            return 0
        messages = list(reply.received_messages)
        if messages:
            self.subscriber.acknowledge(
                request={"subscription": self.path, "ack_ids": [m.ack_id for m in messages]}
            )
        self.received += [decode(m.message.data) for m in messages]
        return len(messages)

    def of(self, oid: str, quiet: float = QUIET) -> list[JobCompletedEvent]:
        """Every message for `oid` so far, pulling until none arrived for `quiet` seconds."""
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            if self.pull():
                last = time.monotonic()
            else:
                time.sleep(0.2)
        return [e for e in self.received if e.orchestration_id == oid]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.delete_subscription(request={"subscription": self.path})
        self.subscriber.close()


@dataclass
class Shape:
    project: str
    dir: Path  # where the jobs leave their markers and find their gates
    logs: Path
    fleet: JobFleet
    cloud_run: CloudRunStandIn
    route: Route
    function: subprocess.Popen[bytes]
    events: RawEvents
    emulators: Emulators
    functions: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def snap(self, oid: str) -> OrchestrationSnapshot:
        return self.fleet.backend.store.get_orchestration(oid)

    def instances(self, oid: str) -> list[JobInstance]:
        found = self.fleet.backend.store.list_instances(oid, limit=10_000)
        return sorted(found, key=lambda i: i.index)

    def start_function(self) -> str:
        """Another completion function process (the first one was stopped); its URL."""
        process, url = start_function(self.logs)
        self.functions.append(process)
        return url


def start_function(logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The completion function on functions-framework, as `jobfleet dev up` runs it, once
    it listens."""
    port = free_port()
    log = logs / f"function-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobfleet", "function", "--host", "127.0.0.1",
             "--port", str(port)],
            env=dict(os.environ), start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, log)
    except BaseException:
        stop_group(process)
        raise
    return process, f"http://127.0.0.1:{port}/"


class ShapeFactory(Protocol):
    def __call__(self, *, max_retries: int = 3) -> Shape: ...


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the function exited:\n{log.read_text()}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the function never listened on {port}:\n{log.read_text()}")


@pytest.fixture
def shapes(
    gcp_env: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ShapeFactory]:
    """The gcp shape for one test, in a project of its own: stand-in, function, route,
    raw subscription and a gcp JobFleet; all of it stopped at the end."""
    stoppers: list[Callable[[], object]] = []

    def make(*, max_retries: int = 3) -> Shape:
        project = f"chaos-{uuid.uuid4().hex[:10]}"
        jobs = tmp_path / "chaos_jobs.py"
        jobs.write_text(CHAOS_JOBS)
        work, logs = tmp_path / "work", tmp_path / "logs"
        work.mkdir()
        logs.mkdir()
        path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        for name, value in {
            "GOOGLE_CLOUD_PROJECT": project, "JOBFLEET_BACKEND": "gcp",
            "JOBFLEET_TOPIC": TOPIC, "JOBFLEET_JOBS": str(jobs),
            "JOBFLEET_LEASE_SECONDS": str(LEASE), "JOBFLEET_REGION": REGION,
            "JOBFLEET_CLOUD_RUN_JOB": JOB, "JOBFLEET_HOME": str(tmp_path / "home"),
            "PYTHONPATH": path,
        }.items():
            monkeypatch.setenv(name, value)
        cloud_run = CloudRunStandIn(
            project=project, region=REGION, job=JOB, max_retries=max_retries
        ).start()
        stoppers.append(cloud_run.stop)  # kills any task still running
        monkeypatch.setenv("JOBFLEET_CLOUD_RUN_ENDPOINT", cloud_run.url)
        events = RawEvents(project)
        stoppers.append(events.close)
        fleet = JobFleet()
        stoppers.append(fleet.close)
        function, url = start_function(logs)
        stoppers.append(lambda: stop_group(function))
        route = gcp_env.relay.register(project, url)
        stoppers.append(lambda: gcp_env.relay.unregister(route))
        shape = Shape(project, work, logs, fleet, cloud_run, route, function, events, gcp_env)
        stoppers.append(lambda: stop_groups(shape.functions))
        return shape

    yield make
    for stop in reversed(stoppers):
        stop()


# -- waiting and looking ------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll something the test cannot be told about; the timeout only bounds the wait."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def sweep_until_settled(
    shape: Shape, oid: str, timeout: float = WAIT
) -> tuple[OrchestrationSnapshot, Counter[str]]:
    """Sweep every SWEEP_EVERY seconds until the orchestration has ended and its event is
    recorded; what the sweeps did, added up."""
    done: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while True:
        snap = shape.snap(oid)
        if snap.status.terminal and snap.event_published:
            return snap, done
        assert time.monotonic() < deadline, f"never settled; sweeps did {done}\n" + evidence(
            shape, oid
        )
        done += shape.fleet.sweep()
        time.sleep(SWEEP_EVERY)


def starts(shape: Shape) -> dict[int, list[dict[str, Any]]]:
    """The start markers the job left, by instance index."""
    found: dict[int, list[dict[str, Any]]] = {}
    for marker in shape.dir.glob("start-*.json"):
        mark = json.loads(marker.read_text())
        found.setdefault(int(mark["n"]), []).append(mark)
    return found


def workers_of(oid: str) -> list[int]:
    """Live processes (of any parent) working for the orchestration."""
    needle = f"ORCHESTRATION_ID={oid}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def evidence(shape: Shape, oid: str) -> str:
    """What a failure report needs: the instances, the executions, the relay, the logs."""
    lines = [f"orchestration: {shape.snap(oid)}"]
    for i in shape.instances(oid):
        error = f" {i.error.type}: {i.error.message[:120]}" if i.error else ""
        lines.append(f"  #{i.index} {i.status} attempts={i.attempts}{error}")
    lines.append(f"starts: { {n: len(m) for n, m in sorted(starts(shape).items())} }")
    lines.append(f"stand-in calls: {shape.cloud_run.calls}")
    for e in shape.cloud_run.executions:
        tasks = [] if e.tasks is None else [
            (t.index, t.attempt, t.exit_code, t.process.pid if t.process else None)
            for t in e.tasks.tasks
        ]
        lines.append(f"  {e.name.rsplit('/', 1)[-1]} ended={e.completed_at is not None} "
                     f"cancelled={e.cancelled} shards={e.env.get('JOBFLEET_SHARDS')} "
                     f"tasks(index, attempt, exit, pid)={tasks}")
    lines.append(f"route: {shape.route.stats()}")
    for log in sorted(shape.logs.glob("*.log")):
        lines.append(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(lines)


def assert_invariants(
    shape: Shape, oid: str, *, status: Status, errored: frozenset[int] = frozenset()
) -> tuple[JobCompletedEvent, list[JobInstance]]:
    """Every instance terminal; one raw event; no instance charged an attempt it did not
    run, none failed but `errored`; no worker left once every execution has ended."""
    snap = shape.snap(oid)
    why = evidence(shape, oid)
    assert snap.status is status and snap.event_published, why
    instances = shape.instances(oid)
    assert len(instances) == snap.counts.total and snap.counts.done == snap.counts.total, why
    assert all(i.status.terminal for i in instances), why
    assert {i.index for i in instances if i.status is not Status.COMPLETED} == errored, why
    # An attempt is charged by a claim that no crash refunded: each one left a start
    # marker, or the instance was charged for a crash it did not run in.
    ran = starts(shape)
    assert [i.index for i in instances if i.attempts > len(ran.get(i.index, []))] == [], why

    events = shape.events.of(oid)
    assert len(events) == 1, f"{len(events)} raw events: {events}\n{why}"
    event = events[0]
    assert (event.status, event.total, event.failed) == (status, len(instances), len(errored))

    wait_for(lambda: all(e.completed_at is not None for e in shape.cloud_run.executions),
             "every execution to end")
    wait_for(lambda: not workers_of(oid), "the workers to exit", timeout=30)
    return event, instances


def in_execution(shape: Shape, execution: str) -> dict[int, list[dict[str, Any]]]:
    short = execution.rsplit("/", 1)[-1]
    return {n: [m for m in marks if m["execution"] == short]
            for n, marks in starts(shape).items()
            if any(m["execution"] == short for m in marks)}


# -- the cases ----------------------------------------------------------------------------


def test_an_execution_cancelled_through_the_admin_api_is_finished_by_a_recovery_execution(
    shapes: ShapeFactory,
) -> None:
    shape = shapes()
    params = [{"n": n, "dir": str(shape.dir), "gate": "go"} for n in range(9)]
    orchestration = shape.fleet.kick_off("chaos", params, parallelism=3, retries=1)
    first = shape.snap(orchestration.id).execution
    assert first is not None
    # Each task holds one instance, running, when the execution is cancelled.
    wait_for(lambda: len(in_execution(shape, first)) == 3, "a running instance per task")

    executions = run_v2.ExecutionsClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=shape.cloud_run.url),
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    executions.cancel_execution(name=first)
    assert shape.cloud_run.execution(first).cancelled
    running = set(in_execution(shape, first))
    (shape.dir / "go").touch()

    snap, done = sweep_until_settled(shape, orchestration.id)
    assert snap.status is Status.COMPLETED, evidence(shape, orchestration.id)
    assert done[RECOVERED] == 1  # however many sweeps ran
    assert shape.fleet.sweep() == Counter()  # and more of them find nothing to do

    _, instances = assert_invariants(shape, orchestration.id, status=Status.COMPLETED)
    # The three killed mid-run were charged their own attempt; the six never attempted
    # were charged nothing.
    assert {i.index: i.attempts for i in instances} == {
        n: 2 if n in running else 1 for n in range(9)
    }
    assert shape.cloud_run.calls["RunJob"] == 2
    recovery = shape.cloud_run.executions[-1]
    assert recovery.env["JOBFLEET_SHARDS"] == "0,1,2"


def test_a_task_out_of_retries_leaves_its_poisons_errored_alone(shapes: ShapeFactory) -> None:
    """One shard; instances 0 and 1 SIGKILL their worker on every attempt. The task's two
    attempts (the stand-in's max retries: 1) die on one each, so the execution fails with
    its shard unfinished: one poison held, one charged, four never attempted. The sweep
    charges what the dead task held and runs what has retries left in a recovery
    execution, where each poison uses up its own retries and ends Errored (WorkerLost)
    alone, and every sibling completes, charged nothing."""
    shape = shapes(max_retries=1)
    params = [{"n": n, "dir": str(shape.dir), "poison": n < 2} for n in range(6)]
    orchestration = shape.fleet.kick_off("chaos", params, parallelism=1, retries=1)
    first = shape.snap(orchestration.id).execution
    assert first is not None

    snap, done = sweep_until_settled(shape, orchestration.id)
    assert snap.status is Status.ERRORED, evidence(shape, orchestration.id)
    ended = shape.cloud_run.execution(first)
    assert ended.counts()["failed"] == 1 and ended.tasks is not None  # out of retries
    assert ended.tasks.tasks[0].attempt == 1
    assert done[RECOVERED] >= 1, f"{done}\n{evidence(shape, orchestration.id)}"
    assert shape.fleet.sweep() == Counter()

    _, instances = assert_invariants(
        shape, orchestration.id, status=Status.ERRORED, errored=frozenset({0, 1})
    )
    for poison in instances[:2]:
        assert poison.status is Status.ERRORED and poison.error is not None
        assert (poison.error.type, poison.attempts) == (WORKER_LOST, 2)
    assert [(i.status, i.attempts) for i in instances[2:]] == [(Status.COMPLETED, 1)] * 4


def _redeliver(shape: Shape, url: str, oid: str, shard: int) -> int:
    """The last update of `shard`'s counters, the one that finished it, delivered again as
    Eventarc would."""
    path = f"jobfleet_orchestrations/{oid}/shards/{shard}"
    name = f"projects/{shape.project}/databases/(default)/documents/{path}"
    client = firestore.Client(project=shape.project)
    try:
        stored = client.document(path).get().to_dict() or {}
        counters = {k: int(v) for k, v in stored.items() if isinstance(v, int)}
    finally:
        client.close()  # type: ignore[no-untyped-call]
    data = EventDataPb()
    before = {**counters, "succeeded": counters["succeeded"] - 1}
    for document, values in ((data.old_value, before), (data.value, counters)):
        document.name = name
        for field_name, n in values.items():
            document.fields[field_name].integer_value = n
    data.update_mask.field_paths.append("succeeded")
    headers = cloud_event_headers(shape.project, path, dt.datetime.now(dt.UTC),
                                  str(uuid.uuid4()), DEFAULT_LOCATION)
    endpoint = FunctionEndpoint(url)
    try:
        return endpoint.post(FirestoreEvent(path, headers, data.SerializeToString()))
    finally:
        endpoint.close()


def test_the_function_down_for_the_last_write_is_settled_once_by_the_sweep(
    shapes: ShapeFactory,
) -> None:
    shape = shapes()
    params = [{"n": n, "dir": str(shape.dir), "gate": "go" if n == 3 else None}
              for n in range(4)]
    orchestration = shape.fleet.kick_off("chaos", params, parallelism=2, retries=0)
    oid = orchestration.id
    relay = shape.emulators.relay
    wait_for(lambda: shape.snap(oid).counts.done == 3, "all but the gated instance")
    assert relay.wait_idle(shape.route, timeout=60)
    failed_before = shape.route.failed

    stop_group(shape.function)  # the completion function is down ...
    (shape.dir / "go").touch()  # ... for the last write
    wait_for(lambda: shape.snap(oid).counts.done == 4, "the last instance")
    wait_for(lambda: shape.route.failed > failed_before, "the relay to give up on it")
    assert relay.wait_idle(shape.route, timeout=60)

    stuck = shape.snap(oid)
    assert stuck.status is Status.IN_PROGRESS and not stuck.event_published, evidence(shape, oid)
    assert shape.events.of(oid) == []

    snap, _ = sweep_until_settled(shape, oid)
    assert snap.status is Status.COMPLETED
    assert shape.fleet.sweep() == Counter()  # a second sweep: nothing left to do
    status = _redeliver(shape, shape.start_function(), oid, 3 % 2)  # the function is back
    assert 200 <= status < 300, evidence(shape, oid)
    assert shape.fleet.sweep() == Counter()

    event, _ = assert_invariants(shape, oid, status=Status.COMPLETED)  # one event, raw
    assert event.succeeded == 4


def test_a_hung_task_is_replaced_by_a_recovery_execution_for_its_shard(
    shapes: ShapeFactory,
) -> None:
    shape = shapes()
    params = [{"n": n, "dir": str(shape.dir), "gate": "go" if n == 1 else None,
               "seconds": 0.2} for n in range(6)]
    orchestration = shape.fleet.kick_off("chaos", params, parallelism=2, retries=1)
    oid = orchestration.id
    first = shape.snap(oid).execution
    assert first is not None
    wait_for(lambda: 1 in starts(shape), "the gated instance to start")
    [hung] = starts(shape)[1]
    os.kill(hung["pid"], signal.SIGSTOP)  # the worker stops answering, heartbeat and all
    try:
        (shape.dir / "go").touch()  # for the instance's next run, elsewhere
        snap, done = sweep_until_settled(shape, oid)
        assert snap.status is Status.COMPLETED
        assert done[RECOVERED] == 1
        assert shape.cloud_run.calls["RunJob"] == 2
        recovery = shape.cloud_run.executions[-1]
        assert recovery.env["JOBFLEET_SHARDS"] == str(hung["task"])  # its shard alone
        assert snap.execution == f"{first},{recovery.name}"  # joined, not replaced
        assert Path(f"/proc/{hung['pid']}").exists()  # still stopped: Cloud Run cannot stop it
    finally:
        os.kill(hung["pid"], signal.SIGKILL)

    _, instances = assert_invariants(shape, oid, status=Status.COMPLETED)
    # The hung instance was charged its own attempt; nothing else was charged.
    assert {i.index: i.attempts for i in instances} == {n: 2 if n == 1 else 1 for n in range(6)}


def test_a_kick_off_killed_while_its_run_job_is_in_flight_is_launched_by_the_sweep(
    shapes: ShapeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = shapes()
    shape.cloud_run.delay_next(1, 8.0)  # the kick-off's RunJob answers late, then runs
    params = [{"n": n, "dir": str(shape.dir), "seconds": 0.3} for n in range(6)]
    log = shape.logs / "kick-off.log"
    with log.open("wb") as out:
        kick_off = subprocess.Popen(
            [sys.executable, "-c", KICK_OFF, json.dumps(params)], env=dict(os.environ),
            start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: shape.cloud_run.calls.get("RunJob", 0) >= 1 or
                 kick_off.poll() is not None, "the kick-off's RunJob")
        assert kick_off.poll() is None, log.read_text()
    finally:
        os.kill(kick_off.pid, signal.SIGKILL)
        kick_off.wait()

    [committed] = shape.fleet.history()
    oid = committed.id
    assert committed.status is Status.IN_PROGRESS and committed.execution is None
    monkeypatch.setattr(shape.fleet.backend.launcher, "launch_grace", 2.0)

    snap, done = sweep_until_settled(shape, oid)
    assert snap.status is Status.COMPLETED
    assert done[LAUNCHED] == 1
    # The killed kick-off's RunJob started an execution too, recorded nowhere: two
    # executions over the same shards cost compute, not correctness.
    wait_for(lambda: len(shape.cloud_run.executions) == 2, "the late RunJob to run")
    assert shape.cloud_run.calls["RunJob"] == 2
    event, _ = assert_invariants(shape, oid, status=Status.COMPLETED)
    assert event.succeeded == 6
