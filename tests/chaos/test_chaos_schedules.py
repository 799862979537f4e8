"""Chaos in a fire: the process firing a schedule is SIGKILLed while it holds the fire,
before the run exists and after the run started but before the fire recorded it. The
next delivery of the same scheduled time finishes the fire, and exactly one run exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import eventually
from jobfleet import JobFleet, Status
from jobfleet.core import schedules
from jobfleet.core.cron import parse_iso
from jobfleet.core.schedules import FireState
from jobfleet.errors import FireInProgress

pytestmark = pytest.mark.slow

T0 = parse_iso("2030-01-01T10:00:00Z")
HOLD = 1.0  # the dying process's claim hold, short so that the test need not wait

# Fires (schedule, T0) with a 1 s hold. "provider": the params provider hangs, so the
# process is killed holding the fire before any run exists. "recorded": the process
# kills itself between the kick-off and recording the run on the fire.
DYING_FIRE = """
import os, pathlib, signal, sys, time
import jobfleet.scheduling as scheduling
from jobfleet import JobFleet, params_provider

scheduling.FIRE_HOLD_SECONDS = float(sys.argv[4])
marker = pathlib.Path(sys.argv[3])

@params_provider("hanging")
def hanging():
    marker.write_text("in provider")
    time.sleep(3600)
    return []

if sys.argv[1] == "recorded":
    start = scheduling.Schedules._start

    def dying(self, schedule, fire):
        start(self, schedule, fire)
        marker.write_text("run started")
        os.kill(os.getpid(), signal.SIGKILL)

    scheduling.Schedules._start = dying

fleet = JobFleet()
fleet.schedules.fire(sys.argv[2], float(sys.argv[5]))
"""


@pytest.fixture
def hanging_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(schedules._PROVIDERS, "hanging", lambda: [])
    yield


def fire_in_a_process(tmp_path: Path, how: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    marker = tmp_path / f"{how}.marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", DYING_FIRE, how, name, str(marker), str(HOLD), repr(T0)],
        env=os.environ.copy(),
    )
    return proc, marker


def test_a_fire_killed_in_its_params_provider_is_fired_by_the_next_delivery(
    fleet: JobFleet, tmp_path: Path, hanging_provider: None
) -> None:
    fleet.schedules.create("stuck", job="greet", cron="0 * * * *", params_provider="hanging")
    proc, marker = fire_in_a_process(tmp_path, "provider", "stuck")
    eventually(lambda: marker.exists(), timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    [held] = fleet.schedules.history("stuck")
    assert held.state is FireState.FIRING and held.orchestration_id is None
    schedules._PROVIDERS["hanging"] = lambda: [{"name": "back", "count": 1}]
    time.sleep(max(0.0, held.hold_until - time.time()) + 0.2)
    result = fleet.schedules.fire("stuck", T0)
    assert (result.fire.state, result.fire.attempt) == (FireState.STARTED, 2)
    assert fleet.orchestration(result.fire.orchestration_id or "").wait(60).status \
        is Status.COMPLETED
    assert len(fleet.history(tag=("schedule", "stuck"))) == 1


def test_a_fire_killed_after_starting_its_run_is_not_started_twice(
    fleet: JobFleet, tmp_path: Path, hanging_provider: None
) -> None:
    fleet.schedules.create("halfway", job="greet", cron="0 * * * *",
                           params=[{"name": "h", "count": 1}])
    proc, marker = fire_in_a_process(tmp_path, "recorded", "halfway")
    assert proc.wait(60) == -signal.SIGKILL
    assert marker.read_text() == "run started"
    [run] = fleet.history(tag=("schedule", "halfway"))
    [held] = fleet.schedules.history("halfway")
    assert held.state is FireState.FIRING  # the run was never recorded on the fire
    with pytest.raises(FireInProgress):
        fleet.schedules.fire("halfway", T0, now=held.fired_at + HOLD / 2)
    time.sleep(max(0.0, held.hold_until - time.time()) + 0.2)
    result = fleet.schedules.fire("halfway", T0)
    assert (result.fire.state, result.fire.orchestration_id) == (FireState.STARTED, run.id)
    assert len(fleet.history(tag=("schedule", "halfway"))) == 1
    assert fleet.orchestration(run.id).wait(60).status is Status.COMPLETED
