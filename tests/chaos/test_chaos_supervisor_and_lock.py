"""Chaos around the workers of the local backend: their supervisor killed while a watcher
is attached, and the database locked by another process for longer than SQLite's busy
timeout and the lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_support import (
    assert_ended_well,
    chaos_fleet,
    gone,
    log_of,
    supervisor_pid,
    wait_for_marker,
)

from conftest import eventually
from jobfleet import JobFleet, Status
from jobfleet.core.models import Counts

pytestmark = pytest.mark.slow

END_WITHIN = 180  # a bound for waiting, not a timing assertion

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
print("released", flush=True)
"""
LOCK_SECONDS = 40  # past SQLite's 30 s busy timeout, and twenty leases


@pytest.fixture
def fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    yield from chaos_fleet(home, monkeypatch)


def test_a_killed_supervisor_leaves_its_live_workers_alone(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """SIGKILL only the supervisor while both workers run 7 s jobs, with a watcher
    attached (it sweeps after 5 s without change) and a sweep of our own: the workers'
    leases are alive, so nothing is failed (retries=0 would make any charge an Errored
    instance), and everything completes."""
    params = [{"n": n, "seconds": 7, "dir": str(tmp_path)} for n in range(4)]
    orchestration = fleet.kick_off("chaos_sleep", params, parallelism=2, retries=0)
    workers = [wait_for_marker(tmp_path, n) for n in (0, 1)]
    supervisor = supervisor_pid(orchestration)
    os.kill(supervisor, signal.SIGKILL)
    assert eventually(lambda: gone(supervisor), 10)

    assert fleet.sweep() == Counter({"nothing": 1})  # the workers live: nothing to do
    failed_while_alive: list[Counts] = []
    for snap in orchestration.watch(timeout=END_WITHIN):
        if snap.counts.failed:
            failed_while_alive.append(snap.counts)
    assert failed_while_alive == []
    assert_ended_well(fleet, orchestration, Status.COMPLETED)  # the workers exited too
    assert all(gone(pid) for pid in workers)
    assert "exited with" not in log_of(fleet, orchestration.id)


def test_a_lock_held_past_the_busy_timeout_is_waited_out(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """Another process takes the database's write lock (BEGIN IMMEDIATE) and holds it for
    40 s while the orchestration runs, with a watcher attached. Workers and supervisor
    wait (they say so in the log) instead of crashing; no lease is taken for expired
    because heartbeats could not be written; everything completes after one attempt."""
    params = [{"n": n, "seconds": 0.5, "dir": str(tmp_path)} for n in range(16)]
    orchestration = fleet.kick_off("chaos_sleep", params, parallelism=2, retries=0)
    wait_for_marker(tmp_path, 0)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(fleet.settings.database), str(LOCK_SECONDS)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        orchestration.wait(timeout=END_WITHIN)
        assert locker.stdout.readline().strip() == "released"
        assert locker.wait(timeout=30) == 0
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    assert_ended_well(fleet, orchestration, Status.COMPLETED)
    log = log_of(fleet, orchestration.id)
    assert "still waiting" in log, log  # the lock was really in the way
    assert "exited with" not in log, log  # and no task died of it
    assert "Traceback" not in log, log
