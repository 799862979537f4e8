"""A worker's commits of outcomes when they are spaced (`Backend.commit_spacing`, on
Google Cloud): each one updates its shard's counter and invokes the completion function,
so they must scale with time, not with instances. The worker runs on a real SQLite store
with a fake clock (only sleeping, and a little per attempt, moves it), so what is
asserted is the order of events, not how fast this machine is."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from jobfleet import worker as worker_module
from jobfleet.backends.gcp.firestore_worker import CHUNK
from jobfleet.backends.local.events import LocalEventLog
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.models import NewInstance, NewOrchestration, Outcome, RunOptions, Status
from jobfleet.core.registry import get_job, job
from jobfleet.worker import MAX_OUTCOMES_PER_COMMIT, Assignment, Worker

ATTEMPT_SECONDS = 0.0005  # what the fake clock moves per no-op attempt


@dataclass
class FakeClock:
    now: float = 1_000.0
    slept: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


class CountingStore:
    """The real store, with each commit of outcomes noted against the fake clock."""

    def __init__(self, store: SqliteStore, clock: FakeClock) -> None:
        self._store, self._clock = store, clock
        self.commits: list[tuple[float, int]] = []  # (when, how many outcomes)

    def record_outcomes(self, orchestration_id: str, outcomes: Any) -> int:
        self.commits.append((self._clock.now, len(outcomes)))
        return self._store.record_outcomes(orchestration_id, outcomes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(worker_module, "time", fake)
    return fake


def run_worker(
    store: SqliteStore, bus: LocalEventLog, clock: FakeClock, n: int, spacing: float
) -> tuple[CountingStore, str]:
    @job("noop_spaced", retries=0)
    def noop(params: dict[str, Any]) -> None:
        clock.now += ATTEMPT_SECONDS

    oid = str(uuid.uuid4())
    store.create_orchestration(
        NewOrchestration(oid, "noop_spaced", RunOptions(retries=0, backoff=0.0, timeout=None,
                                                        parallelism=1), {}, clock.now),
        [[NewInstance(str(uuid.uuid4()), i, 0, {"n": i}) for i in range(n)]],
    )
    counting = CountingStore(store, clock)
    assignment = Assignment("noop_spaced", oid, 0, 1, 0, None)
    Worker(assignment, get_job("noop_spaced"), counting, bus,
           settles=False, commit_spacing=spacing).run()
    return counting, oid


@pytest.mark.usefixtures("clean_registry")
def test_spaced_commits_are_a_spacing_apart_and_scale_with_time_not_instances(
    store: SqliteStore, bus: LocalEventLog, clock: FakeClock
) -> None:
    counting, oid = run_worker(store, bus, clock, n=3_000, spacing=1.0)

    assert store.unfinished_count(oid) == 0
    assert sum(n for _, n in counting.commits) == 3_000
    times = [when for when, _ in counting.commits]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert max(n for _, n in counting.commits) <= MAX_OUTCOMES_PER_COMMIT
    # 3,000 no-ops: each commit holds many; about 3,000 / 400 of them, not 3,000.
    assert len(counting.commits) <= 3_000 // MAX_OUTCOMES_PER_COMMIT + 2


@pytest.mark.usefixtures("clean_registry")
def test_unspaced_commits_follow_every_batch_as_locally(
    store: SqliteStore, bus: LocalEventLog, clock: FakeClock
) -> None:
    counting, oid = run_worker(store, bus, clock, n=300, spacing=0.0)

    assert store.unfinished_count(oid) == 0
    assert clock.slept == []  # the worker never waits for a commit to fall due
    # Claims grow fourfold up to about 50 ms of work (100 attempts here), and each batch
    # is committed as it ends.
    assert [n for _, n in counting.commits] == [1, 4, 16, 64, 100, 100, 15]


def test_a_commit_of_held_outcomes_fits_one_firestore_transaction() -> None:
    """More would be several transactions, each writing the shard counter."""
    assert MAX_OUTCOMES_PER_COMMIT <= CHUNK



@pytest.mark.usefixtures("clean_registry")
def test_an_isolated_instance_is_committed_alone_even_amid_held_outcomes(
    store: SqliteStore, bus: LocalEventLog, clock: FakeClock
) -> None:
    """After a crash a suspect is claimed alone. A spaced worker that holds outcomes back
    commits them before running it, and its outcome before claiming again: were it to
    kill the worker, the worker would die holding the suspect alone, charged alone."""
    oid = str(uuid.uuid4())
    store.create_orchestration(
        NewOrchestration(oid, "noop_spaced", RunOptions(retries=0, backoff=0.0, timeout=None,
                                                        parallelism=1), {}, clock.now),
        [[NewInstance(str(uuid.uuid4()), i, 0, {"n": i}) for i in range(300)]],
    )
    [suspect] = store.claim(oid, 0, "lost", limit=1, now=clock.now, lease=30)
    store.record_outcomes(oid, [Outcome(  # ready while the worker holds other outcomes
        suspect.job_id, suspect.index, "lost", Status.PENDING, not_before=clock.now + 0.02,
        refund=True, isolate=True,
    )])
    commits: list[set[str]] = []

    class Noting(CountingStore):
        def record_outcomes(self, orchestration_id: str, outcomes: Any) -> int:
            commits.append({o.job_id for o in outcomes})
            return super().record_outcomes(orchestration_id, outcomes)

    @job("noop_spaced", retries=0)
    def noop(params: dict[str, Any]) -> None:
        clock.now += ATTEMPT_SECONDS

    Worker(Assignment("noop_spaced", oid, 0, 1, 0, None), get_job("noop_spaced"),
           Noting(store, clock), bus,
           settles=False, commit_spacing=1.0).run()

    assert store.unfinished_count(oid) == 0
    assert {suspect.job_id} in commits  # its own commit, nothing else in it
    before = commits[: commits.index({suspect.job_id})]
    assert before and sum(map(len, before)) > 1  # it came while outcomes were held
