"""The Store port's schedule half (core/ports.py), run against every Store adapter:
schedules, and fires keyed by (schedule, scheduled time) that one delivery claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import sample_jobs  # noqa: F401  (registers `greet`, the job of the schedules here)
from jobfleet.core.ports import Store
from jobfleet.core.schedules import (
    CatchUp,
    Fire,
    FireState,
    Origin,
    Overlap,
    Schedule,
    Trigger,
    build,
)
from jobfleet.errors import ScheduleExists, UnknownSchedule

from .conftest import StoreFactory

T0 = 1_700_000_000.0


# -- schedules and their fires -----------------------------------------------------------

EVERY_FIVE = "*/5 * * * *"
HOLD = 60.0
CLAIM_IN_A_PROCESS = """
import json, sys, time
from pathlib import Path
from integration.conftest import open_store
from jobfleet.core.schedules import Fire
kind, address, fire, go = sys.argv[1:]
store = open_store(kind, address)
Path(go + "." + str(json.loads(fire)["reason"])).touch()  # ready
while not Path(go).exists():
    time.sleep(0.002)
won, stands = store.claim_fire(Fire.from_json(json.loads(fire)), now=%r)
print(json.dumps({"won": won, "fire": stands.to_json()}))
store.close()
"""


def a_schedule(name: str, **fields: Any) -> Schedule:
    """A valid schedule of the sample job `greet` (tests/sample_jobs.py)."""
    fields = {"job_name": "greet", "cron": EVERY_FIVE,
              "params": [{"name": "ada", "count": 1}], **fields}
    return build(name=name, **fields)


def fire_at(
    scheduled_at: float, *, schedule: str = "nightly", by: str = "", fired_at: float = T0
) -> Fire:
    """What a delivery asks to claim; `by` (its reason) tells claimants apart."""
    return Fire(
        schedule=schedule, scheduled_at=scheduled_at, trigger=Trigger.CRON,
        state=FireState.FIRING, attempt=0, fired_at=fired_at, hold_until=fired_at + HOLD,
        reason=by,
    )


class TestScheduleContract:
    """Schedules, and fires keyed by (schedule, scheduled time) that one delivery claims."""

    def test_creating_a_schedule_twice_is_refused(self, store: Store) -> None:
        first = a_schedule("nightly", description="first")
        store.save_schedule(first, create=True)
        with pytest.raises(ScheduleExists, match="nightly"):
            store.save_schedule(a_schedule("nightly", description="second"), create=True)
        assert store.get_schedule("nightly") == first

    def test_saving_without_create_inserts_or_replaces(self, store: Store) -> None:
        fixed = a_schedule("hourly", cron="0 * * * *", tags={"team": "data"})
        store.save_schedule(fixed, create=False)
        assert store.get_schedule("hourly") == fixed
        changed = replace(
            fixed, params=[{"name": "bo", "count": 2}, {"name": "cy", "count": 3}],
            timezone="Europe/Paris", paused=True, overlap=Overlap.ALLOW,
            catch_up=CatchUp.ALL, retries=2, timeout=30.0, updated_at=T0 + 5,
        )
        store.save_schedule(changed, create=False)
        assert store.get_schedule("hourly") == changed
        assert store.list_schedules() == [changed]

    def test_a_provider_schedule_round_trips(self, store: Store) -> None:
        provided = Schedule(
            name="by-provider", job_name="greet", cron=EVERY_FIVE, params_provider="mod:fn",
            parallelism=4, origin=Origin.CODE, created_at=T0, updated_at=T0,
        )
        store.save_schedule(provided, create=True)
        assert store.get_schedule("by-provider") == provided

    def test_an_unknown_schedule_is_reported_by_name(self, store: Store) -> None:
        with pytest.raises(UnknownSchedule, match="nowhere"):
            store.get_schedule("nowhere")

    def test_schedules_are_listed_by_name(self, store: Store) -> None:
        for name in ("m-mid", "Z-upper", "a-first", "zz-last", "b_2"):
            store.save_schedule(a_schedule(name), create=True)
        assert [s.name for s in store.list_schedules()] == [
            "Z-upper", "a-first", "b_2", "m-mid", "zz-last"
        ]

    def test_delete_says_whether_there_was_one_and_keeps_the_fires(self, store: Store) -> None:
        store.save_schedule(a_schedule("nightly"), create=True)
        store.save_schedule(a_schedule("kept"), create=True)
        won, claimed = store.claim_fire(fire_at(T0), now=T0)
        assert won
        assert store.delete_schedule("nightly") is True
        assert store.delete_schedule("nightly") is False
        with pytest.raises(UnknownSchedule):
            store.get_schedule("nightly")
        assert [s.name for s in store.list_schedules()] == ["kept"]
        assert store.get_fire("nightly", T0) == claimed  # history outlives the schedule
        assert store.list_fires("nightly") == [claimed]
        store.save_schedule(a_schedule("nightly"), create=True)  # the name is free again

    def test_the_first_claim_of_a_time_wins_and_the_second_sees_it(self, store: Store) -> None:
        won, claimed = store.claim_fire(fire_at(T0, by="first"), now=T0)
        assert won
        assert (claimed.state, claimed.attempt, claimed.reason) == (
            FireState.FIRING, 1, "first"
        )
        assert store.get_fire("nightly", T0) == claimed
        won, stands = store.claim_fire(fire_at(T0, by="second", fired_at=T0 + 1), now=T0 + 1)
        assert not won
        assert stands == claimed
        assert store.get_fire("nightly", T0) == claimed

    def test_claims_of_other_times_or_schedules_are_independent(self, store: Store) -> None:
        assert store.claim_fire(fire_at(T0), now=T0)[0]
        assert store.claim_fire(fire_at(T0 + 300), now=T0)[0]
        assert store.claim_fire(fire_at(T0, schedule="other"), now=T0)[0]
        assert store.claim_fire(fire_at(T0 + 0.0004, by="manual"), now=T0)[0]  # sub-ms apart
        assert store.get_fire("nightly", T0 + 0.0004) is not None
        assert store.get_fire("nightly", T0 + 1) is None
        assert store.get_fire("nowhere", T0) is None

    def test_finish_records_the_outcome_of_the_attempt_held(self, store: Store) -> None:
        _, claimed = store.claim_fire(fire_at(T0), now=T0)
        started = replace(claimed, state=FireState.STARTED, orchestration_id="orch-1")
        assert not store.finish_fire(replace(started, attempt=2))  # not the attempt held
        assert store.get_fire("nightly", T0) == claimed
        assert store.finish_fire(started)
        assert store.get_fire("nightly", T0) == started
        assert not store.finish_fire(replace(started, state=FireState.SKIPPED))  # finished
        assert store.get_fire("nightly", T0) == started
        assert not store.finish_fire(fire_at(T0 + 300))  # never claimed
        assert store.get_fire("nightly", T0 + 300) is None

    def test_a_finished_fire_is_never_claimed_again(self, store: Store) -> None:
        for n, state in enumerate((FireState.STARTED, FireState.SKIPPED)):
            at = T0 + 300 * n
            _, claimed = store.claim_fire(fire_at(at), now=T0)
            store.finish_fire(replace(claimed, state=state, orchestration_id=None))
            won, stands = store.claim_fire(fire_at(at), now=T0 + 10 * HOLD)
            assert not won
            assert (stands.state, stands.attempt) == (state, 1)

    def test_a_failed_fire_is_claimed_again(self, store: Store) -> None:
        _, claimed = store.claim_fire(fire_at(T0), now=T0)
        failed = replace(claimed, state=FireState.FAILED, reason="provider raised")
        assert store.finish_fire(failed)
        won, again = store.claim_fire(fire_at(T0, by="retry", fired_at=T0 + 5), now=T0 + 5)
        assert won
        assert (again.state, again.attempt, again.reason, again.fired_at) == (
            FireState.FIRING, 2, "retry", T0 + 5
        )
        assert store.get_fire("nightly", T0) == again

    def test_a_lapsed_hold_is_taken_over_and_its_holder_records_nothing(
        self, store: Store
    ) -> None:
        _, old = store.claim_fire(fire_at(T0, by="old"), now=T0)
        won, _ = store.claim_fire(fire_at(T0, by="early"), now=old.hold_until - 1)
        assert not won  # its holder is presumed alive until its hold lapses
        won, new = store.claim_fire(
            fire_at(T0, by="new", fired_at=old.hold_until), now=old.hold_until
        )
        assert won
        assert (new.attempt, new.reason) == (2, "new")
        late = replace(old, state=FireState.STARTED, orchestration_id="orch-old")
        assert not store.finish_fire(late)
        assert store.get_fire("nightly", T0) == new
        done_new = replace(new, state=FireState.STARTED, orchestration_id="orch-new")
        assert store.finish_fire(done_new)
        assert store.get_fire("nightly", T0) == done_new

    def test_fires_are_listed_newest_scheduled_first(self, store: Store) -> None:
        times = [T0 + 300 * k for k in (3, 0, 7, 1, 5)]
        for at in times:
            store.claim_fire(fire_at(at), now=T0)
        store.claim_fire(fire_at(T0 + 9999, schedule="other"), now=T0)
        newest_first = sorted(times, reverse=True)
        assert [f.scheduled_at for f in store.list_fires("nightly")] == newest_first
        assert [f.scheduled_at for f in store.list_fires("nightly", limit=2)] == newest_first[:2]
        assert store.list_fires("nightly", limit=0) == []
        assert store.list_fires("nowhere") == []

    @pytest.mark.parametrize("before", [None, FireState.FAILED])
    def test_concurrent_claims_of_one_time_have_one_winner(
        self, store: Store, store_factory: StoreFactory, before: FireState | None
    ) -> None:
        """Of 16 claimants, one wins: of a time never claimed, or of a failed one."""
        if before is not None:
            _, claimed = store.claim_fire(fire_at(T0), now=T0)
            store.finish_fire(replace(claimed, state=before))
        claimants = 16
        stores = [store_factory.open() for _ in range(claimants)]
        barrier = threading.Barrier(claimants, timeout=30)
        answers: dict[str, tuple[bool, Fire]] = {}
        errors: list[BaseException] = []

        def claim(own: Store, by: str) -> None:
            try:
                barrier.wait()
                answers[by] = own.claim_fire(fire_at(T0, by=by), now=T0 + 1)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=claim, args=(s, f"thread-{i}")) for i, s in enumerate(stores)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert errors == []
        assert_one_winner(store, answers, attempt=1 if before is None else 2)

    def test_concurrent_processes_claim_one_time_once(
        self, store: Store, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        claimants = 4
        go = tmp_path / "go"
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        )}
        processes = {
            f"process-{i}": subprocess.Popen(
                [sys.executable, "-c", CLAIM_IN_A_PROCESS % T0, store_factory.name,
                 store_factory.address, json.dumps(fire_at(T0, by=f"process-{i}").to_json()),
                 str(go)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            )
            for i in range(claimants)
        }
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.{by}").exists() for by in processes):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                for p in processes.values():
                    p.kill()
                outputs = [p.communicate() for p in processes.values()]
                pytest.fail(f"the claimants did not start: {outputs}")
            time.sleep(0.01)
        go.touch()  # all at once
        answers = {}
        for by, process in processes.items():
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            answer = json.loads(out)
            answers[by] = (answer["won"], Fire.from_json(answer["fire"]))
        assert_one_winner(store, answers)


def assert_one_winner(
    store: Store, answers: dict[str, tuple[bool, Fire]], *, attempt: int = 1
) -> None:
    """Exactly one claimant won; every other one was told the winner's fire."""
    winners = [by for by, (won, _) in answers.items() if won]
    assert len(winners) == 1, winners
    stored = store.get_fire("nightly", T0)
    assert stored is not None
    assert (stored.reason, stored.attempt, stored.state) == (
        winners[0], attempt, FireState.FIRING
    )
    assert all(fire == stored for _, fire in answers.values())
