"""The job registry: declaring jobs with @job, finding them by name, importing them."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobfleet import job
from jobfleet.core.registry import (
    get_job,
    import_jobs,
    job_sources,
    known_jobs,
    split_modules,
)
from jobfleet.errors import ConfigurationError, UnknownJob

pytestmark = pytest.mark.usefixtures("clean_registry")


def test_a_class_job_runs_a_fresh_instance_per_attempt() -> None:
    @job("resize", retries=4, backoff=0.5, timeout=30)
    class Resize:
        def __init__(self) -> None:
            self.calls = 0

        def run(self, params: dict[str, Any]) -> int:
            self.calls += 1
            return int(params["width"]) * self.calls

    definition = get_job("resize")

    assert definition.target is Resize
    assert [definition.function({"width": 8}) for _ in range(3)] == [8, 8, 8]
    assert not definition.is_async
    assert (definition.retries, definition.backoff, definition.timeout) == (4, 0.5, 30)
    assert definition.source == __name__


def test_a_function_job_keeps_working_as_a_plain_function() -> None:
    @job("double")
    def double(params: dict[str, int]) -> int:
        return params["n"] * 2

    assert double({"n": 2}) == 4
    assert get_job("double").function({"n": 5}) == 10
    assert not get_job("double").is_async


def test_async_functions_and_async_run_methods_are_detected() -> None:
    @job("fetch")
    async def fetch(params: dict[str, str]) -> str:
        await asyncio.sleep(0)
        return params["url"]

    @job("crawl")
    class Crawl:
        async def run(self, params: dict[str, str]) -> str:
            return params["url"].upper()

    assert get_job("fetch").is_async
    assert get_job("crawl").is_async
    assert asyncio.run(get_job("fetch").function({"url": "a"})) == "a"
    assert asyncio.run(get_job("crawl").function({"url": "b"})) == "B"


def test_unknown_job_error_lists_the_known_names_and_what_to_do() -> None:
    job("beta")(lambda params: None)
    job("alpha")(lambda params: None)

    with pytest.raises(UnknownJob, match="unknown job 'gamma'; known jobs: alpha, beta") as info:
        get_job("gamma")
    assert "JOBFLEET_JOBS" in str(info.value)
    assert info.value.name == "gamma"
    assert known_jobs() == ["alpha", "beta"]


def test_unknown_job_with_nothing_registered_says_so() -> None:
    with pytest.raises(UnknownJob, match="none registered"):
        get_job("anything")


@pytest.mark.parametrize(
    "arguments",
    [{"name": ""}, {"name": "x", "retries": -1}, {"name": "x", "backoff": -1.0},
     {"name": "x", "timeout": 0.0}],
    ids=["empty-name", "negative-retries", "negative-backoff", "zero-timeout"],
)
def test_bad_job_declarations_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        job(**arguments)


def test_a_class_without_run_is_refused() -> None:
    class NoRun:
        pass

    with pytest.raises(TypeError, match="NoRun needs a run"):
        job("norun")(NoRun)
    assert known_jobs() == []


def test_something_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="decorates a class or a function"):
        job("number")(42)


# -- importing the modules that declare jobs ---------------------------------------------------


JOBS_SOURCE = textwrap.dedent(
    """
    from jobfleet import job

    with open({marker!r}, "a") as marker:
        marker.write("x")

    @job({name!r})
    def imported(params):
        return params["n"] + 1
    """
)


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "jobs"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))  # also restores sys.path afterwards
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_jobs(folder: Path, filename: str, job_name: str) -> tuple[Path, Path]:
    marker = folder / f"{filename}.runs"
    path = folder / filename
    path.write_text(JOBS_SOURCE.format(marker=str(marker), name=job_name))
    return path, marker


def test_import_jobs_imports_a_module_by_name(jobs_dir: Path) -> None:
    module = f"jobs_{uuid.uuid4().hex}"
    write_jobs(jobs_dir, f"{module}.py", "from-module")

    import_jobs([f" {module} ", ""])

    assert get_job("from-module").function({"n": 1}) == 2
    assert job_sources(["from-module"]) == [module]


def test_import_jobs_runs_a_script_file_by_path(jobs_dir: Path) -> None:
    path, _ = write_jobs(jobs_dir, "my_jobs.py", "from-script")

    import_jobs([str(path)])

    assert get_job("from-script").function({"n": 41}) == 42
    # Workers import the same file by this source, so it must be the script's path.
    assert job_sources(["from-script"]) == [str(path.resolve())]


def test_a_relative_script_path_is_made_absolute_for_the_workers(
    jobs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = write_jobs(jobs_dir, "relative_jobs.py", "relative")
    monkeypatch.chdir(jobs_dir)

    import_jobs(["relative_jobs.py"])

    assert job_sources(["relative"]) == [str(path.resolve())]


def test_a_script_imported_twice_runs_once(jobs_dir: Path) -> None:
    path, marker = write_jobs(jobs_dir, "once.py", "once")

    import_jobs([str(path)])
    import_jobs([str(path)])

    assert marker.read_text() == "x"


def test_a_missing_module_is_a_configuration_error_naming_it(jobs_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot import jobs module 'no_such_jobs_xyz'"):
        import_jobs(["no_such_jobs_xyz"])
    with pytest.raises(ConfigurationError, match=r"missing\.py"):
        import_jobs([str(jobs_dir / "missing.py")])


def test_split_modules_reads_a_comma_separated_list() -> None:
    assert split_modules(" app.jobs, ,more_jobs,scripts/x.py ") == [
        "app.jobs", "more_jobs", "scripts/x.py",
    ]
    assert split_modules(None) == []
    assert split_modules("") == []


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def helper():\n    raise RuntimeError('no DATABASE_URL')\n\nhelper()\n",
         r"RuntimeError: no DATABASE_URL \(at .*line 2\)"),
        ("@job('broken'\ndef broken(params):\n    return 1\n", r"SyntaxError: "),
        ("import sys\nsys.exit(4)\n", r"SystemExit: 4 \(at .*line 2\)"),
        ("x = {}['missing']\n", r"KeyError: 'missing' \(at .*line 1\)"),
    ],
    ids=["runtime-error", "syntax-error", "sys-exit", "key-error"],
)
@pytest.mark.parametrize("by", ["module", "script"])
def test_a_jobs_module_that_fails_at_import_is_a_configuration_error_naming_it(
    jobs_dir: Path, source: str, words: str, by: str
) -> None:
    module = f"failing_{uuid.uuid4().hex}"
    path = jobs_dir / f"{module}.py"
    path.write_text(source)
    spec = module if by == "module" else str(path)

    with pytest.raises(ConfigurationError) as refused:
        import_jobs([spec])

    message = str(refused.value)
    assert message.startswith(f"cannot import jobs module {spec!r}: ")
    assert re.search(words, message), message
    assert message.endswith("Fix the module, or leave it out of JOBFLEET_JOBS and --jobs-module.")
