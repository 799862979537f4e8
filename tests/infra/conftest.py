"""checkov for the Terraform tests, in a virtualenv of its own under the repository
(.tools/checkov, gitignored, reused when present): its pinned dependencies must not
meet the project's, so it is not in the dev extra, and CI installs it here itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.terraform_files import ROOT

TOOLS = ROOT / ".tools" / "checkov"
CHECKOV_REQUIREMENT = "checkov>=3.2,<4"
INSTALL_TIMEOUT = 900

Checkov = Callable[[Path], dict[str, Any]]


def _installed() -> Path:
    binary = TOOLS / "bin" / "checkov"
    if binary.exists():
        return binary
    TOOLS.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
    subprocess.run(
        [str(TOOLS / "bin" / "python"), "-m", "pip", "install", "--quiet", CHECKOV_REQUIREMENT],
        check=True, timeout=INSTALL_TIMEOUT,
    )
    return binary


@pytest.fixture(scope="session")
def checkov() -> Checkov:
    """Runs checkov's Terraform checks over a folder and returns its JSON report.
    --skip-download: no call to the vendor's platform (this machine reaches none, and
    the checks that ship with checkov are the ones meant here)."""
    binary = _installed()

    def run(folder: Path) -> dict[str, Any]:
        done = subprocess.run(
            [str(binary), "--directory", str(folder), "--framework", "terraform",
             "--output", "json", "--skip-download"],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode not in (0, 1):  # 1: some check failed; anything else broke
            raise AssertionError(f"checkov could not run ({done.returncode}): {done.stderr}")
        report = json.loads(done.stdout)
        reports = report if isinstance(report, list) else [report]
        [terraform] = [r for r in reports if r.get("check_type") == "terraform"]
        return terraform  # type: ignore[no-any-return]

    return run
