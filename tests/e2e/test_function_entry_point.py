"""The deployed completion function: `jobfleet function`, as the image's Cloud Run
service runs it.

The command starts functions-framework on `on_shard_updated` in a process of its own
(from the working folder of a container, not this checkout) against the emulators, and
it receives Eventarc's Firestore CloudEvents: the Firestore emulator's own trigger
events through the session's relay, and one built by hand and delivered twice. The
completion event is counted on a plain Pub/Sub subscription, so a second publish would
show.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.events.cloud.firestore_v1 import Document, DocumentEventData, Value

from conftest import Emulators, eventually
from jobfleet.backends.gcp.firestore_store import FirestoreStore
from jobfleet.config import DEFAULT_TOPIC
from jobfleet.core.models import (
    ErrorInfo,
    NewInstance,
    NewOrchestration,
    OrchestrationSnapshot,
    Outcome,
    RunOptions,
    Status,
)
from jobfleet.dev.emulators import free_port, stop_group
from jobfleet.dev.eventarc import WRITTEN, FirestoreEvent, FunctionEndpoint, cloud_event_headers
from pubsub_raw import RawSubscription

pytestmark = pytest.mark.slow

SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class DeployedFunction:
    url: str
    project: str
    log: Path


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def deployed(gcp_env: Emulators, tmp_path: Path) -> Iterator[DeployedFunction]:
    """`jobfleet function` on the port Cloud Run names in PORT, in a project of its own
    on the emulators."""
    project = f"fn-{uuid.uuid4().hex[:10]}"
    port = free_port()
    log = tmp_path / "function.log"
    binary = shutil.which("jobfleet", path=os.path.dirname(sys.executable))
    assert binary, "the jobfleet command is installed with the package"
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": project, "PORT": str(port)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "function", "--host", "127.0.0.1"], env=env, cwd=tmp_path,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        started = eventually(lambda: process.poll() is not None or _listening(port), 60)
        assert started and process.poll() is None, f"the function did not start:\n{log.read_text()}"
        yield DeployedFunction(f"http://127.0.0.1:{port}/", project, log)
    finally:
        stop_group(process)


@pytest.fixture
def store(deployed: DeployedFunction) -> Iterator[FirestoreStore]:
    opened = FirestoreStore(deployed.project)
    yield opened
    opened.close()


@pytest.fixture
def raw(deployed: DeployedFunction) -> Iterator[RawSubscription]:
    with RawSubscription(deployed.project, DEFAULT_TOPIC) as subscription:
        yield subscription


def create(store: FirestoreStore, n: int) -> str:
    oid = str(uuid.uuid4())
    options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=1)
    store.create_orchestration(
        NewOrchestration(oid, "thumbnail", options, {"team": "data"}, time.time()),
        [[NewInstance(str(uuid.uuid4()), i, 0, {"n": i}) for i in range(n)]],
    )
    return oid


def finish(store: FirestoreStore, oid: str, statuses: list[Status]) -> None:
    """What a worker writes: claim, then one outcome per instance in one commit."""
    claimed = store.claim(oid, 0, "worker-a", limit=len(statuses), now=time.time(), lease=60)
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, c.owner, status,
                result=c.index if status is Status.COMPLETED else None,
                error=None if status is Status.COMPLETED else ErrorInfo("ValueError", "bad"))
        for c, status in zip(sorted(claimed, key=lambda c: c.index), statuses, strict=True)
    ])


def settled(store: FirestoreStore, oid: str, log: Path) -> OrchestrationSnapshot:
    """Wait, on the store's own change feed, until the function has flipped and announced."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    token = store.wake_token(oid)
    while True:
        snap = store.get_orchestration(oid)
        if snap.status.terminal and snap.event_published:
            return snap
        left = deadline - time.monotonic()
        assert left > 0, f"the function did not settle {snap}:\n{log.read_text()[-3000:]}"
        token = store.wait_for_wake(oid, token, min(left, 0.5))


def test_the_deployed_entry_point_settles_on_the_emulators_trigger_event(
    deployed: DeployedFunction, gcp_env: Emulators, store: FirestoreStore,
    raw: RawSubscription,
) -> None:
    oid = create(store, 1)
    route = gcp_env.relay.register(deployed.project, deployed.url)
    try:
        finish(store, oid, [Status.ERRORED])
        snap = settled(store, oid, deployed.log)
    finally:
        gcp_env.relay.unregister(route)

    assert snap.status is Status.ERRORED
    assert route.failed == 0  # every delivery answered 2xx
    assert raw.counts() == {oid: 1}
    [event] = raw.messages
    assert (event.status, event.total, event.failed, event.tags) == (
        Status.ERRORED, 1, 1, {"team": "data"},
    )


def shard_counted(
    project: str, oid: str, before: dict[str, int], after: dict[str, int]
) -> FirestoreEvent:
    """The CloudEvent Eventarc sends for an update of shard 0's counters."""
    path = f"jobfleet_orchestrations/{oid}/shards/0"
    name = f"projects/{project}/databases/(default)/documents/{path}"

    def document(counters: dict[str, int]) -> Document:
        return Document(name=name, fields={
            field: Value(integer_value=n) for field, n in counters.items()
        })

    data = DocumentEventData(old_value=document(before), value=document(after))
    data.update_mask.field_paths.extend(sorted(set(after) - set(before) | {
        field for field in after if before.get(field) != after[field]
    }))
    headers = cloud_event_headers(project, path, dt.datetime.now(dt.UTC), str(uuid.uuid4()),
                                  "us-central1")
    return FirestoreEvent(path, headers, DocumentEventData.serialize(data))


def test_a_redelivered_event_to_the_deployed_entry_point_publishes_once(
    deployed: DeployedFunction, store: FirestoreStore, raw: RawSubscription
) -> None:
    """No trigger route: the instances end unannounced; Eventarc delivers an earlier
    commit's event (the shard not yet done: nothing happens), then the last commit's,
    and (at least once) that one again."""
    oid = create(store, 2)
    finish(store, oid, [Status.COMPLETED, Status.COMPLETED])
    assert store.get_orchestration(oid).status is Status.IN_PROGRESS
    zero = {"total": 2, "succeeded": 0, "failed": 0, "cancelled": 0}
    earlier = shard_counted(deployed.project, oid, zero, {**zero, "succeeded": 1})
    last = shard_counted(deployed.project, oid, {**zero, "succeeded": 1}, {**zero, "succeeded": 2})

    endpoint = FunctionEndpoint(deployed.url)
    try:
        assert endpoint.post(earlier) == 200
        assert store.get_orchestration(oid).status is Status.IN_PROGRESS
        assert endpoint.post(last) == 200
        snap = store.get_orchestration(oid)  # the reply came after the settle
        assert snap.status is Status.COMPLETED and snap.event_published
        assert endpoint.post(last) == 200
    finally:
        endpoint.close()

    assert raw.counts() == {oid: 1}
    [published] = raw.messages
    assert (published.status, published.total, published.succeeded) == (Status.COMPLETED, 2, 2)


def test_a_job_document_event_from_a_trigger_left_from_before_is_ignored_with_a_warning(
    deployed: DeployedFunction, store: FirestoreStore, raw: RawSubscription
) -> None:
    """A function deployed with the old trigger (`.../jobs/{j}`, written) is not retried
    forever on events it cannot read: it answers, warns, and leaves the end to the sweep."""
    oid = create(store, 1)
    finish(store, oid, [Status.COMPLETED])
    [instance] = store.list_instances(oid)
    path = f"jobfleet_orchestrations/{oid}/jobs/{instance.job_id}"
    name = f"projects/{deployed.project}/databases/(default)/documents/{path}"
    data = DocumentEventData(
        old_value=Document(name=name, fields={"status": Value(string_value="InProgress")}),
        value=Document(name=name, fields={"status": Value(string_value="Completed")}),
    )
    headers = cloud_event_headers(deployed.project, path, dt.datetime.now(dt.UTC),
                                  str(uuid.uuid4()), "us-central1", WRITTEN)
    endpoint = FunctionEndpoint(deployed.url)
    try:
        status = endpoint.post(FirestoreEvent(path, headers, DocumentEventData.serialize(data)))
    finally:
        endpoint.close()

    assert status == 200
    assert store.get_orchestration(oid).status is Status.IN_PROGRESS
    assert "the function's trigger must be on updates of" in deployed.log.read_text()
    assert raw.counts() == Counter()
