"""Pipelines on the embedded backend: three stages run to their end once each, a failed
middle stage stops or feeds what follows as `when` says, duplicate announcements of a
stage's end start one next stage, and a process killed while starting it is replaced."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sample_jobs
from conftest import TESTS
from jobfleet import JobFleet, Stage, Status
from jobfleet.core.completion import settle
from jobfleet.core.pipeline import PIPELINE_TAG, STAGE_TAG, next_stage_id
from jobfleet.errors import InvalidOption
from pipeline_support import ended_stage

SOURCES = [{"source": s} for s in range(3)]


def etl(when: str = "completed") -> list[Stage]:
    return [Stage("transform", params=sample_jobs.rows_of),
            Stage("load", params=sample_jobs.batch_of, when=when)]


def test_three_stages_run_to_the_end_once_each(fleet: JobFleet) -> None:
    first = fleet.kick_off("extract", SOURCES, then=etl(), tags={"team": "data"})
    stages = first.wait_pipeline(timeout=120)
    assert [s.job_name for s in stages] == ["extract", "transform", "load"]
    assert [s.status for s in stages] == [Status.COMPLETED] * 3
    assert [s.counts.total for s in stages] == [3, 9, 1]
    assert [s.tags[STAGE_TAG] for s in stages] == ["1", "2", "3"]
    assert {s.tags[PIPELINE_TAG] for s in stages} == {first.id}
    assert all(s.tags["team"] == "data" for s in stages)  # the user's tags follow
    assert [s.parent for s in stages] == [None, stages[0].id, stages[1].id]
    assert stages[1].id == next_stage_id(first.id)
    [loaded] = fleet.handle(stages[2].id).results()[0]
    assert loaded.params == {"values": [0, 2, 4, 20, 22, 24, 40, 42, 44]}
    assert [s.id for s in fleet.handle(stages[1].id).stages()] == [s.id for s in stages]
    events = [e for _, e in fleet.events() if e.tags.get(PIPELINE_TAG) == first.id]
    assert sorted(e.orchestration_id for e in events) == sorted(s.id for s in stages)


def test_a_failed_middle_stage_stops_a_pipeline_that_runs_on_completed(
    fleet: JobFleet,
) -> None:
    first = fleet.kick_off("extract", SOURCES, then=etl(), tags={"poison": "21"})
    stages = first.wait_pipeline(timeout=120)
    assert [s.status for s in stages] == [Status.COMPLETED, Status.ERRORED]
    assert "ended Errored" in stages[1].next_note
    assert len(fleet.history(tag=(PIPELINE_TAG, first.id))) == 2


def test_a_stage_that_runs_always_gets_what_succeeded_before_it(fleet: JobFleet) -> None:
    first = fleet.kick_off("extract", SOURCES, then=etl(when="always"), tags={"poison": "21"})
    stages = first.wait_pipeline(timeout=120)
    assert [s.status for s in stages] == [Status.COMPLETED, Status.ERRORED, Status.COMPLETED]
    [loaded] = fleet.handle(stages[2].id).results()[0]
    assert loaded.params == {"values": [0, 2, 4, 20, 22, 24, 40, 44]}  # row 21 failed


def test_a_first_stage_that_fails_to_give_params_says_why(fleet: JobFleet) -> None:
    first = fleet.kick_off("extract", [{"source": 0, "fail": True}],
                           then=[Stage("transform", params=sample_jobs.rows_of, when="always")])
    [only] = first.wait_pipeline(timeout=120)
    assert only.status is Status.ERRORED
    assert only.next_note == "the next stage got no parameter sets: the pipeline stops"


def test_bad_stages_are_refused_before_anything_is_created(fleet: JobFleet) -> None:
    with pytest.raises(InvalidOption, match=r"stage 2 \(nope\): unknown job 'nope'"):
        fleet.kick_off("extract", SOURCES, then=[Stage("nope", params=[{}])])
    with pytest.raises(InvalidOption, match=r"stage 2 .* needs params"):
        fleet.kick_off("extract", SOURCES, then=[Stage("load", params=[])])
    with pytest.raises(InvalidOption, match="declared at module level"):
        fleet.kick_off("extract", SOURCES,
                       then=[Stage("load", params=lambda r: [{"values": []}])])
    with pytest.raises(InvalidOption, match=r"stage 2 \(greet\): parameter set 0"):
        fleet.kick_off("extract", SOURCES, then=[Stage("greet", params=[{"name": 1}])])
    with pytest.raises(InvalidOption, match=r"stage 2 \(load\): parallelism"):
        fleet.kick_off("extract", SOURCES, then=[Stage("load", params=[{}], parallelism=0)])
    with pytest.raises(InvalidOption, match=r"stage 2 \(load\): tag key 'goog'"):
        fleet.kick_off("extract", SOURCES, then=[Stage("load", params=[{}], tags={"goog": "x"})])
    with pytest.raises(InvalidOption, match="when must be 'completed' or 'always'"):
        fleet.kick_off("extract", SOURCES, then=[Stage("load", params=[{}], when="never")])
    assert fleet.history() == []


NEXT = [Stage("greet", params=[{"name": "next", "count": 1}, {"name": "b", "count": 2}])]


def test_an_end_announced_three_times_at_once_starts_one_next_stage(
    fleet: JobFleet, home: Path
) -> None:
    oid = ended_stage(fleet, [{"name": "a", "count": 1}], NEXT)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    script = str(TESTS / "pipeline_support.py")
    starters = [lambda: subprocess.Popen([sys.executable, script, oid, "settle"], env=env)
                for _ in range(3)]
    threads = [threading.Thread(target=lambda: settle(
        fleet.backend.store, fleet.backend.bus, oid, fleet.advance)) for _ in range(3)]
    order = [*starters, *(t.start for t in threads)]
    random.shuffle(order)
    processes = [p for p in (start() for start in order) if p is not None]
    for t in threads:
        t.join()
    assert [p.wait(60) for p in processes] == [0, 0, 0]
    second = fleet.orchestration(next_stage_id(oid)).wait(60)
    assert second.status is Status.COMPLETED
    assert len(fleet.history(tag=(PIPELINE_TAG, oid))) == 2
    assert [e.orchestration_id for _, e in fleet.events()].count(oid) == 1


@pytest.mark.parametrize("how", ["die-before", "die-after"])
def test_a_process_killed_while_starting_the_next_stage_is_replaced_by_the_sweep(
    fleet: JobFleet, how: str
) -> None:
    oid = ended_stage(fleet, [{"name": "a", "count": 1}], NEXT)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    dying = subprocess.run([sys.executable, str(TESTS / "pipeline_support.py"), oid, how],
                           env=env, timeout=60)
    assert dying.returncode == -signal.SIGKILL
    assert not fleet.orchestration(oid).status().event_published
    time.sleep(1.2)  # the dead process's publish claim runs out
    fleet.sweep()
    second = fleet.orchestration(next_stage_id(oid)).wait(60)
    assert second.status is Status.COMPLETED
    assert fleet.orchestration(oid).status().event_published
    assert len(fleet.history(tag=(PIPELINE_TAG, oid))) == 2
