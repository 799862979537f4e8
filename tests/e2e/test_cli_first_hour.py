"""What a newcomer meets in the first hour with the real `jobfleet` command: a reader that
stops early (`| head`), cancelling what has ended, the progress lines, the help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Cli

pytestmark = pytest.mark.slow

JOBFLEET = [sys.executable, "-m", "jobfleet"]
PIPE_BUFFER = 64 * 1024  # Linux's default pipe capacity


def kick_off(cli: Cli, tmp_path: Path, params: list[dict[str, object]]) -> str:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(params))
    done = cli("run", "maybe_fail", "--params", str(path), "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["orchestration_id"])


def test_results_into_head_ends_quietly_with_141(cli: Cli, tmp_path: Path) -> None:
    # Far more output than a pipe holds, so that `jobfleet` is still writing when
    # `head` has read its line and gone: the next write meets a closed pipe.
    params: list[dict[str, object]] = [{"n": n, "pad": "x" * 400} for n in range(600)]
    oid = kick_off(cli, tmp_path, params)
    assert len(cli("results", oid).stdout) > 2 * PIPE_BUFFER

    shell = subprocess.run(
        ["bash", "-c", 'jobfleet "$@" | head -n 1; echo "status ${PIPESTATUS[0]}" >&2', "-",
         "results", oid],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert shell.stdout.startswith("ok      #0 ")
    assert len(shell.stdout.splitlines()) == 1
    assert shell.stderr == "status 141\n"  # no traceback, no "Exception ignored"


@pytest.mark.parametrize("args", [["--json"], []])
def test_results_into_a_pipe_closed_before_it_writes(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    oid = kick_off(cli, tmp_path, [{"n": n} for n in range(3)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [*JOBFLEET, "results", oid, *args], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_cancel_of_an_ended_orchestration_says_so_and_exits_1(
    cli: Cli, tmp_path: Path
) -> None:
    oid = kick_off(cli, tmp_path, [{"n": 1}])
    for args in ([], ["--json"]):
        refused = cli("cancel", oid, *args)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr == (
            f"jobfleet: orchestration {oid} already ended Completed; nothing to cancel\n"
        )
    events = cli("events", "--json").stdout.splitlines()
    assert [json.loads(e)["status"] for e in events] == ["Completed"]


def test_cancelling_a_cancelled_orchestration_again_is_not_an_error(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"n": n, "seconds": 30} for n in range(2)]))
    oid = json.loads(
        cli("run", "sleepy", "--params", str(path), "--no-wait", "--json").stdout
    )["orchestration_id"]
    assert cli("cancel", oid).returncode == 0
    again = cli("cancel", oid, "--json")
    assert again.returncode == 0, again.stderr  # as the API's 200 for the same
    assert json.loads(again.stdout)["status"] == "Cancelled"


def test_the_final_progress_line_is_printed_once(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"n": n} for n in range(8)]))
    done = cli("run", "maybe_fail", "--params", str(path))
    assert done.returncode == 0, done.stderr
    final = [line for line in done.stderr.splitlines() if "Completed  8/8 done" in line]
    assert len(final) == 1, done.stderr


def test_help_says_which_options_repeat(cli: Cli) -> None:
    def option_help(command: str, option: str) -> str:
        text = " ".join(cli(command, "--help").stdout.split()).partition("options:")[2]
        found = re.search(rf"{option} \S+\s+(.*?)(?= --|$)", text)
        assert found, text
        return found.group(1)

    assert "repeatable" in option_help("run", "--tag")
    assert "repeatable" in option_help("run", "--jobs-module")
    assert "repeatable" in option_help("serve", "--jobs-module")


def test_serve_refuses_a_jobs_module_that_does_not_import(cli: Cli) -> None:
    refused = cli("serve", "--port", "0", "--jobs-module", "no_such_module_here")
    assert refused.returncode == 2
    assert "cannot import jobs module 'no_such_module_here'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_demo_job_by_name_points_at_its_module(cli: Cli) -> None:
    env_jobs = os.environ.pop("JOBFLEET_JOBS", None)
    try:
        refused = cli("run", "process_batch", "--params", "-", stdin='[{"batch": 1}]')
        named = cli("run", "process_batch", "--jobs-module", "jobfleet.demo", "--params", "-",
                    "--json", stdin='[{"batch": 1, "numbers": [1, 2]}]')
    finally:
        if env_jobs is not None:
            os.environ["JOBFLEET_JOBS"] = env_jobs
    assert refused.returncode == 2
    assert "The demo's 'process_batch' is in jobfleet.demo: --jobs-module jobfleet.demo" in (
        refused.stderr
    )
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["succeeded"] == 1
