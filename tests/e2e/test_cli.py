"""The real `jobfleet` command, driven through subprocesses."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli

pytestmark = pytest.mark.slow


def write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def no_orchestrations(cli: Cli) -> bool:
    listing = cli("list", "--json")
    assert listing.returncode == 0, listing.stderr
    return bool(json.loads(listing.stdout) == [])


def test_run_success_prints_the_stable_json_summary(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": n} for n in range(5)])
    done = cli("run", "maybe_fail", "--params", params, "--tag", "team=data", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "Completed"
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (5, 5, 0)
    assert summary["tags"] == {"team": "data"}

    status = cli("status", summary["orchestration_id"], "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["orchestration_id"] == summary["orchestration_id"]


def test_failures_exit_1_and_results_carry_the_params(cli: Cli, tmp_path: Path) -> None:
    params = [{"n": n, "fail": n == 1} for n in range(3)]
    done = cli("run", "maybe_fail", "--params", write(tmp_path / "p.json", params), "--json")
    assert done.returncode == 1
    oid = json.loads(done.stdout)["orchestration_id"]

    results = json.loads(cli("results", oid, "--json").stdout)
    assert [s["params"] for s in results["successes"]] == [params[0], params[2]]
    assert results["failures"][0]["params"] == params[1]
    assert results["failures"][0]["error"]["type"] == "RuntimeError"

    only_failed = cli("results", oid, "--failed", "--json")
    assert only_failed.returncode == 1
    failed = json.loads(only_failed.stdout)
    assert failed["successes"] == [] and len(failed["failures"]) == 1
    succeeded = json.loads(cli("results", oid, "--succeeded", "--json").stdout)
    assert len(succeeded["successes"]) == 2 and succeeded["failures"] == []

    text = cli("results", oid)
    assert "RuntimeError: item 1 failed on purpose" in text.stdout


def test_json_lines_from_stdin(cli: Cli) -> None:
    lines = "\n".join(json.dumps({"x": x}) for x in range(4))
    done = cli("run", "double_async", "--params", "-", "--json", stdin=lines)
    assert done.returncode == 0, done.stderr
    oid = json.loads(done.stdout)["orchestration_id"]
    results = json.loads(cli("results", oid, "--json").stdout)
    assert [s["result"] for s in results["successes"]] == [0, 2, 4, 6]


@pytest.mark.parametrize(
    ("content", "job", "message"),
    [
        ("{not json", "maybe_fail", "line 1 is not valid JSON"),
        ('"just a string"', "maybe_fail", "must be a JSON list of objects"),
        ('[{"n": 1}, 7]', "maybe_fail", "parameter set 1: expected a JSON object, got int 7"),
        ('[{"name": "a", "count": 1}, {"name": "b", "count": -2}]', "greet",
         "parameter set 1: does not fit Greeting: count"),
        ("[]", "maybe_fail", "no parameter sets"),
        ('[{"n": 1}]', "no_such_job", "unknown job 'no_such_job'; known jobs: "),
    ],
)
def test_bad_input_exits_2_names_the_problem_and_creates_nothing(
    cli: Cli, tmp_path: Path, content: str, job: str, message: str
) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    done = cli("run", job, "--params", str(path))
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("\n") == 1  # one message, no traceback
    assert no_orchestrations(cli)


def test_unknown_orchestration_and_bad_usage_exit_2(cli: Cli, tmp_path: Path) -> None:
    for command in ("status", "results", "watch", "cancel"):
        done = cli(command, "0000-nope")
        assert done.returncode == 2
        assert "no orchestration '0000-nope'" in done.stderr
    assert cli("run", "maybe_fail").returncode == 2  # --params missing
    params = write(tmp_path / "p.json", [{"n": 1}])
    assert "--tag takes KEY=VALUE" in cli("run", "maybe_fail", "--params", params,
                                          "--tag", "oops").stderr
    assert cli("run", "maybe_fail", "--params", str(tmp_path / "missing.json")).returncode == 2
    assert no_orchestrations(cli)


def test_no_wait_then_watch_and_list(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": n, "seconds": 0.1} for n in range(6)])
    started = cli("run", "sleepy", "--params", params, "--no-wait", "--json",
                  "--parallelism", "2")
    assert started.returncode == 0
    first = json.loads(started.stdout)
    assert first["status"] == "InProgress" and first["total"] == 6

    watched = cli("watch", first["orchestration_id"], "--json")
    assert watched.returncode == 0
    states = [json.loads(line) for line in watched.stdout.splitlines()]
    assert states[-1]["status"] == "Completed" and states[-1]["succeeded"] == 6

    listing = json.loads(cli("list", "--json").stdout)
    assert [o["orchestration_id"] for o in listing] == [first["orchestration_id"]]
    assert "sleepy" in cli("list").stdout


def test_cancel_ends_the_run_with_one_cancelled_event(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": n, "seconds": 30} for n in range(4)])
    oid = json.loads(
        cli("run", "sleepy", "--params", params, "--no-wait", "--json").stdout
    )["orchestration_id"]
    cancelled = cli("cancel", oid, "--json")
    assert cancelled.returncode == 0
    assert json.loads(cancelled.stdout)["status"] == "Cancelled"
    status = cli("status", oid, "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["cancelled"] == 4
    events = [json.loads(line) for line in cli("events", "--json").stdout.splitlines()]
    assert [(e["orchestration_id"], e["status"]) for e in events] == [(oid, "Cancelled")]


def test_events_follow_prints_each_completion_as_it_happens(cli: Cli, tmp_path: Path) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "jobfleet", "events", "--follow", "--json"],
        stdout=subprocess.PIPE, text=True,
        # Ctrl-C as from a terminal, even when the test run itself was started in the
        # background (a shell's `&` leaves SIGINT ignored, and children inherit that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        params = write(tmp_path / "p.json", [{"n": 1}])
        oid = json.loads(cli("run", "maybe_fail", "--params", params, "--json").stdout)[
            "orchestration_id"
        ]
        assert follower.stdout is not None
        event = json.loads(follower.stdout.readline())
        assert event["orchestration_id"] == oid
        assert event["status"] == "Completed"
        assert event["event_id"]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)


def test_run_waits_with_plain_progress_lines_off_a_terminal(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": n, "seconds": 0.05} for n in range(4)])
    done = cli("run", "sleepy", "--params", params)
    assert done.returncode == 0
    assert "Completed  4/4 done (4 succeeded" in done.stderr
    assert "status         Completed" in done.stdout


def test_jobs_module_from_a_script_file(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "myjobs.py"
    script.write_text(
        "from jobfleet import job\n\n"
        "@job('shout')\n"
        "def shout(params):\n"
        "    return params['word'].upper()\n"
    )
    params = write(tmp_path / "p.json", [{"word": "hi"}])
    env_jobs = os.environ.pop("JOBFLEET_JOBS", None)
    try:
        done = cli("run", "shout", "--params", params, "--jobs-module", str(script), "--json")
    finally:
        if env_jobs is not None:
            os.environ["JOBFLEET_JOBS"] = env_jobs
    assert done.returncode == 0, done.stderr
    oid = json.loads(done.stdout)["orchestration_id"]
    results = json.loads(cli("results", oid, "--json").stdout)
    assert results["successes"][0]["result"] == "HI"


def test_demo_runs_the_main_job(cli: Cli) -> None:
    started = time.monotonic()
    done = cli("demo")
    assert done.returncode == 0, done.stderr
    assert "demo finished as expected" in done.stdout
    assert "ValueError: batch 20 holds a poison record" in done.stdout
    assert time.monotonic() - started < 60


def test_a_terminal_gets_a_live_progress_bar(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": n, "seconds": 0.05} for n in range(8)])
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real CLI with a terminal on stdout and stderr
        os.execv(sys.executable, [sys.executable, "-m", "jobfleet", "run", "sleepy",
                                  "--params", params])
    screen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    text = screen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0
    assert "━" in text  # rich's bar
    assert "8/8" in text


def test_sweep_launches_what_a_dead_kick_off_left_and_reports_it(cli: Cli) -> None:
    from jobfleet import JobFleet
    from stranded import commit_without_launch

    with JobFleet() as fleet:
        oid = commit_without_launch(fleet, "greet", [{"name": "ada", "count": 1}] * 3)
    swept = cli("sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["launched"] == 1
    watched = cli("watch", oid, "--json", timeout=60)
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "Completed"
    assert "nothing to do" in cli("sweep").stdout
