"""Fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from jobfleet import JobFleet

TESTS = Path(__file__).resolve().parent
SAMPLE_JOBS = "sample_jobs"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh JOBFLEET_HOME; workers find the sample jobs on PYTHONPATH."""
    state = tmp_path / "home"
    monkeypatch.setenv("JOBFLEET_HOME", str(state))
    monkeypatch.setenv("JOBFLEET_BACKEND", "local")
    monkeypatch.setenv("JOBFLEET_JOBS", SAMPLE_JOBS)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), path) if p))
    return state


@pytest.fixture
def fleet(home: Path) -> Iterator[JobFleet]:
    with JobFleet() as f:
        yield f


class Cli(Protocol):
    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def cli(home: Path) -> Cli:
    """The real `jobfleet` command in a subprocess, against the test's home."""

    def run(
        *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobfleet", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout,
        )

    return run
