"""Chaos on the workers of the local backend: hung (SIGSTOP, native code holding the
GIL) and crashing (`os._exit`) processes. Each test ends with the invariants of
chaos_support.assert_ended_well: everything terminal, one event, nobody charged for
another's crash, no process left behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_support import (
    assert_ended_well,
    chaos_fleet,
    gone,
    log_of,
    stopped,
    wait_for_marker,
)

from conftest import eventually
from jobfleet import JobFleet, Status

pytestmark = pytest.mark.slow

# A bound for waiting only (nothing asserts how long anything took): the work itself,
# start-up of the processes on a loaded machine, and a few 2 s lease periods.
END_WITHIN = 60


@pytest.fixture
def fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    yield from chaos_fleet(home, monkeypatch)


def test_a_stopped_worker_is_killed_and_its_instance_runs_again(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """SIGSTOP the worker running instance 0. Its lease runs out, the supervisor kills
    it and its task runs again; instance 0 (held alone: slow jobs are claimed one at a
    time) is charged one attempt and completes on its retry."""
    params = [{"n": n, "seconds": 1.5, "dir": str(tmp_path)} for n in range(6)]
    orchestration = fleet.kick_off("chaos_sleep", params, parallelism=2, retries=1)
    pid = wait_for_marker(tmp_path, 0)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert eventually(lambda: stopped(pid) or gone(pid), 10)
        orchestration.wait(timeout=END_WITHIN)
        assert gone(pid), "the stopped worker was not killed"
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert_ended_well(fleet, orchestration, Status.COMPLETED, charged={0: 2})
    assert "exited with -9" in log_of(fleet, orchestration.id)  # killed, then run again


def test_native_code_holding_the_gil_past_the_lease_is_killed_and_charged_alone(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """Instance 5 blocks in native code holding the GIL for 60 s: neither the SIGALRM
    timeout (1 s) nor the heartbeat thread can run. The supervisor sees the lease expire
    and kills the worker. The instance is charged (retries=0: Errored, WorkerLost), not
    timed out; its siblings, the other instances of that worker's shard included,
    complete after one attempt."""
    params = [{"n": n, "hold": 60 if n == 5 else 0, "dir": str(tmp_path)} for n in range(40)]
    orchestration = fleet.kick_off("chaos_gil", params, parallelism=2, retries=0, timeout=1)
    hog = wait_for_marker(tmp_path, 5)
    try:
        orchestration.wait(timeout=END_WITHIN)
        assert gone(hog), "the worker stuck in native code was not killed"
    finally:
        if not gone(hog):
            os.kill(hog, signal.SIGKILL)
    assert_ended_well(fleet, orchestration, Status.ERRORED, errored={5: 1})
    _, failures = orchestration.results()
    assert failures is not None
    assert "lease" in failures[0].error.message, failures[0].error
    assert "exited with -9" in log_of(fleet, orchestration.id)  # killed, then run again


def test_one_crash_in_a_batch_of_claimed_siblings_fails_only_itself(
    fleet: JobFleet,
) -> None:
    """300 quick instances in one shard, so the worker claims them in growing batches (up
    to 256); instance 200 calls os._exit(1) while its worker holds many others. With
    retries=0 only instance 200 ends Errored (WorkerLost); every sibling completes with
    attempts == 1 (released with its attempt given back, not charged)."""
    params = [{"n": n, "poison": n == 200} for n in range(300)]
    orchestration = fleet.kick_off("chaos_quick", params, parallelism=1, retries=0)
    orchestration.wait(timeout=END_WITHIN)
    assert_ended_well(fleet, orchestration, Status.ERRORED, errored={200: 1})
    # It crashed twice: first holding a batch of siblings (released, attempts given
    # back), then alone (charged).
    assert log_of(fleet, orchestration.id).count("exited with 1") == 2


def test_two_poison_instances_in_one_shard_end_errored_alone(fleet: JobFleet) -> None:
    """Two instances that kill their worker, in one shard with 298 healthy ones, and
    retries=1: each poison instance is isolated and charged its two attempts alone (the
    task's own retries run out on the way, and a recovery execution takes over); every
    healthy instance completes after one attempt."""
    poison = {57, 230}
    params = [{"n": n, "poison": n in poison} for n in range(300)]
    orchestration = fleet.kick_off("chaos_quick", params, parallelism=1, retries=1)
    orchestration.wait(timeout=END_WITHIN)
    assert_ended_well(
        fleet, orchestration, Status.ERRORED, errored=dict.fromkeys(poison, 2)
    )
    # The crashes were seen as such: the log names the exits of the dead tasks.
    assert eventually(lambda: "exited with 1" in log_of(fleet, orchestration.id), 10)
