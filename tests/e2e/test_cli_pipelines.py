"""Pipelines and re-runs through the real `jobfleet` command: `run --then`, `status`,
`rerun` and `results --merged`, in subprocesses on a fresh home."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli

pytestmark = pytest.mark.slow

THEN = "JOB [from FILE|MODULE:FUNCTION] [always]"


def write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def listed(cli: Cli) -> list[Any]:
    done = cli("list", "--json")
    assert done.returncode == 0, done.stderr
    found: list[Any] = json.loads(done.stdout)
    return found


def test_a_three_stage_pipeline_runs_to_its_end_and_status_shows_its_stages(
    cli: Cli, tmp_path: Path
) -> None:
    sources = write(tmp_path / "sources.json", [{"source": s} for s in range(3)])
    done = cli("run", "extract", "--params", sources, "--tag", "team=data",
               "--then", "transform from sample_jobs:rows_of",
               "--then", "load from sample_jobs:batch_of", "--json")
    assert done.returncode == 0, done.stderr
    pipeline = json.loads(done.stdout)
    first = pipeline["pipeline"]
    assert pipeline["complete"] is True
    stages = pipeline["stages"]
    assert [(s["job_name"], s["status"], s["total"], s["stage"]) for s in stages] == [
        ("extract", "Completed", 3, 1), ("transform", "Completed", 9, 2),
        ("load", "Completed", 1, 3)]
    assert stages[0]["orchestration_id"] == first
    assert all(s["tags"]["team"] == "data" for s in stages)

    middle = cli("status", stages[1]["orchestration_id"], "--json")
    assert middle.returncode == 0, middle.stderr
    links = json.loads(middle.stdout)["links"]
    ids = [s["orchestration_id"] for s in stages]
    assert (links["pipeline"], links["parent"], links["next"]) == (first, ids[0], ids[2])
    assert (links["stage"], links["stages_total"]) == (2, 3)
    assert [(s["id"], s["status"]) for s in links["stages"]] == [(i, "Completed") for i in ids]

    text = cli("status", ids[1]).stdout
    assert f"pipeline       {first}: stage 2 of 3 (3 started so far)" in text
    assert f"parent         {ids[0]}" in text and f"next           {ids[2]}" in text
    assert "transform  Completed  <- this one" in text
    last = cli("status", ids[2]).stdout
    assert "next           none: the last stage" in last

    loaded = json.loads(cli("results", ids[2], "--json").stdout)["successes"]
    assert loaded[0]["params"] == {"values": [0, 2, 4, 20, 22, 24, 40, 42, 44]}


def test_a_pipeline_that_stops_exits_1_and_says_why(cli: Cli, tmp_path: Path) -> None:
    sources = write(tmp_path / "sources.json", [{"source": s} for s in range(3)])
    done = cli("run", "extract", "--params", sources, "--tag", "poison=21",
               "--then", "transform from sample_jobs:rows_of",
               "--then", "load from sample_jobs:batch_of")
    assert done.returncode == 1, done.stderr
    assert "2 of 3 stage(s) started" in done.stdout
    assert "stopped after stage 2: the pipeline stops: this stage ended Errored" in done.stdout

    stopped = json.loads(cli("status", done.stdout.split()[1].rstrip(":"), "--json").stdout)
    stage_two = stopped["links"]["stages"][1]["id"]
    text = cli("status", stage_two).stdout
    assert "next           not started: the pipeline stops: this stage ended Errored" in text


def test_an_always_stage_from_a_file_runs_after_a_failed_stage(
    cli: Cli, tmp_path: Path
) -> None:
    sources = write(tmp_path / "sources.json", [{"source": 0, "fail": True}])
    loads = tmp_path / "loads.jsonl"
    loads.write_text('{"values": [1, 2]}\n{"values": [3]}\n')
    done = cli("run", "extract", "--params", sources,
               "--then", f"load from '{loads}' always", "--json")
    assert done.returncode == 1, done.stderr  # the first stage failed
    stages = json.loads(done.stdout)["stages"]
    assert [(s["job_name"], s["status"]) for s in stages] == [
        ("extract", "Errored"), ("load", "Completed")]
    results = json.loads(cli("results", stages[1]["orchestration_id"], "--json").stdout)
    assert [s["result"] for s in results["successes"]] == [2, 1]


GOOD = "transform from sample_jobs:rows_of"


@pytest.mark.parametrize(("specs", "message"), [
    (["transform"], "--then 'transform' (stage 2): it says nothing of its params"),
    (["transform from"], f"--then 'transform from' (stage 2): cannot read 'from'; the form "
                         f'is "{THEN}"'),
    (["transform from no/such/file.json"], "'no/such/file.json' is neither a params file nor"),
    ([f"{GOOD} sometimes"], "cannot read 'from sample_jobs:rows_of sometimes'"),
    (["nope from sample_jobs:rows_of"], "stage 2 (nope): unknown job 'nope'"),
    ([GOOD, "load from sample_jobs:no_such_function"],
     "stage 3 (load): params function 'sample_jobs:no_such_function'"),
    ([GOOD, "load from 'unclosed"], "--then \"load from 'unclosed\" (stage 3): No closing"),
])
def test_a_bad_then_spec_exits_2_naming_it_and_creates_nothing(
    cli: Cli, tmp_path: Path, specs: list[str], message: str
) -> None:
    sources = write(tmp_path / "sources.json", [{"source": 0}])
    then = [arg for spec in specs for arg in ("--then", spec)]
    done = cli("run", "extract", "--params", sources, *then)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback
    assert listed(cli) == []


def test_a_rerun_of_the_failures_succeeds_and_merged_results_are_whole(
    cli: Cli, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("yes")
    params = [{"n": n, "broken": str(broken) if n in (2, 5) else ""} for n in range(7)]
    done = cli("run", "until_fixed", "--params", write(tmp_path / "p.json", params),
               "--parallelism", "3", "--json")
    assert done.returncode == 1
    oid = json.loads(done.stdout)["orchestration_id"]

    nothing = cli("rerun", oid, "--cancelled")
    assert nothing.returncode == 2
    assert nothing.stderr == (f"jobfleet: error: orchestration {oid} has no Cancelled "
                              "instance to re-run\n")
    assert len(listed(cli)) == 1

    still_broken = cli("rerun", oid, "--json")
    assert still_broken.returncode == 1
    first_rerun = json.loads(still_broken.stdout)
    assert (first_rerun["status"], first_rerun["total"]) == ("Errored", 2)
    partial = cli("results", oid, "--merged", "--json")
    assert partial.returncode == 1
    assert [f["index"] for f in json.loads(partial.stdout)["failures"]] == [2, 5]

    broken.unlink()
    fixed = cli("rerun", first_rerun["orchestration_id"], "--failed", "--json")
    assert fixed.returncode == 0, fixed.stderr
    second_rerun = json.loads(fixed.stdout)
    assert second_rerun["tags"] == {"rerun_of": first_rerun["orchestration_id"]}

    merged = cli("results", oid, "--merged", "--json")
    assert merged.returncode == 0, merged.stderr
    whole = json.loads(merged.stdout)
    assert whole["failures"] == []
    assert [(s["index"], s["result"]) for s in whole["successes"]] == [(n, n) for n in range(7)]
    assert whole["merged"] == [oid, first_rerun["orchestration_id"],
                               second_rerun["orchestration_id"]]
    assert cli("results", oid).returncode == 1  # the run itself still failed

    text = cli("status", oid).stdout
    assert f"re-runs        {first_rerun['orchestration_id']}" in text
    links = json.loads(cli("status", second_rerun["orchestration_id"], "--json").stdout)["links"]
    assert links["rerun_of"] == first_rerun["orchestration_id"] and links["pipeline"] is None


def test_a_running_orchestration_cannot_be_rerun(cli: Cli, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": 1, "seconds": 30}])
    started = cli("run", "sleepy", "--params", params, "--no-wait", "--json")
    oid = json.loads(started.stdout)["orchestration_id"]
    try:
        refused = cli("rerun", oid)
        assert refused.returncode == 2
        assert f"orchestration {oid} is still running" in refused.stderr
    finally:
        assert cli("cancel", oid).returncode == 0
    again = cli("rerun", oid, "--cancelled", "--no-wait", "--json")
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["total"] == 1 and rerun["tags"] == {"rerun_of": oid}
    cli("cancel", rerun["orchestration_id"])
