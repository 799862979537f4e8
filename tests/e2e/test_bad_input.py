"""Bad input through the real `jobfleet` command, the SDK and the API: a clear error that
names the problem and says what to do (exit 2 from the CLI), never a traceback, and
nothing created, not even the home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Cli, ServerFactory
from jobfleet import InvalidParams, JobFleet
from jobfleet.errors import ConfigurationError, UnusableHome

pytestmark = pytest.mark.slow


def write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def deep(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with one line naming the problem: no traceback."""
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("jobfleet: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr


# -- parameter sets ---------------------------------------------------------------------


def test_params_nested_10000_deep_are_refused_by_index(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    as_list = tmp_path / "deep.json"
    as_list.write_text(f'[{{"n": 1}},\n {{"n": 2}},\n {deep(10_000)}]')
    refused(cli("run", "maybe_fail", "--params", str(as_list)),
            "parameter set 2: is nested deeper than 100 levels", "flatten it")

    as_lines = f'{{"n": 1}}\n{deep(10_000)}\n'
    refused(cli("run", "maybe_fail", "--params", "-", stdin=as_lines),
            "parameter set 1: is nested deeper than 100 levels", "standard input line 2")

    readable = tmp_path / "deep150.jsonl"  # deep, yet within what Python's reader takes
    readable.write_text(f'{{"n": 1}}\n{deep(150)}\n')
    refused(cli("run", "maybe_fail", "--params", str(readable)),
            "parameter set 1: is nested deeper than 100 levels")
    assert not home.exists()


def test_params_nested_10000_deep_are_refused_by_the_sdk(home: Path) -> None:
    nested: dict[str, Any] = {}
    for _ in range(10_000):
        nested = {"a": nested}
    with JobFleet() as fleet, pytest.raises(InvalidParams, match="parameter set 1: is nested"):
        fleet.kick_off("maybe_fail", [{"n": 1}, nested])
    assert not home.exists()


def test_a_parameter_set_over_the_size_limit_is_refused(cli: Cli, home: Path,
                                                        tmp_path: Path) -> None:
    big = [{"n": 0}, {"n": 1, "blob": "x" * (300 * 1024)}]
    refused(cli("run", "maybe_fail", "--params", write(tmp_path / "big.json", big)),
            "parameter set 1: is 300 KiB (307,220 bytes) of JSON, over the limit of 256 KiB "
            "per parameter set", "pass a reference")
    assert not home.exists()


def test_nan_and_infinity_in_params_are_refused(cli: Cli, home: Path, tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text('[{"n": 1}, {"n": 2, "x": [1, NaN]}, {"n": 3, "y": Infinity}]')
    refused(cli("run", "maybe_fail", "--params", str(path)),
            "parameter set 1: is not JSON-serialisable: it contains nan at ['x'][1]")
    assert not home.exists()


# -- bad input on a fresh home creates nothing ------------------------------------------


@pytest.mark.parametrize(
    ("job", "params", "extra", "words"),
    [
        ("no_such_job", [{"n": 1}], [], "unknown job 'no_such_job'"),
        ("maybe_fail", [{"n": 1}], ["--parallelism", "0"], "parallelism must be"),
        ("maybe_fail", [{"n": 1}], ["--retries", "1000"], "retries must be"),
        ("maybe_fail", [{"n": 1}], ["--tag", "status=x"], "reserved"),
        ("maybe_fail", [{"n": 1}, 7], [], "parameter set 1: expected a JSON object"),
        ("greet", [{"name": "a", "count": -1}], [], "parameter set 0: does not fit Greeting"),
        ("maybe_fail", [], [], "no parameter sets"),
    ],
)
def test_bad_input_on_a_fresh_home_creates_no_home(
    cli: Cli, home: Path, tmp_path: Path, job: str, params: list[Any], extra: list[str],
    words: str,
) -> None:
    refused(cli("run", job, "--params", write(tmp_path / "p.json", params), *extra), words)
    assert not home.exists()


# -- tags -------------------------------------------------------------------------------


def test_a_tag_that_is_not_utf8_is_refused(home: Path, tmp_path: Path) -> None:
    params = write(tmp_path / "p.json", [{"n": 1}])
    for tag in (b"k=\xff", b"\xfe=v"):
        done = subprocess.run(
            [sys.executable, "-m", "jobfleet", "run", "maybe_fail", "--params", params,
             "--tag", tag], capture_output=True, text=True, timeout=60,
        )
        refused(done, "is not valid UTF-8 text", "give tags as UTF-8 text")
    assert not home.exists()


def test_a_tag_that_is_not_utf8_is_a_422_from_the_api(serve: ServerFactory) -> None:
    server = serve()
    body = '{"job_name": "maybe_fail", "params": [{"n": 1}], "tags": {"k": "\\udcff"}}'
    reply = httpx.post(server.url + "/v1/orchestrations", content=body, timeout=30,
                       headers={**server.headers(), "Content-Type": "application/json"})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_option"
    assert "tag 'k' has a value that is not valid UTF-8 text" in error["message"]
    listing = httpx.get(server.url + "/v1/orchestrations", headers=server.headers(), timeout=30)
    assert listing.json()["orchestrations"] == []


# -- the jobs module --------------------------------------------------------------------

FAILING_MODULES = {
    "raises": "import os\n\nTOKEN = os.environ['NO_SUCH_VARIABLE_FOR_JOBFLEET']\n",
    "syntax": "from jobfleet import job\n\n@job('x'\ndef x(params):\n    return 1\n",
}


@pytest.mark.parametrize(("kind", "words"), [
    ("raises", "KeyError: 'NO_SUCH_VARIABLE_FOR_JOBFLEET' (at "),
    ("syntax", "SyntaxError: "),
])
def test_a_jobs_module_that_fails_at_import_exits_2_naming_it(
    cli: Cli, home: Path, tmp_path: Path, kind: str, words: str
) -> None:
    module = tmp_path / f"{kind}_jobs.py"
    module.write_text(FAILING_MODULES[kind])
    params = write(tmp_path / "p.json", [{"n": 1}])
    refused(cli("run", "maybe_fail", "--params", params, "--jobs-module", str(module)),
            f"cannot import jobs module {str(module)!r}", words, "Fix the module")
    assert not home.exists()


@pytest.mark.parametrize("kind", ["raises", "syntax"])
def test_a_worker_whose_jobs_module_fails_exits_cannot_work_with_one_line(
    home: Path, tmp_path: Path, kind: str
) -> None:
    (tmp_path / f"{kind}_worker_jobs.py").write_text(FAILING_MODULES[kind])
    env = {**os.environ, "JOBFLEET_JOBS": f"{kind}_worker_jobs", "JOB_NAME": "maybe_fail",
           "ORCHESTRATION_ID": "nope"}
    done = subprocess.run([sys.executable, "-m", "jobfleet", "worker"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.startswith(
        f"jobfleet worker: cannot import jobs module '{kind}_worker_jobs': "
    )
    assert done.stderr.count("\n") == 1, done.stderr


# -- JOBFLEET_HOME ----------------------------------------------------------------------


def _homes(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with_db_folder = tmp_path / "db-is-a-folder"
    (with_db_folder / "jobfleet.db").mkdir(parents=True)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "jobfleet.db").write_text("this is no SQLite database" * 100)
    return {
        "file": (a_file, "it is a file, not a folder"),
        "under-a-file": (a_file / "home", "a part of its path is a file"),
        "db-folder": (with_db_folder, "jobfleet.db is not a file"),
        "damaged": (damaged, "file is not a database"),
    }


@pytest.mark.parametrize("case", ["file", "under-a-file", "db-folder", "damaged"])
def test_an_unusable_home_is_named_with_its_problem(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    path, problem = _homes(tmp_path)[case]
    monkeypatch.setenv("JOBFLEET_HOME", str(path))
    params = write(tmp_path / "p.json", [{"n": 1}])
    for args in (("list",), ("run", "maybe_fail", "--params", params)):
        refused(cli(*args), f"cannot use {path} as the jobfleet home: ", problem,
                "to a folder you can write to")
    with pytest.raises(UnusableHome, match=problem) as raised, JobFleet() as fleet:
        fleet.history()
    assert isinstance(raised.value, ConfigurationError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_home_is_named_with_its_problem(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    for home, problem in ((read_only, "the folder is read-only"),
                          (read_only / "home", "it cannot be created (Permission denied)")):
        monkeypatch.setenv("JOBFLEET_HOME", str(home))
        refused(cli("list"), f"cannot use {home} as the jobfleet home: ", problem)


# -- results ----------------------------------------------------------------------------

RESULT_JOBS = """
import math

from jobfleet import job


@job("score", retries=1, backoff=0.0)
def score(params):
    kind = params["kind"]
    if kind == "nan":
        return {"score": math.nan}
    if kind == "inf":
        return -math.inf
    if kind == "big":
        return "x" * (300 * 1024)
    return {"score": 1.5}
"""


def test_results_that_json_cannot_hold_or_too_large_fail_the_attempt(
    cli: Cli, tmp_path: Path
) -> None:
    module = tmp_path / "score_jobs.py"
    module.write_text(RESULT_JOBS)
    kinds = ["ok", "nan", "inf", "big"]
    params = write(tmp_path / "p.json", [{"kind": k} for k in kinds])
    done = cli("run", "score", "--params", params, "--jobs-module", str(module), "--json")
    assert done.returncode == 1, done.stderr
    oid = json.loads(done.stdout)["orchestration_id"]

    listed = cli("results", oid, "--json")

    def strict(constant: str) -> None:
        raise AssertionError(f"`results --json` printed {constant}, which is not JSON")

    results = json.loads(listed.stdout, parse_constant=strict)
    assert [s["result"] for s in results["successes"]] == [{"score": 1.5}]
    failures = {f["params"]["kind"]: f for f in results["failures"]}
    assert set(failures) == {"nan", "inf", "big"}
    assert {f["error"]["type"] for f in failures.values()} == {"InvalidResult"}
    assert {f["attempts"] for f in failures.values()} == {2}  # retries apply
    assert "it contains nan at ['score']" in failures["nan"]["error"]["message"]
    assert "it is -inf" in failures["inf"]["error"]["message"]
    assert ("is 300 KiB (307,202 bytes) of JSON, over the limit of 256 KiB per result"
            in failures["big"]["error"]["message"])


# -- jobs no worker can import ----------------------------------------------------------

INLINE = textwrap.dedent("""
    from jobfleet import JobFleet, job

    @job("inline", retries=0)
    def inline(params):
        return params["n"] + 1

    if __name__ == "__main__":
        with JobFleet() as fleet:
            print(fleet.kick_off("inline", [{"n": 1}]).results(timeout=60))
""")


@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_a_job_declared_where_no_worker_can_import_it_is_refused(
    home: Path, tmp_path: Path, how: str
) -> None:
    command = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", INLINE]
    done = subprocess.run(command, input=INLINE if how == "stdin" else None, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("jobfleet.errors.JobNotImportable: job 'inline' is declared in __main__ without "
            "a file") in done.stderr
    assert "Put it in a module and name that module in JOBFLEET_JOBS" in done.stderr
    assert not home.exists()


def test_a_job_declared_in_a_script_file_still_runs(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "inline_script.py"
    script.write_text(INLINE)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "result=2" in done.stdout


def test_a_script_that_kicks_off_unguarded_is_refused_not_run_recursively(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    # Workers run the script to find its jobs: unguarded, each would kick off again.
    script = tmp_path / "unguarded.py"
    script.write_text(INLINE.replace('if __name__ == "__main__":', "if True:"))
    params = write(tmp_path / "p.json", [{"n": 1}])
    refused(cli("run", "inline", "--params", params, "--jobs-module", str(script)),
            f"{script} kicks off 'inline' while jobfleet runs it to find its jobs",
            'under `if __name__ == "__main__":`')
    assert not home.exists()
