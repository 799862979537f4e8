"""Worker classes: from the jobs' declared Resources to the Cloud Run jobs that run them.

Jobs that declare equal Resources share one worker class, and each class is a Cloud Run
job of its own, `{JOBFLEET_CLOUD_RUN_JOB}-{class name}`. Three places must agree on that
list and on those names: Terraform, which creates the jobs from the list `jobfleet
worker-classes` prints into `worker_classes.auto.tfvars.json`; the launcher, which runs a
job's tasks on its class's Cloud Run job; and the Cloud Run stand-in of `jobfleet dev
up`, which serves the same jobs. So the list, its JSON and the job name live here only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobfleet.core.registry import JobDefinition, get_job, import_jobs, known_jobs
from jobfleet.core.resources import Resources
from jobfleet.errors import ConfigurationError

TFVARS_KEY = "worker_classes"
TFVARS_FILE = "worker_classes.auto.tfvars.json"
# What a user does when a class's Cloud Run job is missing: said in one place.
HOW_TO_CREATE = (
    f"run `jobfleet worker-classes > {TFVARS_FILE}` in the Terraform folder (with"
    " JOBFLEET_JOBS naming the deployment's jobs modules), then `terraform apply`"
)


@dataclass(frozen=True, slots=True)
class WorkerClass:
    """One Cloud Run job's worth of machine, and the jobs that run on it."""

    resources: Resources
    jobs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.resources.class_name

    def to_json(self) -> dict[str, Any]:
        """One entry of the Terraform variable `worker_classes`."""
        r = self.resources
        return {
            "name": self.name, "cpu": r.cpu, "memory": r.memory,
            "task_timeout_seconds": r.task_timeout_seconds, "max_retries": r.max_retries,
            "image": r.image, "jobs": list(self.jobs),
        }


@dataclass(frozen=True, slots=True)
class ClassJob:
    """What the Cloud Run stand-in needs of a class to serve its job: the job's task
    timeout and task retries (its machine size means nothing on one machine)."""

    name: str
    task_timeout_seconds: int
    max_retries: int


def cloud_run_job(base: str, resources: Resources | None) -> str:
    """The Cloud Run job that runs a job's tasks: its class's, or the base job."""
    return base if resources is None else f"{base}-{resources.class_name}"


def worker_classes(definitions: Iterable[JobDefinition]) -> list[WorkerClass]:
    """The classes of the jobs that declare Resources, by name; jobs sorted in each."""
    jobs: dict[str, list[str]] = {}
    found: dict[str, Resources] = {}
    for definition in definitions:
        if definition.resources is None:
            continue
        name = definition.resources.class_name
        found.setdefault(name, definition.resources)
        jobs.setdefault(name, []).append(definition.name)
    return [WorkerClass(found[name], tuple(sorted(jobs[name]))) for name in sorted(found)]


def classes_of_modules(modules: Iterable[str]) -> list[WorkerClass]:
    """The classes of every job registered once `modules` are imported: what the
    deployment's processes, which import the same modules, will launch on."""
    import_jobs(modules)
    return worker_classes(get_job(name) for name in known_jobs())


def write_tfvars(path: Path, classes: Iterable[WorkerClass]) -> None:
    path.write_text(tfvars_text(classes))


def tfvars_text(classes: Iterable[WorkerClass]) -> str:
    """worker_classes.auto.tfvars.json, byte for byte: what the CLI prints and `dev up`
    writes (the drift test compares a committed file with it)."""
    return json.dumps(tfvars(classes), indent=2) + "\n"


def tfvars(classes: Iterable[WorkerClass]) -> dict[str, Any]:
    """The content of worker_classes.auto.tfvars.json."""
    return {TFVARS_KEY: [c.to_json() for c in classes]}


def read_class_jobs(path: Path) -> list[ClassJob]:
    """The classes of a worker_classes.auto.tfvars.json file; ConfigurationError naming
    the file when it is not one."""
    try:
        data = json.loads(path.read_text())
        entries = data[TFVARS_KEY]
        return [_class_job(entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"{path} is not a worker classes file ({type(exc).__name__}: {exc}); write it"
            " with `jobfleet worker-classes`"
        ) from exc


def _class_job(entry: Mapping[str, Any]) -> ClassJob:
    name, timeout, retries = entry["name"], entry["task_timeout_seconds"], entry["max_retries"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"a class name must be a non-empty string, got {name!r}")
    if not isinstance(timeout, int) or not isinstance(retries, int):
        raise TypeError(f"class {name}: task_timeout_seconds and max_retries must be integers")
    return ClassJob(name, timeout, retries)
