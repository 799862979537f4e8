"""Re-running what failed: exactly those instances, with their params and indexes, linked
to the run they re-run, and results read merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobfleet import JobFleet, Status
from jobfleet.errors import InvalidOption, NothingToRerun


def test_a_rerun_of_the_failures_succeeds_and_the_merged_results_are_whole(
    fleet: JobFleet, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("yes")
    params = [{"n": n, "broken": str(broken) if n in (2, 5, 7) else ""} for n in range(10)]
    first = fleet.kick_off("until_fixed", params, parallelism=3, tags={"team": "data"})
    assert first.wait(60).status is Status.ERRORED
    broken.unlink()
    again = first.rerun()
    snap = again.wait(60)
    assert snap.status is Status.COMPLETED and snap.counts.total == 3
    assert snap.tags == {"team": "data", "rerun_of": first.id}
    successes, failures = again.results()
    assert failures is None
    assert [(s.index, s.result) for s in successes] == [(2, 2), (5, 5), (7, 7)]
    assert [s.id for s in first.reruns()] == [again.id]
    merged, merged_failures = first.merged_results()
    assert merged_failures is None
    assert [s.index for s in merged] == list(range(10))
    assert [s.params["n"] for s in merged] == list(range(10))


def test_a_rerun_that_fails_again_is_the_last_word_and_can_be_rerun(
    fleet: JobFleet, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("yes")
    params = [{"n": n, "broken": str(broken) if n == 1 else ""} for n in range(3)]
    first = fleet.kick_off("until_fixed", params)
    first.wait(60)
    second = first.rerun("failed")
    second.wait(60)
    _, failures = first.merged_results()
    assert failures is not None and [f.index for f in failures] == [1]
    broken.unlink()
    third = second.rerun()
    third.wait(60)
    assert third.status().tags["rerun_of"] == second.id
    merged, merged_failures = first.merged_results()
    assert merged_failures is None and [s.index for s in merged] == [0, 1, 2]


def test_cancelled_instances_are_rerun_only_when_asked(fleet: JobFleet) -> None:
    run = fleet.kick_off("sleepy", [{"n": n, "seconds": 20} for n in range(4)], parallelism=1)
    run.cancel()
    with pytest.raises(NothingToRerun, match="no Errored instance"):
        run.rerun("failed")
    again = run.rerun(["failed", "cancelled"])
    assert again.status().counts.total == 4
    again.cancel()


def test_a_running_orchestration_or_an_unknown_choice_is_refused(fleet: JobFleet) -> None:
    run = fleet.kick_off("sleepy", [{"n": 0, "seconds": 20}])
    with pytest.raises(InvalidOption, match="still running"):
        run.rerun()
    run.cancel()
    with pytest.raises(InvalidOption, match="'failed', 'cancelled' or both"):
        run.rerun("everything")
