"""Fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Emulators:
    """The Firestore and Pub/Sub emulators of this test session."""

    project: str
    firestore_host: str
    pubsub_host: str

    def environment(self) -> dict[str, str]:
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
        }


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    """Both emulators for the whole session: from the local gcloud install, else from a
    Docker engine with testcontainers, else the test is skipped with what to install."""
    project = "jobfleet-test"
    logs = tmp_path_factory.mktemp("emulator-logs")
    if shutil.which("gcloud"):
        from jobfleet.dev.emulators import start_emulators

        running = start_emulators(project, logs)
        try:
            hosts = {e.name: e.host_port for e in running}
            yield Emulators(project, hosts["firestore"], hosts["pubsub"])
        finally:
            for emulator in running:
                emulator.stop()
        return
    if _docker_reachable():
        yield from _containers(project)
        return
    pytest.skip(
        "needs the Firestore and Pub/Sub emulators: install the Google Cloud CLI with "
        "`gcloud components install cloud-firestore-emulator pubsub-emulator` (and Java), "
        "or make a Docker engine reachable"
    )


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _containers(project: str) -> Iterator[Emulators]:
    from testcontainers.core.container import (
        DockerContainer,
    )

    image = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"
    firestore = DockerContainer(image).with_exposed_ports(8080).with_command(
        "gcloud emulators firestore start --host-port=0.0.0.0:8080"
    )
    pubsub = DockerContainer(image).with_exposed_ports(8085).with_command(
        f"gcloud beta emulators pubsub start --host-port=0.0.0.0:8085 --project={project}"
    )
    with firestore, pubsub:
        from jobfleet.dev.emulators import answers

        hosts = [
            f"{c.get_container_host_ip()}:{c.get_exposed_port(p)}"
            for c, p in ((firestore, 8080), (pubsub, 8085))
        ]
        deadline = time.monotonic() + 120
        while not all(answers(h) for h in hosts) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield Emulators(project, hosts[0], hosts[1])


@pytest.fixture
def gcp_env(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    """Point the Google client libraries (and child processes) at the emulators."""
    for name, value in emulators.environment().items():
        monkeypatch.setenv(name, value)
    return emulators
