"""The rules of schedules: declaration checks, what a scheduler owes (catch-up), who may
claim a fire."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from jobfleet import job
from jobfleet.core import schedules
from jobfleet.core.cron import parse_iso
from jobfleet.core.schedules import (
    MISSED_AFTER,
    CatchUp,
    Fire,
    FireState,
    Trigger,
    build,
    claimed_fire,
    due_fires,
    may_claim,
    may_finish,
)
from jobfleet.errors import InvalidSchedule


class Customer(BaseModel):
    customer: int


T0 = parse_iso("2026-11-29T10:00:00Z")


@pytest.fixture(autouse=True)
def jobs(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedules, "_PROVIDERS", {})
    monkeypatch.setattr(schedules, "_DECLARED", {})

    @job("report")
    def report(params: dict[str, Any]) -> None: ...

    @job("typed")
    def typed(params: Customer) -> None: ...


def hourly(**fields: Any) -> schedules.Schedule:
    return build(**{"name": "h", "job_name": "report", "cron": "0 * * * *",
                    "params": [{}], **fields})


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"name": "has space"}, "schedule name 'has space'"),
        ({"name": ""}, "schedule name ''"),
        ({"job_name": "nope"}, "unknown job 'nope'"),
        ({"params": None}, "either params"),
        ({"params_provider": "x"}, "either params"),
        ({"params": []}, "non-empty list"),
        ({"job_name": "typed", "params": [{"customer": "seven"}]}, "parameter set 0"),
        ({"params": None, "params_provider": "missing"}, "unknown params provider 'missing'"),
        ({"tags": {"schedule": "x"}}, "set by the schedule itself"),
        ({"parallelism": 0}, "parallelism"),
        ({"retries": -1}, "retries"),
        ({"overlap": "sometimes"}, "overlap must be one of skip, allow, cancel_previous"),
        ({"catch_up": "most"}, "catch_up must be one of latest, all, none"),
        ({"cron": "0 25 * * *"}, "not a valid unix-cron"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_problem(
    fields: dict[str, Any], names: str
) -> None:
    with pytest.raises(InvalidSchedule, match=names):
        hourly(**fields)


def test_declaring_in_code_registers_the_schedule_and_its_provider() -> None:
    def every_customer() -> list[dict[str, int]]:
        return [{"customer": n} for n in range(3)]

    declared = schedules.schedule("nightly", job="typed", cron="0 2 * * *",
                                  timezone="Europe/Berlin", params=every_customer)
    assert schedules.declared_schedules() == [declared]
    assert declared.origin is schedules.Origin.CODE
    assert list(schedules.parameter_sets(declared)) == [{"customer": n} for n in range(3)]


def test_on_time_fires_are_owed_as_cron_fires() -> None:
    owed = due_fires(hourly(), after=T0 - 1, now=T0 + 2)
    assert owed == [(T0, Trigger.CRON)]


def test_catch_up_latest_runs_the_latest_missed_fire_once() -> None:
    owed = due_fires(hourly(), after=T0 - 1, now=T0 + 5 * 3600 + 30 * 60)
    assert owed == [(T0 + 5 * 3600, Trigger.CATCH_UP)]


def test_catch_up_latest_runs_nothing_missed_when_a_fire_is_on_time() -> None:
    owed = due_fires(hourly(), after=T0 - 1, now=T0 + 3 * 3600 + 1)
    assert owed == [(T0 + 3 * 3600, Trigger.CRON)]


def test_catch_up_all_and_none() -> None:
    now = T0 + 3 * 3600 - 1
    assert due_fires(hourly(catch_up=CatchUp.ALL), after=T0 - 1, now=now) == [
        (T0, Trigger.CATCH_UP), (T0 + 3600, Trigger.CATCH_UP), (T0 + 7200, Trigger.CATCH_UP),
    ]
    assert due_fires(hourly(catch_up=CatchUp.NONE), after=T0 - 1, now=now) == []


def test_a_fire_is_late_only_past_the_missed_threshold() -> None:
    assert due_fires(hourly(catch_up=CatchUp.NONE), after=T0 - 1, now=T0 + MISSED_AFTER) == [
        (T0, Trigger.CRON)
    ]


def fire(state: FireState, hold_until: float = 0.0) -> Fire:
    return Fire(schedule="h", scheduled_at=T0, trigger=Trigger.CRON, state=state,
                attempt=1, fired_at=T0, hold_until=hold_until)


@pytest.mark.parametrize(
    ("existing", "claimable"),
    [
        (None, True),
        (fire(FireState.STARTED), False),
        (fire(FireState.SKIPPED), False),
        (fire(FireState.FAILED), True),
        (fire(FireState.FIRING, hold_until=T0 + 10), False),
        (fire(FireState.FIRING, hold_until=T0 - 10), True),
    ],
)
def test_who_may_claim_a_fire(existing: Fire | None, claimable: bool) -> None:
    assert may_claim(existing, now=T0) is claimable


def test_a_reclaim_takes_the_next_attempt_and_only_its_holder_records() -> None:
    first = claimed_fire(fire(FireState.FIRING), None)
    assert (first.state, first.attempt) == (FireState.FIRING, 1)
    lapsed = fire(FireState.FIRING, hold_until=T0 - 10)
    second = claimed_fire(fire(FireState.FIRING), lapsed)
    assert second.attempt == 2
    assert may_finish(second, replace(second, state=FireState.STARTED))
    assert not may_finish(second, replace(lapsed, state=FireState.STARTED))  # replaced
    assert not may_finish(replace(second, state=FireState.STARTED), second)  # recorded
    assert not may_finish(None, second)


def test_same_definition_ignores_times_and_pausing() -> None:
    a = hourly(created_at=1.0, updated_at=2.0)
    b = hourly(created_at=5.0, updated_at=6.0, paused=True)
    assert a.same_definition(b)
    assert not a.same_definition(hourly(cron="5 * * * *"))


def test_two_different_providers_of_one_name_are_refused() -> None:
    def make() -> Any:
        def every_customer() -> list[dict[str, int]]:
            return [{"customer": 1}]
        return every_customer

    first = make()
    schedules.schedule("a", job="typed", cron="0 2 * * *", params=first)
    schedules.schedule("b", job="typed", cron="0 2 * * *", params=first)  # the same: fine
    exec_globals: dict[str, Any] = {"__name__": first.__module__}
    exec(  # the same qualified name, declared elsewhere
        "def every_customer():\n    return []\n", exec_globals)
    other = exec_globals["every_customer"]
    other.__qualname__ = first.__qualname__
    with pytest.raises(InvalidSchedule, match="two different params providers"):
        schedules.schedule("c", job="typed", cron="0 2 * * *", params=other)
