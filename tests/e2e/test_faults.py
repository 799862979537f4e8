"""Workers killed for real (SIGKILL) mid-job: every instance still ends terminal,
and the orchestration is announced exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import eventually
from jobfleet import JobFleet, Status

pytestmark = pytest.mark.slow


def kill_a_running_worker(
    folder: Path, timeout: float = 30, spare: frozenset[int] = frozenset()
) -> tuple[int, int]:
    """SIGKILL a worker process (not one in `spare`) running some instance; returns
    (instance index, pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for marker in folder.glob("running-*"):
            pid = int(marker.read_text() or 0)
            if pid and pid not in spare:
                os.kill(pid, signal.SIGKILL)
                return int(marker.name.removeprefix("running-")), pid
        time.sleep(0.01)
    raise AssertionError("no instance started running")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def events_for(fleet: JobFleet, orchestration_id: str) -> list[Status]:
    return [e.status for _, e in fleet.events() if e.orchestration_id == orchestration_id]


def test_killed_worker_is_replaced_and_its_instance_retried(
    fleet: JobFleet, tmp_path: Path
) -> None:
    params = [{"n": n, "seconds": 0.5, "dir": str(tmp_path)} for n in range(8)]
    orchestration = fleet.kick_off("sleepy", params, parallelism=2, retries=1)
    killed, pid = kill_a_running_worker(tmp_path)

    snap = orchestration.wait(timeout=90)
    assert gone(pid)
    assert snap.status is Status.COMPLETED
    assert snap.counts.succeeded == 8 and snap.counts.done == snap.counts.total
    successes, failures = orchestration.results()
    assert failures is None
    assert killed in [s.index for s in successes]
    assert events_for(fleet, orchestration.id) == [Status.COMPLETED]


def test_killed_worker_without_retries_left_ends_errored_as_worker_lost(
    fleet: JobFleet, tmp_path: Path
) -> None:
    params = [{"n": n, "seconds": 0.5, "dir": str(tmp_path)} for n in range(6)]
    orchestration = fleet.kick_off("sleepy", params, parallelism=2, retries=0)
    killed, _ = kill_a_running_worker(tmp_path)

    snap = orchestration.wait(timeout=90)
    assert snap.status is Status.ERRORED
    successes, failures = orchestration.results()
    assert failures is not None
    assert [f.index for f in failures] == [killed]
    assert failures[0].error.type == "WorkerLost"
    assert failures[0].params == params[killed]
    # Siblings, including the rest of the killed worker's share, all succeeded.
    assert sorted(s.index for s in successes) == [n for n in range(6) if n != killed]
    assert events_for(fleet, orchestration.id) == [Status.ERRORED]


def test_a_task_killed_past_its_retries_is_recovered_while_its_instances_have_some(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """Kill every incarnation of the single task until Cloud Run's task retries are used
    up: each kill is charged to the one instance running, which has retries to spare, so
    a recovery execution takes the shard over and everything completes."""
    params = [{"n": n, "seconds": 1, "dir": str(tmp_path)} for n in range(3)]
    orchestration = fleet.kick_off("sleepy", params, parallelism=1, retries=5)
    killed: set[int] = set()
    for _ in range(4):  # the first attempt and its three retries
        killed.add(kill_a_running_worker(tmp_path, spare=frozenset(killed))[1])
    snap = orchestration.wait(timeout=90)
    assert snap.status is Status.COMPLETED
    assert snap.counts.succeeded == 3
    attempts = {i.index: i.attempts for i in orchestration.instances()}
    assert sum(attempts.values()) == 3 + 4  # one charged attempt per kill, no more
    assert events_for(fleet, orchestration.id) == [Status.COMPLETED]


def test_losing_the_whole_execution_charges_what_ran_and_recovers_the_rest(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """SIGKILL the supervisor and all its workers: whoever waits sweeps the orchestration.
    The two instances that were running are charged (no retries: Errored, WorkerLost);
    the two never attempted are not failed for it: a recovery execution runs them."""
    params = [
        {"n": n, "seconds": 30 if n < 2 else 0.1, "dir": str(tmp_path)} for n in range(4)
    ]
    orchestration = fleet.kick_off("sleepy", params, parallelism=2)
    assert eventually(lambda: len(list(tmp_path.glob("running-*"))) == 2, timeout=30)
    execution = orchestration.status().execution
    assert execution is not None
    os.killpg(int(execution.rsplit("-", 1)[1]), signal.SIGKILL)

    snap = orchestration.wait(timeout=60)
    assert snap.status is Status.ERRORED
    successes, failures = orchestration.results()
    assert failures is not None
    assert sorted(f.index for f in failures) == [0, 1]
    assert {f.error.type for f in failures} == {"WorkerLost"}
    assert sorted(s.index for s in successes) == [2, 3]
    assert events_for(fleet, orchestration.id) == [Status.ERRORED]


def test_a_job_that_prints_without_end_does_not_fill_the_disk(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 MB printed against a 1 MB limit: the log is rotated (<log>.1 keeps the previous
    part) instead of growing with the output."""
    monkeypatch.setenv("JOBFLEET_LOG_LIMIT_BYTES", "1000000")
    monkeypatch.setenv("JOBFLEET_LEASE_SECONDS", "1.5")  # the supervisor looks every 0.5 s
    with JobFleet() as fleet:
        orchestration = fleet.kick_off("chatty", [{"chunks": 60, "pause": 0.05}], parallelism=1)
        assert orchestration.wait(timeout=60).status is Status.COMPLETED
        log = fleet.settings.log_of(orchestration.id)
    rotated = log.with_name(log.name + ".1")
    assert rotated.exists()
    assert log.stat().st_size + rotated.stat().st_size < 6_000_000 // 2


def test_a_worker_stopped_while_holding_the_store_lock_is_killed_and_the_rest_runs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP a worker that holds SQLite's write lock: no lease can expire in the store
    and nothing can be written until it dies. The supervisor kills it from what /proc
    says after one lease, the lock goes with it, and everything else completes."""
    monkeypatch.setenv("JOBFLEET_LEASE_SECONDS", "2")
    with JobFleet() as fleet:
        locker = fleet.kick_off("hold_the_store_lock", [{"dir": str(tmp_path)}], parallelism=1)
        assert eventually(lambda: (tmp_path / "locked").exists(), timeout=30)
        pid = int((tmp_path / "locked").read_text())
        os.kill(pid, signal.SIGSTOP)
        snap = locker.wait(timeout=90)
        assert gone(pid)
        assert snap.status is Status.ERRORED
        _, failures = locker.results()
        assert failures is not None and failures[0].error.type == "WorkerLost"
        others = fleet.kick_off("greet", [{"name": "ada", "count": 1}] * 20, parallelism=2)
        assert others.wait(timeout=60).status is Status.COMPLETED
        assert events_for(fleet, locker.id) == [Status.ERRORED]
