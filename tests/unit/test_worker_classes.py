"""Worker classes: the list Terraform reads, printed by `jobfleet worker-classes` from the
jobs a deployment's modules declare, and the Cloud Run job each class runs on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobfleet import Resources
from jobfleet.cli.main import main
from jobfleet.core.registry import JobDefinition
from jobfleet.core.worker_classes import (
    ClassJob,
    cloud_run_job,
    read_class_jobs,
    tfvars,
    worker_classes,
    write_tfvars,
)
from jobfleet.errors import ConfigurationError

# Two classes, one of them shared by two jobs that write the same machine differently,
# and a job on the base worker.
JOBS = '''
from datetime import timedelta
from jobfleet import Resources, job

@job("migrate_accounts", resources=Resources(cpu=4, memory="8Gi", task_timeout=3600))
def migrate_accounts(params):
    return params

@job("backfill", resources=Resources(cpu=4, memory="8Gi", task_timeout=timedelta(hours=1)))
def backfill(params):
    return params

@job("thumbnails", resources=Resources(cpu=1, memory="1Gi", task_timeout=120, max_retries=0))
def thumbnails(params):
    return params

@job("greet")
def greet(params):
    return params
'''

EXPECTED = {"worker_classes": [
    {"name": "c1-m1gi-t120-r0", "cpu": 1, "memory": "1Gi", "task_timeout_seconds": 120,
     "max_retries": 0, "image": None, "jobs": ["thumbnails"]},
    {"name": "c4-m8gi-t3600-r3", "cpu": 4, "memory": "8Gi", "task_timeout_seconds": 3600,
     "max_retries": 3, "image": None, "jobs": ["backfill", "migrate_accounts"]},
]}


def definition(name: str, resources: Resources | None) -> JobDefinition:
    return JobDefinition(name=name, target=lambda params: params, resources=resources)


@pytest.fixture
def jobs_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None) -> Path:
    monkeypatch.delenv("JOBFLEET_JOBS", raising=False)
    monkeypatch.delenv("JOBFLEET_CLOUD_RUN_JOB", raising=False)
    path = tmp_path / "acme_jobs.py"
    path.write_text(JOBS)
    return path


def test_jobs_with_equal_resources_share_a_class_and_jobs_without_have_none() -> None:
    heavy = Resources(cpu=4, memory="8Gi")
    classes = worker_classes([
        definition("zeta", heavy), definition("greet", None), definition("alpha", heavy),
        definition("tiny", Resources(memory="1Gi", max_retries=0)),
    ])
    assert [(c.name, c.jobs) for c in classes] == [
        ("c1-m1gi-t3600-r0", ("tiny",)), ("c4-m8gi-t3600-r3", ("alpha", "zeta")),
    ]


def test_no_job_with_resources_is_an_empty_list_terraform_accepts() -> None:
    assert tfvars(worker_classes([definition("greet", None)])) == {"worker_classes": []}


def test_a_class_runs_on_the_base_jobs_name_with_the_class_name_after_it() -> None:
    assert cloud_run_job("jobfleet-worker", None) == "jobfleet-worker"
    resources = Resources(cpu=4, memory="8Gi", task_timeout=3600, max_retries=3)
    assert cloud_run_job("jobfleet-worker", resources) == "jobfleet-worker-c4-m8gi-t3600-r3"


def test_the_file_written_is_read_back_as_the_jobs_the_stand_in_serves(tmp_path: Path) -> None:
    path = tmp_path / "worker_classes.auto.tfvars.json"
    write_tfvars(path, worker_classes([
        definition("slow", Resources(task_timeout=7200, max_retries=1)),
    ]))
    assert read_class_jobs(path) == [ClassJob("c1-m512mi-t7200-r1", 7200, 1)]


def test_a_file_that_is_not_a_class_list_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"classes": []}))
    with pytest.raises(ConfigurationError, match=r"other.json is not a worker classes file"):
        read_class_jobs(path)


def test_the_command_prints_the_terraform_variable_of_the_modules_jobs(
    jobs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker-classes", "--jobs-module", str(jobs_file)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == EXPECTED
    assert out == json.dumps(EXPECTED, indent=2) + "\n"


def test_the_command_reads_the_modules_from_jobfleet_jobs(
    jobs_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBFLEET_JOBS", str(jobs_file))
    assert main(["worker-classes"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_the_table_names_each_cloud_run_job_and_its_jobs(
    jobs_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBFLEET_CLOUD_RUN_JOB", "acme-worker")
    assert main(["worker-classes", "--jobs-module", str(jobs_file), "--format", "table"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "CLOUD RUN JOB                 CPU  MEMORY  TASK TIMEOUT  RETRIES  IMAGE           JOBS",
        "acme-worker-c1-m1gi-t120-r0   1    1Gi     120s          0        (deployment's)"
        "  thumbnails",
        "acme-worker-c4-m8gi-t3600-r3  4    8Gi     3600s         3        (deployment's)"
        "  backfill,migrate_accounts",
        "acme-worker                   -    -       -             -        (deployment's)  greet",
    ]


def test_without_a_jobs_module_the_command_says_how_to_name_one(
    jobs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker-classes"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no jobs module: give --jobs-module M" in captured.err
    assert "JOBFLEET_JOBS" in captured.err


def test_a_jobs_module_that_does_not_import_is_an_error_not_an_empty_list(
    jobs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker-classes", "--jobs-module", "no_such_jobs_module"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot import jobs module 'no_such_jobs_module'" in captured.err
