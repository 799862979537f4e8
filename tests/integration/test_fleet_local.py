"""The SDK on the embedded backend, with real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobfleet import (
    InvalidOption,
    InvalidParams,
    JobFleet,
    LaunchFailed,
    Status,
    UnknownJob,
    UnknownOrchestration,
    WaitTimeout,
)

pytestmark = pytest.mark.slow


def test_results_split_successes_and_failures_with_original_params(fleet: JobFleet) -> None:
    params = [{"n": n, "fail": n % 3 == 0} for n in range(12)]
    orchestration = fleet.kick_off("maybe_fail", params, parallelism=3)
    successes, failures = orchestration.results(timeout=60)

    assert [s.index for s in successes] == [n for n in range(12) if n % 3]
    assert all(s.result == s.params["n"] * 10 for s in successes)
    assert failures is not None
    assert [f.index for f in failures] == [0, 3, 6, 9]
    for failure in failures:
        assert failure.params == params[failure.index]
        assert failure.error.type == "RuntimeError"
        assert f"item {failure.index} failed" in failure.error.message
        assert "raise RuntimeError" in failure.error.traceback
        assert failure.attempts == 1
    ids = {s.job_id for s in successes} | {f.job_id for f in failures}
    assert len(ids) == 12  # one UUID per instance

    snap = orchestration.status()
    assert snap.status is Status.ERRORED
    assert (snap.counts.succeeded, snap.counts.failed) == (8, 4)


def test_failures_is_none_when_every_instance_succeeds(fleet: JobFleet) -> None:
    orchestration = fleet.kick_off("maybe_fail", [{"n": n} for n in range(5)])
    successes, failures = orchestration.results(timeout=60)
    assert failures is None
    assert [s.result for s in successes] == [0, 10, 20, 30, 40]
    assert orchestration.status().status is Status.COMPLETED


def test_transient_failures_are_retried_with_backoff(fleet: JobFleet, tmp_path: Path) -> None:
    params = [{"n": n, "dir": str(tmp_path), "fail_times": n} for n in range(3)]
    successes, failures = fleet.kick_off("flaky", params, retries=2).results(timeout=60)
    # n=0 and n=1 and n=2 need 1, 2, 3 attempts: all within retries=2.
    assert failures is None
    assert [s.result for s in successes] == [1, 2, 3]


def test_out_of_retries_keeps_the_last_error_and_attempt_count(
    fleet: JobFleet, tmp_path: Path
) -> None:
    params = [{"n": 0, "dir": str(tmp_path), "fail_times": 5}]
    _, failures = fleet.kick_off("flaky", params, retries=1).results(timeout=60)
    assert failures is not None
    assert failures[0].attempts == 2
    assert failures[0].error.type == "ConnectionError"
    assert failures[0].error.message == "transient failure 2"
    assert (tmp_path / "attempts-0").read_text() == "2"


def test_an_attempt_past_its_timeout_fails_without_holding_up_siblings(fleet: JobFleet) -> None:
    params = [{"n": 0, "seconds": 30}, {"n": 1, "seconds": 0}, {"n": 2, "seconds": 0}]
    orchestration = fleet.kick_off("sleepy", params, parallelism=1, timeout=0.5)
    successes, failures = orchestration.results(timeout=20)
    assert [s.index for s in successes] == [1, 2]
    assert failures is not None and failures[0].error.type == "JobTimeout"
    assert "0.5s" in failures[0].error.message


def test_async_jobs_and_pydantic_params(fleet: JobFleet) -> None:
    doubled, _ = fleet.kick_off("double_async", [{"x": 1}, {"x": 21}]).results(timeout=60)
    assert [s.result for s in doubled] == [2, 42]
    greeted, failures = fleet.kick_off("greet", [{"name": "ada", "count": "3"}]).results(
        timeout=60
    )
    assert failures is None
    # The job got the validated model (count coerced to int); the params stay as given.
    assert greeted[0].result == {"text": "hello ada", "count": 3}
    assert greeted[0].params == {"name": "ada", "count": "3"}


def test_a_result_that_is_not_json_is_a_failure(fleet: JobFleet) -> None:
    _, failures = fleet.kick_off("unserialisable", [{}]).results(timeout=60)
    assert failures is not None
    assert "not JSON-serialisable" in failures[0].error.message


def test_bad_params_are_refused_and_nothing_is_created(fleet: JobFleet) -> None:
    good = [{"name": "a", "count": 1}] * 1200  # past one batch, so the bad one streams late
    with pytest.raises(InvalidParams, match=r"parameter set 1200: .*count"):
        fleet.kick_off("greet", [*good, {"name": "b", "count": -1}])
    with pytest.raises(InvalidParams, match="parameter set 1: expected a JSON object"):
        fleet.kick_off("maybe_fail", [{"n": 1}, [1, 2]])
    with pytest.raises(InvalidParams, match="no parameter sets"):
        fleet.kick_off("maybe_fail", [])
    with pytest.raises(UnknownJob, match=r"known jobs: .*maybe_fail"):
        fleet.kick_off("no_such_job", [{}])
    with pytest.raises(InvalidOption, match="parallelism"):
        fleet.kick_off("maybe_fail", [{"n": 1}], parallelism=0)
    with pytest.raises(InvalidOption, match="'status' is reserved"):
        fleet.kick_off("maybe_fail", [{"n": 1}], tags={"status": "urgent"})
    assert fleet.history() == []


def test_watch_reports_progress_as_it_happens(fleet: JobFleet) -> None:
    params = [{"n": n, "seconds": 0.05} for n in range(20)]
    orchestration = fleet.kick_off("sleepy", params, parallelism=2)
    seen = list(orchestration.watch(timeout=60))
    done = [s.counts.done for s in seen]
    assert done == sorted(done)
    assert len(set(done)) > 2  # intermediate progress, not just start and end
    assert seen[-1].status is Status.COMPLETED and seen[-1].counts.succeeded == 20


def test_wait_timeout_and_cancel(fleet: JobFleet) -> None:
    params = [{"n": n, "seconds": 5} for n in range(6)]
    orchestration = fleet.kick_off("sleepy", params, parallelism=2, tags={"team": "data"})
    with pytest.raises(WaitTimeout):
        orchestration.wait(timeout=0.3)
    snap = orchestration.cancel()
    assert snap.status is Status.CANCELLED
    assert snap.counts.cancelled == 6
    events = [e for _, e in fleet.events() if e.orchestration_id == orchestration.id]
    assert len(events) == 1
    assert events[0].status is Status.CANCELLED and events[0].tags == {"team": "data"}
    _, failures = orchestration.results(timeout=5)
    assert failures is not None and {f.status for f in failures} == {Status.CANCELLED}


def test_completion_event_is_published_once_with_counts_and_tags(fleet: JobFleet) -> None:
    params = [{"n": n, "fail": n == 2} for n in range(4)]
    orchestration = fleet.kick_off("maybe_fail", params, tags={"stage": "one"})
    orchestration.wait(timeout=60)
    events = [e for _, e in fleet.events() if e.orchestration_id == orchestration.id]
    assert len(events) == 1
    event = events[0]
    assert (event.status, event.total, event.succeeded, event.failed) == (Status.ERRORED, 4, 3, 1)
    assert event.tags == {"stage": "one"} and event.job_name == "maybe_fail"


def test_history_survives_a_new_process(fleet: JobFleet, home: Path) -> None:
    orchestration = fleet.kick_off("maybe_fail", [{"n": 1}])
    orchestration.wait(timeout=60)
    with JobFleet(home=home) as again:
        assert again.orchestration(orchestration.id).status().status is Status.COMPLETED
        assert [s.id for s in again.history()] == [orchestration.id]
        with pytest.raises(UnknownOrchestration):
            again.orchestration("not-an-id")


def test_a_launch_that_fails_ends_the_orchestration_instead_of_leaving_it_running(
    fleet: JobFleet,
) -> None:
    class Unreachable:
        launch_grace = 10.0

        def stop_tasks(self, execution: str, owners: object) -> bool:
            return False

        def launch(self, *args: object) -> str:
            raise OSError("no route to the compute API")

        def cancel(self, execution: str) -> None: ...

        def is_running(self, execution: str) -> bool:
            return False

    fleet.backend.launcher = Unreachable()
    with pytest.raises(LaunchFailed, match="no route to the compute API") as raised:
        fleet.kick_off("maybe_fail", [{"n": 1}, {"n": 2}])
    snap = fleet.orchestration(raised.value.orchestration_id).status()
    assert snap.status is Status.ERRORED and snap.counts.failed == 2
    events = [e for _, e in fleet.events() if e.orchestration_id == snap.id]
    assert [e.status for e in events] == [Status.ERRORED]


def test_transitions_after_a_stamp_show_each_instance_written_since(fleet: JobFleet) -> None:
    orchestration = fleet.kick_off("maybe_fail", [{"n": n} for n in range(4)])
    start = orchestration.change_stamp()
    orchestration.wait(timeout=60)
    ended = {i.index: i.status for i in orchestration.transitions(after=start)}
    assert ended == dict.fromkeys(range(4), Status.COMPLETED)
    assert orchestration.transitions(after=orchestration.change_stamp()) == []


def test_a_handle_reads_nothing_until_it_is_used(fleet: JobFleet) -> None:
    handle = fleet.handle("no-such-orchestration")
    with pytest.raises(UnknownOrchestration):
        handle.status()
    with pytest.raises(UnknownOrchestration):
        handle.status_and_results()
