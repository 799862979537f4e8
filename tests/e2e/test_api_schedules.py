"""Schedules over HTTP, end to end: a real `jobfleet serve`, real workers, real sockets,
and the fire route delivered as Cloud Scheduler delivers it (again, and at once)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from conftest import Server, ServerFactory, eventually

pytestmark = pytest.mark.slow

TOKEN = "schedules-token"
HEADER = "X-CloudScheduler-ScheduleTime"
# Never due while a test runs, so only the test's own deliveries fire it.
YEARLY = "0 6 1 1 *"
NO_SCHEDULER = ["--no-scheduler"]
ENDED = {"Completed", "Errored", "Cancelled"}


def call(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**server.headers(), **kwargs.pop("headers", {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=60, **kwargs)


def ok(reply: httpx.Response, status: int = 200) -> Any:
    assert reply.status_code == status, reply.text
    return reply.json() if reply.content else None


def create(server: Server, name: str, **fields: Any) -> Any:
    body = {"name": name, "job_name": "greet", "cron": YEARLY,
            "params": [{"name": "ada", "count": 1}], **fields}
    return ok(call(server, "POST", "/v1/schedules", json=body), 201)


def deliver(server: Server, name: str, scheduled: str | None) -> httpx.Response:
    headers = {} if scheduled is None else {HEADER: scheduled}
    return call(server, "POST", f"/v1/schedules/{name}/fire", headers=headers)


def runs_of(server: Server, name: str) -> list[Any]:
    listed = ok(call(server, "GET", "/v1/orchestrations",
                     params={"tag": f"schedule:{name}", "limit": 500}))
    runs: list[Any] = listed["orchestrations"]
    return runs


def status_of(server: Server, orchestration_id: str) -> str:
    status: str = ok(call(server, "GET", f"/v1/orchestrations/{orchestration_id}"))["status"]
    return status


@pytest.fixture
def server(serve: ServerFactory) -> Server:
    return serve(token=TOKEN, args=NO_SCHEDULER)


# -- declaring -------------------------------------------------------------------------------


def test_a_schedule_is_created_read_changed_paused_resumed_and_deleted(server: Server) -> None:
    created = call(server, "POST", "/v1/schedules", json={
        "name": "morning", "job_name": "greet", "cron": "0 6 * * 1-5",
        "timezone": "Europe/Paris", "params": [{"name": "ada", "count": 1}],
        "tags": {"team": "data"}, "description": "weekday greetings",
    })
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/v1/schedules/morning"

    listed = ok(call(server, "GET", "/v1/schedules"))["schedules"]
    assert [(s["name"], s["cron"], s["timezone"], s["paused"]) for s in listed] == [
        ("morning", "0 6 * * 1-5", "Europe/Paris", False)]
    assert listed[0]["next_fire_time"] is not None and listed[0]["last_fire"] is None

    one = ok(call(server, "GET", "/v1/schedules/morning"))
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in one["next_fire_times"]]
    paris = [t.astimezone(ZoneInfo("Europe/Paris")) for t in times]
    assert len(times) == 5 and times == sorted(times) and times[0].timestamp() > time.time()
    assert all((p.hour, p.minute) == (6, 0) and p.weekday() < 5 for p in paris)
    assert one["next_fire_time"] == one["next_fire_times"][0]
    assert (one["tags"], one["description"], one["origin"]) == (
        {"team": "data"}, "weekday greetings", "runtime")

    changed = ok(call(server, "PATCH", "/v1/schedules/morning",
                      json={"cron": "30 7 * * *", "timezone": "UTC", "retries": 2}))
    assert (changed["cron"], changed["timezone"], changed["retries"]) == ("30 7 * * *", "UTC", 2)
    assert changed["params"] == [{"name": "ada", "count": 1}]  # left out, so kept
    assert all(t.endswith("T07:30:00Z") for t in changed["next_fire_times"])
    upcoming = ok(call(server, "GET", "/v1/schedules/morning/next", params={"count": 12}))
    assert len(upcoming["times"]) == 12 and upcoming["times"][:5] == changed["next_fire_times"]

    assert ok(call(server, "POST", "/v1/schedules/morning/pause"))["paused"] is True
    assert ok(call(server, "GET", "/v1/schedules"))["schedules"][0]["paused"] is True
    assert ok(call(server, "POST", "/v1/schedules/morning/resume"))["paused"] is False
    assert ok(call(server, "PATCH", "/v1/schedules/morning", json={"paused": True}))["paused"]

    assert call(server, "DELETE", "/v1/schedules/morning").status_code == 204
    gone = call(server, "GET", "/v1/schedules/morning")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_schedule"
    assert ok(call(server, "GET", "/v1/schedules"))["schedules"] == []


GOOD = {"name": "bad", "job_name": "greet", "cron": YEARLY,
        "params": [{"name": "ada", "count": 1}]}


@pytest.mark.parametrize(("change", "named"), [
    ({"cron": "61 * * * *"}, "cron '61 * * * *'"),
    ({"cron": "every day"}, "five fields"),
    ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
    ({"job_name": "no_such_job"}, "unknown job 'no_such_job'"),
    ({"params": [{"name": "ada", "count": 1}, {"name": "bob", "count": -1}]},
     "parameter set 1: does not fit Greeting: count"),
    ({"params_provider": "greetings_when_ready"}, "not both"),
    ({"params": None}, "not both and not neither"),
    ({"params": None, "params_provider": "nobody"}, "unknown params provider 'nobody'"),
    ({"tags": {"schedule": "mine"}}, "tag 'schedule' is set by the schedule itself"),
    ({"name": "no spaces"}, "schedule name 'no spaces'"),
], ids=["cron-range", "cron-words", "zone", "job", "params", "both", "neither", "provider",
        "tag", "name"])
def test_a_refused_schedule_names_the_problem_and_nothing_is_created(
    server: Server, change: dict[str, Any], named: str
) -> None:
    reply = call(server, "POST", "/v1/schedules", json={**GOOD, **change})

    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_schedule" and named in error["message"]
    assert ok(call(server, "GET", "/v1/schedules"))["schedules"] == []


def test_a_name_taken_or_a_refused_change_leaves_the_schedule_as_it_was(
    server: Server,
) -> None:
    create(server, "taken")

    again = call(server, "POST", "/v1/schedules", json={**GOOD, "name": "taken"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "schedule_exists"
    refused = call(server, "PATCH", "/v1/schedules/taken", json={"timezone": "Nowhere/City"})
    assert refused.status_code == 422 and "Nowhere/City" in refused.json()["error"]["message"]
    nulled = call(server, "PATCH", "/v1/schedules/taken", json={"cron": None})
    assert nulled.status_code == 422 and "cron" in nulled.json()["error"]["message"]
    missing = call(server, "PATCH", "/v1/schedules/absent", json={"cron": YEARLY})
    assert missing.status_code == 404

    kept = ok(call(server, "GET", "/v1/schedules/taken"))
    assert (kept["cron"], kept["timezone"]) == (YEARLY, "UTC")


# -- the fire route ----------------------------------------------------------------------------


def test_the_same_scheduled_time_delivered_twice_starts_one_run(server: Server) -> None:
    create(server, "twice")

    first = ok(deliver(server, "twice", "2031-01-01T06:00:00Z"))
    second = ok(deliver(server, "twice", "2031-01-01T07:00:00+01:00"))  # the same instant

    assert (first["state"], first["duplicate"]) == ("started", False)
    assert (second["state"], second["duplicate"]) == ("started", True)
    assert second["orchestration_id"] == first["orchestration_id"] is not None
    assert second["fire"]["scheduled_time"] == "2031-01-01T06:00:00Z"
    runs = runs_of(server, "twice")
    assert [r["orchestration_id"] for r in runs] == [first["orchestration_id"]]
    assert runs[0]["tags"]["schedule_time"] == "2031-01-01T06:00:00Z"
    other = ok(deliver(server, "twice", "2031-01-02T06:00:00Z"))
    assert not other["duplicate"] and other["orchestration_id"] != first["orchestration_id"]


def test_ten_concurrent_deliveries_of_one_time_start_exactly_one_run(server: Server) -> None:
    create(server, "crowd", overlap="allow")

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: deliver(server, "crowd", "2032-03-04T05:06:07Z"),
                                range(10)))

    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) <= {200, 503}, [r.text for r in replies]
    answered = [r.json() for r in replies if r.status_code == 200]
    started = [a for a in answered if not a["duplicate"]]
    assert len(started) == 1 and started[0]["state"] == "started"
    assert {a["orchestration_id"] for a in answered} == {started[0]["orchestration_id"]}
    for busy in (r for r in replies if r.status_code == 503):
        assert busy.json()["error"]["code"] == "fire_in_progress"
        assert int(busy.headers["Retry-After"]) > 0
    # Cloud Scheduler retries the 503s: each retry answers with the one run.
    retried = ok(deliver(server, "crowd", "2032-03-04T05:06:07Z"))
    assert retried["duplicate"] and retried["orchestration_id"] == started[0]["orchestration_id"]
    assert [r["orchestration_id"] for r in runs_of(server, "crowd")] == [
        started[0]["orchestration_id"]]


@pytest.mark.parametrize(("header", "named"), [
    (None, "header is missing"),
    ("yesterday at six", "'yesterday at six' is not an RFC 3339 time"),
    ("2031-01-01T06:00:00", "with an offset"),
])
def test_a_delivery_without_a_usable_schedule_time_is_400_and_starts_nothing(
    server: Server, header: str | None, named: str
) -> None:
    create(server, "timed")

    reply = deliver(server, "timed", header)

    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_schedule_time"
    assert HEADER in error["message"] and named in error["message"]
    assert runs_of(server, "timed") == []
    assert ok(call(server, "GET", "/v1/schedules/timed"))["recent_fires"] == []


def test_a_delivery_for_an_unknown_schedule_is_404(server: Server) -> None:
    reply = deliver(server, "nobody", "2031-01-01T06:00:00Z")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_schedule"


def test_a_paused_schedule_skips_its_fire_and_starts_nothing(server: Server) -> None:
    create(server, "resting", paused=True)

    answer = ok(deliver(server, "resting", "2031-05-05T06:00:00Z"))

    assert (answer["state"], answer["orchestration_id"]) == ("skipped", None)
    assert "paused" in answer["fire"]["reason"]
    assert runs_of(server, "resting") == []
    last = ok(call(server, "GET", "/v1/schedules"))["schedules"][0]["last_fire"]
    assert (last["state"], last["scheduled_time"]) == ("skipped", "2031-05-05T06:00:00Z")


def test_a_fire_while_the_previous_run_is_unfinished_is_skipped_with_the_reason(
    server: Server,
) -> None:
    create(server, "slow", job_name="sleepy", params=[{"n": 1, "seconds": 60}])
    first = ok(deliver(server, "slow", "2031-06-01T06:00:00Z"))
    assert first["state"] == "started"

    second = ok(deliver(server, "slow", "2031-06-01T07:00:00Z"))

    assert (second["state"], second["duplicate"], second["orchestration_id"]) == (
        "skipped", False, None)
    assert f"the previous run {first['orchestration_id']} is unfinished" in (
        second["fire"]["reason"])
    assert [r["orchestration_id"] for r in runs_of(server, "slow")] == [first["orchestration_id"]]
    fires = ok(call(server, "GET", "/v1/schedules/slow"))["recent_fires"]
    assert [(f["scheduled_time"], f["state"], f["run_status"]) for f in fires] == [
        ("2031-06-01T07:00:00Z", "skipped", None),
        ("2031-06-01T06:00:00Z", "started", "InProgress"),
    ]
    ok(call(server, "POST", f"/v1/orchestrations/{first['orchestration_id']}/cancel"))


def test_a_failed_fire_is_a_500_that_a_retried_delivery_fires_again(
    server: Server, home: Path
) -> None:
    create(server, "provided", params=None, params_provider="greetings_when_ready")

    failed = deliver(server, "provided", "2031-07-01T06:00:00Z")

    assert failed.status_code == 500, failed.text
    error = failed.json()["error"]
    assert error["code"] == "fire_failed"
    assert "ConnectionError: the customer list is unavailable" in error["message"]
    assert "Traceback" not in failed.text
    [fire] = ok(call(server, "GET", "/v1/schedules/provided"))["recent_fires"]
    assert fire["state"] == "failed" and "customer list" in fire["reason"]
    assert runs_of(server, "provided") == []

    (home / "provider-ready").write_text("")
    retried = ok(deliver(server, "provided", "2031-07-01T06:00:00Z"))
    assert (retried["state"], retried["duplicate"]) == ("started", False)
    assert retried["fire"]["attempt"] == 2
    assert len(runs_of(server, "provided")) == 1


# -- a run now -------------------------------------------------------------------------------


def test_trigger_starts_a_run_now_even_when_paused(server: Server) -> None:
    create(server, "now", paused=True)

    reply = call(server, "POST", "/v1/schedules/now/trigger")

    answer = ok(reply, 201)
    assert (answer["state"], answer["duplicate"]) == ("started", False)
    assert answer["fire"]["trigger"] == "manual"
    run = answer["orchestration_id"]
    assert eventually(lambda: status_of(server, run) in ENDED, timeout=60)
    assert status_of(server, run) == "Completed"
    results = ok(call(server, "GET", f"/v1/orchestrations/{run}/results"))
    assert [s["result"]["text"] for s in results["successes"]] == ["hello ada"]
    [fire] = ok(call(server, "GET", "/v1/schedules/now"))["recent_fires"]
    assert (fire["orchestration_id"], fire["run_status"]) == (run, "Completed")
    assert fire["links"]["dashboard"] == f"/orchestrations/{run}"


# -- jobfleet serve's local scheduler ----------------------------------------------------------


def test_serve_fires_schedules_on_time_unless_told_not_to(
    serve: ServerFactory, tmp_path: Path
) -> None:
    firing = serve(token=TOKEN, scheduler=True)
    idle = serve(token=TOKEN, args=NO_SCHEDULER, env={"JOBFLEET_HOME": str(tmp_path / "idle")})
    for server in (firing, idle):
        create(server, "minutely", cron="* * * * *")
    created = time.time()

    def fired() -> bool:
        fires = ok(call(firing, "GET", "/v1/schedules/minutely"))["recent_fires"]
        return any(f["trigger"] == "cron" and f["state"] == "started" for f in fires)

    assert eventually(fired, timeout=75), firing.log.read_text()
    [fire] = ok(call(firing, "GET", "/v1/schedules/minutely"))["recent_fires"]
    scheduled = datetime.fromisoformat(fire["scheduled_time"].replace("Z", "+00:00"))
    assert scheduled.second == 0 and scheduled.timestamp() > created
    assert len(runs_of(firing, "minutely")) == 1
    # The same minute passed for the server told not to fire: nothing fired there.
    time.sleep(1)
    assert ok(call(idle, "GET", "/v1/schedules/minutely"))["recent_fires"] == []
    assert runs_of(idle, "minutely") == []
