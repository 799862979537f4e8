"""When schedules fire: cron in a time zone, across both daylight-saving changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from jobfleet.core.cron import Cron, iso, parse_iso
from jobfleet.errors import InvalidSchedule

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold).timestamp()


def local(instant: float, zone: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(instant, zone).strftime("%Y-%m-%d %H:%M %Z")


def test_a_daily_cron_fires_at_its_local_time_in_its_zone() -> None:
    cron = Cron("0 2 * * *", "Europe/Berlin")
    times = cron.next_times(at("2026-06-01T12:00"), 2)
    assert [local(t) for t in times] == ["2026-06-02 02:00 CEST", "2026-06-03 02:00 CEST"]
    assert iso(times[0]) == "2026-06-02T00:00:00Z"


def test_spring_forward_fires_a_skipped_time_once_when_the_clock_jumps_past_it() -> None:
    # 2026-03-29: Berlin clocks go from 02:00 CET straight to 03:00 CEST.
    cron = Cron("30 2 * * *", "Europe/Berlin")
    times = cron.next_times(at("2026-03-27T12:00"), 3)
    assert [local(t) for t in times] == [
        "2026-03-28 02:30 CET", "2026-03-29 03:30 CEST", "2026-03-30 02:30 CEST",
    ]


def test_fall_back_fires_a_repeated_time_once() -> None:
    # 2026-10-25: Berlin clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    cron = Cron("30 2 * * *", "Europe/Berlin")
    times = cron.next_times(at("2026-10-24T12:00"), 3)
    assert [local(t) for t in times] == [
        "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET", "2026-10-27 02:30 CET",
    ]


def test_a_start_inside_the_repeated_hour_does_not_fire_its_time_again() -> None:
    cron = Cron("30 2 * * *", "Europe/Berlin")
    second_0215 = at("2026-10-25T02:15", fold=1)  # after the first 02:30 has passed
    assert [local(t) for t in cron.next_times(second_0215, 1)] == ["2026-10-26 02:30 CET"]


def test_an_hourly_cron_fires_every_real_hour_across_both_changes() -> None:
    hourly = Cron("0 * * * *", "Europe/Berlin")
    autumn = hourly.between(at("2026-10-25T00:30"), at("2026-10-25T04:30"))
    assert [local(t) for t in autumn] == [
        "2026-10-25 01:00 CEST", "2026-10-25 02:00 CEST", "2026-10-25 02:00 CET",
        "2026-10-25 03:00 CET", "2026-10-25 04:00 CET",
    ]
    assert all(b - a == 3600 for a, b in itertools.pairwise(autumn))
    spring = hourly.between(at("2026-03-29T00:30"), at("2026-03-29T04:30"))
    assert [local(t) for t in spring] == [
        "2026-03-29 01:00 CET", "2026-03-29 03:00 CEST", "2026-03-29 04:00 CEST",
    ]


def test_a_skipped_time_that_lands_on_another_fire_is_fired_once() -> None:
    cron = Cron("30 2,3 * * *", "Europe/Berlin")
    times = cron.between(at("2026-03-29T00:00"), at("2026-03-29T12:00"))
    assert [local(t) for t in times] == ["2026-03-29 03:30 CEST"]


def test_new_york_changes_too() -> None:
    ny = ZoneInfo("America/New_York")
    cron = Cron("30 1 * * *", "America/New_York")  # 01:30 repeats on 2026-11-01
    times = cron.next_times(at("2026-10-31T12:00", ny), 2)
    assert [local(t, ny) for t in times] == ["2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"]


def test_utc_is_the_default_zone() -> None:
    cron = Cron("15 * * * *")
    assert iso(cron.next_times(parse_iso("2026-01-01T00:20:00Z"), 1)[0]) == "2026-01-01T01:15:00Z"


@pytest.mark.parametrize(
    ("expression", "zone", "names"),
    [
        ("61 * * * *", "UTC", "not a valid unix-cron"),
        ("* * * *", "UTC", "five fields"),
        ("0 0 * * * *", "UTC", "five fields"),
        ("0 0 30 2 *", "UTC", "no date that exists"),
        ("0 0 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("0 0 * * *", "", "IANA name"),
        ("0 0 * * *", "Europe/" + "x" * 300, "unknown time zone"),
    ],
)
def test_bad_timing_is_refused_naming_the_problem(expression: str, zone: str, names: str) -> None:
    with pytest.raises(InvalidSchedule, match=names):
        Cron(expression, zone)


def test_iso_round_trips_and_refuses_a_time_without_offset() -> None:
    moment = datetime(2026, 11, 29, 5, 0, tzinfo=UTC).timestamp()
    assert parse_iso(iso(moment)) == moment
    assert parse_iso("2026-11-29T06:00:00+01:00") == moment
    with pytest.raises(ValueError, match="no offset"):
        parse_iso("2026-11-29T05:00:00")
