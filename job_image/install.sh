#!/bin/sh
# The image's install, in one place: job_image/Dockerfile runs it in its build stage,
# and tests/e2e/test_example_repository.py replays it in a fresh virtualenv, so what
# the test runs is what the image holds.
#
#   sh job_image/install.sh VENV JOBFLEET JOBS_DIR [JOBS_MODULES]
#
#   VENV          the virtualenv to create (the image copies it into its runtime stage)
#   JOBFLEET      the jobfleet requirement: a checkout (`.` when building from
#                 jobfleet's repository), a wheel file in the build context
#                 (vendor/jobfleet-0.1.0-py3-none-any.whl), or `jobfleet==0.1.0` from
#                 the package index pip is set up for
#   JOBS_DIR      the team's jobs package: a folder with its pyproject.toml, which
#                 depends on jobfleet[gcp,api]
#   JOBS_MODULES  the modules the image names in JOBFLEET_JOBS (comma-separated),
#                 imported once installed
#
# PYTHON names the interpreter that creates the virtualenv (default: python3).
set -eu

if [ "$#" -lt 3 ] || [ "$#" -gt 4 ]; then
    echo "usage: $0 VENV JOBFLEET JOBS_DIR [JOBS_MODULES]" >&2
    exit 2
fi
venv=$1
jobfleet=$2
jobs_dir=$3
jobs_modules=${4:-}

"${PYTHON:-python3}" -m venv "$venv"
# One resolve for both: the jobs package's `jobfleet[gcp,api]` is met by JOBFLEET, never
# by a package of the same name found on an index.
"$venv/bin/python" -m pip install --no-input "$jobfleet" "$jobs_dir"

# Fail the build, not the first Cloud Run task: what every command of the image imports
# (the worker's and the API's Google Cloud backend, the API, the completion function) and
# the jobs modules must import from the installed packages alone (-I: not from the
# working folder, which holds the sources).
"$venv/bin/python" -I - "$jobs_modules" <<'PY'
import importlib
import pkgutil
import sys

import jobfleet.backends.gcp as gcp

for module in pkgutil.iter_modules(gcp.__path__, gcp.__name__ + "."):
    importlib.import_module(module.name)
importlib.import_module("jobfleet.api.app")
importlib.import_module("jobfleet.cloud_function")

from jobfleet.core.registry import import_jobs, known_jobs, split_modules

modules = split_modules(sys.argv[1])
import_jobs(modules)
print(f"installed: jobfleet with {', '.join(modules) or 'no jobs modules'}"
      f" ({len(known_jobs())} jobs)")
PY
