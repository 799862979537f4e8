"""What the chaos tests share: a fleet with a short lease, the invariants a user would
notice, a look at the processes of an orchestration (from /proc), and an event bus that
records every raw publish.

Run as a script, it is one of the processes that race to settle orchestrations
(test_chaos_publish.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobfleet import JobCompletedEvent, JobFleet, Orchestration, Status
from jobfleet.core import params as param_sets
from jobfleet.core.models import JobInstance, NewOrchestration, Outcome, RunOptions
from jobfleet.core.ports import EventBus
from jobfleet.core.registry import get_job

LEASE_SECONDS = "2"  # a hung worker is noticed within a few seconds
CHAOS_JOBS = "chaos_jobs"
WORKER_LOST = "WorkerLost"


def chaos_fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    """A fleet whose workers import tests/chaos_jobs.py and hold 2 s leases. Whatever
    processes the test leaves in its home are killed afterwards (by pid), so that one
    failure does not leave stopped or hung workers behind for the next test."""
    monkeypatch.setenv("JOBFLEET_LEASE_SECONDS", LEASE_SECONDS)
    monkeypatch.setenv("JOBFLEET_JOBS", CHAOS_JOBS)
    try:
        with JobFleet() as fleet:
            yield fleet
    finally:
        for pid in processes(env=f"JOBFLEET_HOME={home}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- processes ---------------------------------------------------------------------


def processes(*, env: str) -> list[int]:
    """Live (not zombie) jobfleet processes whose environment holds `env` ("NAME=value")."""
    wanted = env.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"jobfleet" in cmdline and wanted in environ and _state(stat) != "Z":
            found.append(int(entry.name))
    return found


def processes_of(orchestration_id: str) -> list[int]:
    """The supervisors and workers of an orchestration that are still alive."""
    return processes(env=f"ORCHESTRATION_ID={orchestration_id}")


def _state(stat: str) -> str:
    return stat.rsplit(")", 1)[1].split()[0]


def gone(pid: int) -> bool:
    try:
        return _state(Path(f"/proc/{pid}/stat").read_text()) == "Z"
    except FileNotFoundError:
        return True


def stopped(pid: int) -> bool:
    try:
        return _state(Path(f"/proc/{pid}/stat").read_text()) in ("T", "t")
    except FileNotFoundError:
        return False


def wait_for_marker(folder: Path, n: int, timeout: float = 60) -> int:
    """The pid of the worker that started running instance n (see chaos_jobs.py)."""
    marker = folder / f"running-{n}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(marker.read_text())
        time.sleep(0.01)
    raise AssertionError(f"instance {n} never started running")


def supervisor_pid(orchestration: Orchestration) -> int:
    execution = orchestration.status().execution
    assert execution is not None and execution.startswith("local-pid-"), execution
    return int(execution.removeprefix("local-pid-"))


# -- orchestrations made through the store alone ---------------------------------------


def commit_orchestration(
    fleet: JobFleet, params: list[dict[str, Any]], *, job_name: str = "chaos_quick",
    parallelism: int = 2,
) -> str:
    """Commit an orchestration exactly as kick_off does, and launch nothing: the state a
    kick-off killed between commit and launch leaves behind."""
    definition = get_job(job_name)
    options = RunOptions(
        retries=0, backoff=definition.backoff, timeout=None, parallelism=parallelism
    )
    new = NewOrchestration(
        id=str(uuid.uuid4()), job_name=job_name, options=options, tags={},
        created_at=time.time(),
    )
    batches = param_sets.instance_batches(definition, params, shards=options.parallelism)
    fleet.backend.store.create_orchestration(new, batches)
    return new.id


def finished_orchestration(fleet: JobFleet, count: int = 3) -> str:
    """An orchestration whose instances all completed (claimed and recorded through the
    store, no worker) and which nobody has settled yet: InProgress, no event."""
    store = fleet.backend.store
    oid = commit_orchestration(fleet, [{"n": n} for n in range(count)], parallelism=1)
    claimed = store.claim(oid, 0, f"{oid}/task-0/attempt-0/test/{os.getpid()}",
                          limit=count, now=time.time(), lease=600)
    assert len(claimed) == count
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, c.owner, Status.COMPLETED, result=c.index) for c in claimed
    ])
    snap = store.get_orchestration(oid)
    assert snap.status is Status.IN_PROGRESS and snap.counts.succeeded == count
    return oid


# -- the invariants ------------------------------------------------------------------


def all_instances(orchestration: Orchestration) -> list[JobInstance]:
    found: list[JobInstance] = []
    while page := orchestration.instances(after_index=found[-1].index if found else -1,
                                          limit=1000):
        found.extend(page)
    return found


def events_for(fleet: JobFleet, orchestration_id: str) -> list[Status]:
    return [e.status for _, e in fleet.events() if e.orchestration_id == orchestration_id]


def log_of(fleet: JobFleet, orchestration_id: str) -> str:
    path = fleet.settings.log_of(orchestration_id)
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def assert_ended_well(
    fleet: JobFleet,
    orchestration: Orchestration,
    status: Status,
    *,
    errored: dict[int, int] | None = None,
    charged: dict[int, int] | None = None,
) -> None:
    """The invariants a user would notice, once the orchestration has ended:

    - every instance is terminal, and the orchestration ended in `status`;
    - exactly one JobCompletedEvent was published for it;
    - only the instances in `errored` ended Errored, each with WorkerLost after that
      many attempts; every other instance Completed, after one attempt unless `charged`
      says how many (no instance is charged for another's crash);
    - no supervisor or worker of it is left alive.
    """
    errored, charged = errored or {}, charged or {}
    oid = orchestration.id
    context = f"\n--- log of {oid} ---\n{log_of(fleet, oid)[-6000:]}"
    snap = orchestration.status()
    instances = all_instances(orchestration)
    assert snap.status is status, f"{snap}{context}"
    assert snap.event_published, context
    assert len(instances) == snap.counts.total, context
    assert [i.index for i in instances if not i.status.terminal] == [], context
    errored_now = {i.index: i.attempts for i in instances if i.status is Status.ERRORED}
    assert errored_now == errored, f"Errored (index: attempts): {errored_now}{context}"
    attempts = {i.index: i.attempts for i in instances if i.status is Status.COMPLETED}
    wrong = {n: a for n, a in attempts.items() if a != charged.get(n, 1)}
    assert wrong == {}, f"Completed with unexpected attempts (index: attempts){context}"
    assert len(attempts) + len(errored_now) == snap.counts.total, context
    _, failures = orchestration.results()
    failed = {f.index: f.error.type for f in failures or []}
    assert failed == dict.fromkeys(errored, WORKER_LOST), f"{failed}{context}"
    assert events_for(fleet, oid) == [status], context
    # The last worker exits, and then its supervisor, just after the event is out.
    deadline = time.monotonic() + 60
    while processes_of(oid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(oid) == [], f"processes left behind{context}"


# -- counting raw publishes --------------------------------------------------------------


class RecordingBus:
    """An EventBus that appends every publish call to a file (one line: orchestration id
    and wall-clock time) before delegating: the raw count, before any de-duplication by
    the event log below."""

    def __init__(self, inner: EventBus, record: Path) -> None:
        self.inner, self.record = inner, record
        self._lock = threading.Lock()

    def publish(self, event: JobCompletedEvent) -> None:
        line = f"{event.orchestration_id} {time.time():.6f}\n".encode()
        with self._lock:
            fd = os.open(self.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one small O_APPEND write: atomic between processes
            finally:
                os.close(fd)
        self.inner.publish(event)

    def events(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        return self.inner.events(after=after)

    def follow(self, *, after: int = 0) -> Iterator[tuple[int, JobCompletedEvent]]:
        return self.inner.follow(after=after)

    def close(self) -> None:
        self.inner.close()


def publishes(record: Path) -> list[tuple[str, float]]:
    if not record.exists():
        return []
    lines = record.read_text().split()
    return [(oid, float(at)) for oid, at in zip(lines[::2], lines[1::2], strict=True)]


def _settle_in_rounds(database: str, record: str, folder: str, ids: list[str]) -> None:
    """A racing process: for each orchestration in turn, wait for its start signal (the
    file `go-<n>` in `folder`), settle it, and say so (`done-<n>-<pid>`)."""
    from jobfleet.backends.local.events import LocalEventLog
    from jobfleet.backends.local.store import SqliteStore
    from jobfleet.core.completion import settle

    store = SqliteStore(database)
    bus = RecordingBus(LocalEventLog(Path(database)), Path(record))
    signals = Path(folder)
    (signals / f"ready-{os.getpid()}").touch()
    for n, oid in enumerate(ids):
        while not (signals / f"go-{n}").exists():
            time.sleep(0.0005)
        settle(store, bus, oid)
        (signals / f"done-{n}-{os.getpid()}").touch()
    store.close()
    bus.close()


if __name__ == "__main__":
    _settle_in_rounds(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
