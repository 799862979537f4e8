"""Chaos in the kick-off: the process that kicks off dies (or is interrupted with Ctrl-C)
after the orchestration is committed and before its workers are launched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from chaos_support import (
    all_instances,
    assert_ended_well,
    chaos_fleet,
    commit_orchestration,
    events_for,
)

from conftest import eventually
from jobfleet import JobFleet, Orchestration, Status

pytestmark = pytest.mark.slow

END_WITHIN = 120  # a bound for waiting, not a timing assertion

# A kick-off whose launch never returns: it says it got there (the orchestration is
# committed by then), and waits to be killed.
KILLED_KICK_OFF = """
import pathlib, sys, time
from jobfleet import JobFleet

marker = pathlib.Path(sys.argv[1])
fleet = JobFleet()

def launch(*args, **kwargs):
    marker.write_text("committed")
    time.sleep(600)

fleet.backend.launcher.launch = launch
fleet.kick_off("chaos_quick", [{"n": n} for n in range(20)], parallelism=2, retries=0)
"""


@pytest.fixture
def fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    yield from chaos_fleet(home, monkeypatch)


def commit_without_launch(fleet: JobFleet, count: int) -> Orchestration:
    """What a kick-off killed between commit and launch leaves behind."""
    return fleet.orchestration(commit_orchestration(fleet, [{"n": n} for n in range(count)]))


def assert_committed_and_never_launched(orchestration: Orchestration, count: int) -> None:
    snap = orchestration.status()
    assert snap.status is Status.IN_PROGRESS and snap.execution is None
    assert snap.counts.pending == snap.counts.total == count


def test_a_sweep_launches_what_a_dead_kick_off_committed(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the launcher's launch grace a sweep leaves it alone (its kick-off may still
    be launching it); past it, a sweep launches it, once, and it completes."""
    orchestration = commit_without_launch(fleet, 20)
    assert fleet.sweep() == Counter({"nothing": 1})  # still within the grace
    assert_committed_and_never_launched(orchestration, 20)

    monkeypatch.setattr(fleet.backend.launcher, "launch_grace", 0.0)
    assert fleet.sweep() == Counter({"launched": 1})
    execution = orchestration.status().execution
    assert execution is not None
    assert fleet.sweep()["launched"] == 0  # launched once, not again
    orchestration.wait(timeout=END_WITHIN)
    assert orchestration.status().execution == execution
    assert_ended_well(fleet, orchestration, Status.COMPLETED)


def test_a_kick_off_killed_between_commit_and_launch_is_launched_by_a_sweep(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real kick-off process, SIGKILLed once its orchestration is committed and its
    launch has begun (a launch that never returns tells us when)."""
    marker = tmp_path / "committed"
    kick_off = subprocess.Popen([sys.executable, "-c", KILLED_KICK_OFF, str(marker)])
    try:
        assert eventually(marker.exists, timeout=60)
    finally:
        os.kill(kick_off.pid, signal.SIGKILL)
        kick_off.wait()
    [snap] = fleet.history()
    orchestration = fleet.orchestration(snap.id)
    assert_committed_and_never_launched(orchestration, 20)

    monkeypatch.setattr(fleet.backend.launcher, "launch_grace", 0.0)
    assert fleet.sweep() == Counter({"launched": 1})
    orchestration.wait(timeout=END_WITHIN)
    assert_ended_well(fleet, orchestration, Status.COMPLETED)


def test_ctrl_c_between_commit_and_launch_cancels_and_announces_once(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt raised where the launch would start: it reaches the caller,
    and what the user stopped ends Cancelled, announced once; no sweep revives it."""

    def interrupted(*args: Any, **kwargs: Any) -> NoReturn:
        raise KeyboardInterrupt

    launcher = fleet.backend.launcher
    setattr(launcher, "launch", interrupted)  # noqa: B010 (mypy: assigning to a method)
    with pytest.raises(KeyboardInterrupt):
        fleet.kick_off("chaos_quick", [{"n": n} for n in range(20)], parallelism=2)
    [snap] = fleet.history()
    orchestration = fleet.orchestration(snap.id)
    assert snap.status is Status.CANCELLED and snap.event_published
    assert snap.execution is None
    assert {i.status for i in all_instances(orchestration)} == {Status.CANCELLED}
    assert [i.attempts for i in all_instances(orchestration)] == [0] * 20
    assert events_for(fleet, orchestration.id) == [Status.CANCELLED]

    # A real launcher again, with no grace: a sweep would launch it if it looked.
    delattr(launcher, "launch")
    monkeypatch.setattr(fleet.backend.launcher, "launch_grace", 0.0)
    assert fleet.sweep() == Counter()  # settled: not even looked at
    assert orchestration.status().execution is None
    assert events_for(fleet, orchestration.id) == [Status.CANCELLED]
