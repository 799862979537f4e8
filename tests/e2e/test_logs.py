"""`jobfleet logs` on the local backend, through the real command: every instance's
lines, one instance's with --job, the rotated part first, --follow to the end; and the
JSON format's labels and the kick-off's trace in the workers' lines and the event."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from jobfleet import JobFleet
from jobfleet.tracing import TraceContext, continued

pytestmark = pytest.mark.slow


def write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def run_talkative(
    cli: Cli, tmp_path: Path, count: int = 4, fail: int = 2
) -> tuple[str, dict[int, str]]:
    """Kick off and wait; the orchestration id, and the job id of each item."""
    params = [{"n": n, "fail": n == fail} for n in range(count)]
    done = cli("run", "talkative", "--params", write(tmp_path / "p.json", params),
               "--parallelism", "2", "--json")
    assert done.returncode == 1, done.stderr
    oid = json.loads(done.stdout)["orchestration_id"]
    results = json.loads(cli("results", oid, "--json").stdout)
    jobs = {r["params"]["n"]: r["job_id"] for r in results["successes"] + results["failures"]}
    return oid, jobs


def test_logs_show_what_every_instance_printed_and_job_picks_one(
    cli: Cli, tmp_path: Path
) -> None:
    oid, jobs = run_talkative(cli, tmp_path)

    every = cli("logs", oid)
    assert every.returncode == 0, every.stderr
    for n in range(4):
        for text in (f"stdout line of item {n}", f"stderr line of item {n}",
                     f"logged line of item {n}"):
            assert any(f"[job {jobs[n]}]" in line and text in line
                       for line in every.stdout.splitlines()), (text, every.stdout)

    failed = cli("logs", oid, "--job", jobs[2])
    assert failed.returncode == 0, failed.stderr
    lines = failed.stdout.splitlines()
    assert lines and all(f"[job {jobs[2]}]" in line for line in lines)
    assert sum("stdout line of item 2" in line for line in lines) == 2  # both attempts
    assert any("attempt 1 failed, retried" in line for line in lines)
    assert lines[-1].endswith("RuntimeError: item 2 failed on purpose")
    assert "item 1" not in failed.stdout

    nobody = cli("logs", oid, "--job", "no-such-job")
    assert (nobody.returncode, nobody.stdout) == (0, "")
    assert "no log lines for job no-such-job" in nobody.stderr


def test_the_rotated_part_of_the_log_comes_first(cli: Cli, tmp_path: Path, home: Path) -> None:
    oid, _ = run_talkative(cli, tmp_path)
    before = cli("logs", oid).stdout.splitlines()
    log = home / "logs" / f"{oid}.log"
    written = log.read_text().splitlines(keepends=True)
    half = len(written) // 2
    log.with_name(log.name + ".1").write_text("".join(written[:half]))
    log.write_text("".join(written[half:]))

    assert cli("logs", oid).stdout.splitlines() == before


def test_follow_prints_lines_as_they_come_until_the_orchestration_ends(
    cli: Cli, tmp_path: Path
) -> None:
    params = [{"n": n, "seconds": 0.3} for n in range(6)]
    started = cli("run", "talkative", "--params", write(tmp_path / "p.json", params),
                  "--parallelism", "2", "--no-wait", "--json")
    oid = json.loads(started.stdout)["orchestration_id"]

    followed = cli("logs", oid, "--follow")

    assert followed.returncode == 0, followed.stderr
    assert json.loads(cli("status", oid, "--json").stdout)["status"] == "Completed"
    for n in range(6):
        assert f"logged line of item {n}" in followed.stdout


def test_json_lines_carry_the_labels_and_the_trace_of_the_kick_off(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBFLEET_LOG_FORMAT", "json")
    caller = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    with JobFleet() as fleet, continued(caller.traceparent):
        orchestration = fleet.kick_off("talkative", [{"n": 0}, {"n": 1, "fail": True}],
                                       parallelism=2)
    with JobFleet() as fleet:
        orchestration = fleet.orchestration(orchestration.id)
        orchestration.wait(timeout=120)
        jobs = {i.params["n"]: i.job_id for i in orchestration.instances()}
        [(_, event)] = list(fleet.events())

    event_trace = TraceContext.parse(event.traceparent)
    assert event_trace is not None and event_trace.trace_id == caller.trace_id

    records: list[dict[str, Any]] = []
    for line in (home / "logs" / f"{orchestration.id}.log").read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert {r["message"] for r in records} >= {
        "stdout line of item 0", "stderr line of item 1", "logged line of item 1"}
    for record in records:
        labels = record["logging.googleapis.com/labels"]
        assert labels["orchestration_id"] == orchestration.id
        assert labels["job_name"] == "talkative"
        assert record["logging.googleapis.com/trace"].endswith(caller.trace_id)
        assert record["severity"] in ("INFO", "WARNING", "ERROR")
    printed = {r["message"]: r for r in records}
    assert printed["stdout line of item 0"]["logging.googleapis.com/labels"]["job_id"] == jobs[0]
    assert printed["stdout line of item 0"]["severity"] == "INFO"
    assert printed["stderr line of item 1"]["severity"] == "ERROR"
    assert any(r["severity"] == "ERROR" and "RuntimeError: item 1 failed on purpose"
               in r["message"] for r in records)

    shown = subprocess.run(
        [sys.executable, "-m", "jobfleet", "logs", orchestration.id, "--job", jobs[1]],
        capture_output=True, text=True, timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"INFO    [job {jobs[1]}] stdout line of item 1" in shown.stdout
    assert "item 0" not in shown.stdout
