"""`jobfleet worker-classes`: the worker classes of a deployment's jobs, for Terraform.

    jobfleet worker-classes --jobs-module acme_jobs.jobs > worker_classes.auto.tfvars.json

prints the Terraform variable `worker_classes` (core/worker_classes.py) for the jobs
that the modules of JOBFLEET_JOBS and `--jobs-module` register; `--format table` shows
the same for a person. It needs no backend and no project: the list comes from the
code alone, so CI can write it before `terraform apply`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobfleet.cli.arguments import EXIT_OK, EXIT_USAGE, add_jobs_module
from jobfleet.config import Settings
from jobfleet.core.registry import get_job, known_jobs
from jobfleet.core.worker_classes import (
    TFVARS_FILE,
    WorkerClass,
    classes_of_modules,
    cloud_run_job,
    tfvars_text,
)
from jobfleet.errors import JobfleetError

COMMAND = "worker-classes"


def add_parser(sub: Any) -> None:
    """Add the command to the top-level subparsers."""
    parser = sub.add_parser(
        COMMAND, help=f"the worker classes of the jobs, as Terraform's {TFVARS_FILE}")
    add_jobs_module(parser, "declaring the deployment's jobs (added to JOBFLEET_JOBS)")
    parser.add_argument("--format", choices=("tfvars", "table"), default="tfvars",
                        help="tfvars: the JSON Terraform reads (default); table: for reading")


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    modules = list(dict.fromkeys([*settings.jobs_modules, *args.jobs_module]))
    if not modules:
        print("jobfleet: error: no jobs module: give --jobs-module M (repeatable) or set"
              " JOBFLEET_JOBS to the modules that declare the deployment's jobs",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        classes = classes_of_modules(modules)
    except JobfleetError as exc:
        print(f"jobfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "tfvars":
        sys.stdout.write(tfvars_text(classes))
    else:
        base = [name for name in known_jobs() if get_job(name).resources is None]
        print(table(classes, settings.cloud_run_job, base))
    return EXIT_OK


def table(classes: list[WorkerClass], base_job: str, base_jobs: list[str]) -> str:
    """One row per Cloud Run job: each class's, then the base job's."""
    header = ("CLOUD RUN JOB", "CPU", "MEMORY", "TASK TIMEOUT", "RETRIES", "IMAGE", "JOBS")
    rows = [header] + [
        (cloud_run_job(base_job, c.resources), str(c.resources.cpu), c.resources.memory,
         f"{c.resources.task_timeout_seconds}s", str(c.resources.max_retries),
         c.resources.image or "(deployment's)", ",".join(c.jobs))
        for c in classes
    ]
    rows.append((base_job, "-", "-", "-", "-", "(deployment's)", ",".join(base_jobs) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
