"""The schedule commands of the real `jobfleet`, and `jobfleet scheduler` as real processes.

The schedulers run on a fast clock (`--clock-speed 60`: a minute a second) from an
origin the test chooses, so that the test can say which scheduled times it expects.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conftest import Cli, eventually
from jobfleet.core.cron import iso

pytestmark = pytest.mark.slow

SPEED = 60.0
# The fast clock runs from an origin a little ahead: until then it reads earlier than the
# schedules' creation, so a scheduler still starting owes nothing and misses nothing.
ORIGIN_AHEAD = 2.0


def ok(cli: Cli, *args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return json.loads(done.stdout)


def params_file(tmp_path: Path, data: object = ({"name": "ada", "count": 1},)) -> str:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(list(data)))  # type: ignore[call-overload]
    return str(path)


def test_a_schedule_from_creation_to_deletion(cli: Cli, tmp_path: Path) -> None:
    made = ok(cli, "schedule", "create", "morning", "--job", "greet", "--cron", "30 9 * * *",
              "--timezone", "Europe/Berlin", "--params", params_file(tmp_path),
              "--tag", "team=data", "--retries", "1", "--description", "hello")
    assert made["name"] == "morning" and made["job_name"] == "greet"
    assert (made["cron"], made["timezone"], made["origin"]) == ("30 9 * * *", "Europe/Berlin",
                                                                 "runtime")
    assert made["params"] == [{"name": "ada", "count": 1}] and made["params_provider"] is None
    assert (made["tags"], made["retries"], made["paused"]) == ({"team": "data"}, 1, False)
    assert made["next_fire_at"] > time.time()

    assert [s["name"] for s in ok(cli, "schedule", "list")] == ["morning"]

    shown = ok(cli, "schedule", "show", "morning")
    assert shown["schedule"]["name"] == "morning" and shown["fires"] == []
    assert len(shown["next"]) == 5
    berlin = ZoneInfo("Europe/Berlin")
    for upcoming in shown["next"]:
        local = datetime.fromisoformat(upcoming["local"])
        assert (local.hour, local.minute) == (9, 30)  # the wall clock of the zone, not UTC
        assert local.utcoffset() == datetime.fromtimestamp(upcoming["at"], berlin).utcoffset()
        assert upcoming["utc"] == iso(upcoming["at"])
    assert shown["next"][0]["at"] == made["next_fire_at"]
    text = cli("schedule", "show", "morning").stdout
    assert "30 9 * * *  in Europe/Berlin" in text and shown["next"][0]["utc"] in text

    upcoming = ok(cli, "schedule", "next", "morning", "--count", "3")
    assert [t["at"] for t in upcoming] == [t["at"] for t in shown["next"][:3]]
    assert all(b["at"] - a["at"] >= 23 * 3600 for a, b in itertools.pairwise(upcoming))

    paused = ok(cli, "schedule", "pause", "morning")
    assert paused["paused"] is True and paused["next_fire_at"] is None
    assert ok(cli, "schedule", "list")[0]["paused"] is True
    assert ok(cli, "schedule", "resume", "morning")["paused"] is False

    triggered = ok(cli, "schedule", "trigger", "morning")
    run_id = triggered["orchestration_id"]
    assert triggered["trigger"] == "manual" and triggered["state"] == "started"
    plain = cli("schedule", "trigger", "morning")  # while the first run may still be going
    assert plain.returncode in (0, 1), plain.stderr
    results = ok(cli, "results", run_id)
    assert results["status"] == "Completed"
    assert results["successes"][0]["result"]["text"] == "hello ada"
    run = ok(cli, "status", run_id)
    assert run["tags"]["schedule"] == "morning" and run["tags"]["team"] == "data"

    history = ok(cli, "schedule", "history", "morning")
    first = [f for f in history if f["orchestration_id"] == run_id]
    assert len(first) == 1 and first[0]["run_status"] == "Completed"
    assert first[0]["trigger"] == "manual"
    assert run_id in cli("schedule", "show", "morning").stdout

    assert ok(cli, "schedule", "delete", "morning") == {"deleted": "morning"}
    assert ok(cli, "schedule", "list") == []
    gone = cli("schedule", "show", "morning")
    assert gone.returncode == 2 and "no schedule 'morning'" in gone.stderr
    assert ok(cli, "status", run_id)["status"] == "Completed"  # its runs stay


def test_trigger_prints_the_run_id(cli: Cli, tmp_path: Path) -> None:
    ok(cli, "schedule", "create", "now", "--job", "greet", "--cron", "0 0 1 1 *",
       "--params", params_file(tmp_path), "--paused")
    done = cli("schedule", "trigger", "now")  # a paused schedule still runs when asked
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert ok(cli, "results", run_id)["status"] == "Completed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 2 * *"], "must have five fields"),
        (["--cron", "0 25 * * *"], "not a valid unix-cron expression"),
        (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--cron", "0 2 * * *", "--job", "no_such_job"], "unknown job 'no_such_job'"),
        (["--cron", "0 2 * * *", "--params-provider", "x"], "not allowed with argument --params"),
        (["--cron", "0 2 * * *", "--bad-params"], "parameter set 1: does not fit Greeting"),
        (["--cron", "0 2 * * *", "--no-params"], "needs either params"),
        (["--cron", "0 2 * * *", "--tag", "schedule=x"], "tag 'schedule' is set by the schedule"),
    ],
)
def test_bad_input_exits_2_names_the_problem_and_creates_nothing(
    cli: Cli, tmp_path: Path, args: list[str], message: str
) -> None:
    job = ["--job", "greet"] if "--job" not in args else []
    source = ["--params", params_file(tmp_path)]
    if "--bad-params" in args:
        args.remove("--bad-params")
        source = ["--params", params_file(tmp_path, [{"name": "a", "count": 1},
                                                     {"name": "b", "count": -1}])]
    if "--no-params" in args:
        args.remove("--no-params")
        source = []
    done = cli("schedule", "create", "broken", *job, *args, *source)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stdout == ""
    assert ok(cli, "schedule", "list") == []


def write_declarations(path: Path, *schedules: tuple[str, str]) -> str:
    lines = [
        "from jobfleet import job, schedule",
        "",
        "@job('tidy', retries=0)",
        "def tidy(params: dict) -> int:",
        "    return 0",
        "",
        "def rooms() -> list[dict]:",
        "    return [{'room': r} for r in ('a', 'b')]",
        "",
    ]
    for name, cron in schedules:
        lines.append(f"schedule({name!r}, job='tidy', cron={cron!r}, params=rooms)")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_sync_plans_creates_updates_keeps_and_prunes(cli: Cli, tmp_path: Path) -> None:
    module = tmp_path / "declared.py"
    write_declarations(module, ("tidy_daily", "0 6 * * *"), ("tidy_weekly", "0 7 * * 1"))
    sync = ["schedules", "sync", "--jobs-module", str(module)]

    dry = cli(*sync, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    assert "create     tidy_daily" in dry.stdout and "create     tidy_weekly" in dry.stdout
    assert ok(cli, *sync, "--dry-run")["create"] == ["tidy_daily", "tidy_weekly"]
    assert ok(cli, "schedule", "list") == []  # a dry run changes nothing

    created = ok(cli, *sync)
    assert (created["create"], created["dry_run"]) == (["tidy_daily", "tidy_weekly"], False)
    deployed = {s["name"]: s for s in ok(cli, "schedule", "list")}
    assert set(deployed) == {"tidy_daily", "tidy_weekly"}
    assert deployed["tidy_daily"]["origin"] == "code"
    assert deployed["tidy_daily"]["params_provider"].endswith(":rooms")

    again = ok(cli, *sync)
    assert again["unchanged"] == ["tidy_daily", "tidy_weekly"]
    assert again["create"] == again["update"] == again["delete"] == []

    ok(cli, "schedule", "create", "adhoc", "--job", "greet", "--cron", "0 8 * * *",
       "--params", params_file(tmp_path))
    ok(cli, "schedule", "pause", "tidy_daily")
    write_declarations(module, ("tidy_daily", "15 6 * * *"), ("tidy_weekly", "0 7 * * 1"))
    updated = cli(*sync)
    assert updated.returncode == 0, updated.stderr
    assert "update     tidy_daily" in updated.stdout and "unchanged  tidy_weekly" in updated.stdout
    daily = ok(cli, "schedule", "show", "tidy_daily")["schedule"]
    assert daily["cron"] == "15 6 * * *"
    assert daily["paused"] is True  # a deploy keeps what an operator paused

    write_declarations(module, ("tidy_daily", "15 6 * * *"))
    kept = ok(cli, *sync)
    assert kept["kept"] == ["tidy_weekly"] and kept["delete"] == []
    assert "tidy_weekly" in {s["name"] for s in ok(cli, "schedule", "list")}
    assert "kept" in cli(*sync, "--dry-run").stdout

    pruned = ok(cli, *sync, "--prune")
    assert pruned["delete"] == ["tidy_weekly"]
    assert {s["name"] for s in ok(cli, "schedule", "list")} == {"tidy_daily", "adhoc"}
    # A schedule created at run time is never sync's to delete.
    assert "adhoc" not in pruned["delete"] + pruned["kept"]

    write_declarations(module)  # nothing declared: --prune would delete everything
    refused = cli(*sync, "--prune")
    assert refused.returncode == 2 and "no schedule is declared" in refused.stderr
    assert {s["name"] for s in ok(cli, "schedule", "list")} == {"tidy_daily", "adhoc"}


def test_the_declared_nightly_report_syncs_with_its_params_provider(
    cli: Cli, tmp_path: Path
) -> None:
    plan = ok(cli, "schedules", "sync", "--jobs-module", "scheduled_jobs")
    assert plan["create"] == ["nightly_report"]
    nightly = ok(cli, "schedule", "show", "nightly_report")
    assert nightly["schedule"]["params_provider"] == "scheduled_jobs:every_customer"
    assert all(datetime.fromisoformat(t["local"]).hour == 2 for t in nightly["next"])
    run_id = ok(cli, "schedule", "trigger", "nightly_report",
                "--jobs-module", "scheduled_jobs")["orchestration_id"]
    results = ok(cli, "results", run_id)
    assert sorted(s["params"]["customer"] for s in results["successes"]) == [
        "acme", "globex", "initech"]


# -- the scheduler as real processes --------------------------------------------------


class Scheduler:
    def __init__(self, tmp_path: Path, origin: float, name: str) -> None:
        self.log = tmp_path / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobfleet", "scheduler", "--clock-speed", str(SPEED),
                 "--clock-origin", repr(origin)],
                stdout=out, stderr=subprocess.STDOUT,
            )
        assert eventually(lambda: "firing the schedules" in self.log.read_text()
                          or self.process.poll() is not None, timeout=30), self.output
        assert self.process.poll() is None, self.output

    @property
    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def schedulers(tmp_path: Path) -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def fake_now(origin: float) -> float:
    return origin + (time.time() - origin) * SPEED


def scheduled_runs(cli: Cli, name: str) -> list[dict[str, Any]]:
    runs = ok(cli, "list", "--limit", "500")
    return [r for r in runs if r["tags"].get("schedule") == name]


def all_done(cli: Cli, name: str) -> bool:
    return all(r["status"] == "Completed" for r in scheduled_runs(cli, name))


def test_the_scheduler_fires_on_time_and_stops_cleanly(
    cli: Cli, tmp_path: Path, schedulers: list[Scheduler]
) -> None:
    ok(cli, "schedule", "create", "every_minute", "--job", "greet", "--cron", "* * * * *",
       "--params", params_file(tmp_path), "--parallelism", "1", "--overlap", "allow")
    origin = time.time() + ORIGIN_AHEAD
    schedulers.append(one := Scheduler(tmp_path, origin, "scheduler"))
    assert eventually(lambda: len(scheduled_runs(cli, "every_minute")) >= 4, timeout=30), \
        one.output
    assert one.stop() == 0, one.output
    assert "jobfleet scheduler: stopped" in one.output
    assert "schedule every_minute fired (cron): started" in one.output

    assert eventually(lambda: all_done(cli, "every_minute"), timeout=60)
    runs = scheduled_runs(cli, "every_minute")
    times = sorted(datetime.fromisoformat(r["tags"]["schedule_time"]).timestamp() for r in runs)
    assert all(t % 60 == 0 for t in times)  # whole minutes of the fast clock
    assert all(b - a == 60 for a, b in itertools.pairwise(times)), times  # no gap
    history = ok(cli, "schedule", "history", "every_minute", "--limit", "100")
    fired = [f for f in history if f["state"] == "started"]
    assert {f["trigger"] for f in fired} == {"cron"}
    assert {f["orchestration_id"] for f in fired} == {r["orchestration_id"] for r in runs}
    assert {f["run_status"] for f in fired} == {"Completed"}
    count = len(runs)
    time.sleep(2)  # two minutes of the fast clock: a stopped scheduler fires nothing
    assert len(scheduled_runs(cli, "every_minute")) == count


def test_two_schedulers_on_one_home_start_each_time_once(
    cli: Cli, tmp_path: Path, schedulers: list[Scheduler]
) -> None:
    ok(cli, "schedule", "create", "shared", "--job", "greet", "--cron", "* * * * *",
       "--params", params_file(tmp_path), "--parallelism", "1", "--overlap", "allow")
    origin = time.time() + ORIGIN_AHEAD
    schedulers.append(first := Scheduler(tmp_path, origin, "first"))
    schedulers.append(second := Scheduler(tmp_path, origin, "second"))
    assert eventually(lambda: len(scheduled_runs(cli, "shared")) >= 6, timeout=40)
    assert first.stop() == 0 and second.stop() == 0
    for one in (first, second):  # both were firing the same times, not one idle
        assert "schedule shared fired (cron)" in one.output, one.output

    assert eventually(lambda: all_done(cli, "shared"), timeout=60)
    times = Counter(r["tags"]["schedule_time"] for r in scheduled_runs(cli, "shared"))
    assert max(times.values()) == 1, times.most_common(3)
    history = ok(cli, "schedule", "history", "shared", "--limit", "100")
    assert Counter(f["scheduled_at"] for f in history).most_common(1)[0][1] == 1


def test_a_scheduler_killed_and_restarted_catches_up_the_latest_missed_fire_once(
    cli: Cli, tmp_path: Path, schedulers: list[Scheduler]
) -> None:
    ok(cli, "schedule", "create", "ten", "--job", "greet", "--cron", "*/10 * * * *",
       "--params", params_file(tmp_path), "--parallelism", "1", "--overlap", "allow")
    origin = time.time() + ORIGIN_AHEAD
    schedulers.append(first := Scheduler(tmp_path, origin, "first"))

    def fired() -> list[dict[str, Any]]:
        return [f for f in ok(cli, "schedule", "history", "ten") if f["state"] == "started"]

    assert eventually(lambda: len(fired()) >= 1, timeout=30), first.output
    first.process.kill()  # SIGKILL: nothing to clean up, nothing said
    first.process.wait()
    last = max(f["scheduled_at"] for f in fired())
    assert last % 600 == 0

    # Down through the fires at last+10 and last+20 minutes, and started again a little
    # after the second: once it runs, both are late by more than a minute (missed), and
    # the next one (last+30) is not due yet. A process start may take several seconds
    # (minutes of the fast clock), hence the 10-minute cron.
    time.sleep(max(0.0, (last + 1200 + 70 - fake_now(origin)) / SPEED))
    schedulers.append(second := Scheduler(tmp_path, origin, "second"))
    restarted = fake_now(origin)
    assert last + 1200 + 60 < restarted < last + 1800, "the test was too slow to restart"

    assert eventually(lambda: any(f["scheduled_at"] > last for f in fired()), timeout=10), \
        second.output
    assert second.stop() == 0
    missed = [f for f in ok(cli, "schedule", "history", "ten", "--limit", "100")
              if last < f["scheduled_at"] < restarted]
    assert [(f["scheduled_at"], f["trigger"]) for f in missed] == [(last + 1200, "catch_up")]
    caught = [r for r in scheduled_runs(cli, "ten")
              if last < datetime.fromisoformat(r["tags"]["schedule_time"]).timestamp()
              < restarted]
    assert [r["tags"]["schedule_time"] for r in caught] == [iso(last + 1200)]
    assert eventually(lambda: all_done(cli, "ten"), timeout=60)
