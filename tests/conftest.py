"""Fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from jobfleet import JobFleet

if TYPE_CHECKING:
    from jobfleet.dev.relay import TriggerRelay

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
    """The Firestore and Pub/Sub emulators of this test session, and the trigger relay
    that the Firestore emulator sends its trigger events to (in this process)."""

    project: str
    firestore_host: str
    pubsub_host: str
    relay: TriggerRelay
    relay_url: str

    def environment(self) -> dict[str, str]:
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "JOBFLEET_TRIGGER_RELAY": self.relay_url,
        }


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    """Both emulators and the relay for the whole session: from the local gcloud install,
    else from a Docker engine with testcontainers, else the test is skipped with what to
    install (failed instead under JOBFLEET_REQUIRE_EMULATORS=1, as CI sets)."""
    project = "jobfleet-test"
    logs = tmp_path_factory.mktemp("emulator-logs")
    if shutil.which("gcloud"):
        yield from _local(project, logs)
        return
    if _docker_reachable():
        yield from _containers(project)
        return
    message = (
        "needs the Firestore and Pub/Sub emulators: install the Google Cloud CLI with "
        "`gcloud components install cloud-firestore-emulator pubsub-emulator` (and Java), "
        "or make a Docker engine reachable"
    )
    if os.environ.get("JOBFLEET_REQUIRE_EMULATORS") == "1":
        pytest.fail(f"{message}; JOBFLEET_REQUIRE_EMULATORS=1 forbids skipping")
    pytest.skip(message)


def _local(project: str, logs: Path) -> Iterator[Emulators]:
    from jobfleet.dev.emulators import free_port, start_emulators, stop_emulators
    from jobfleet.dev.relay import TriggerRelay

    firestore_port = free_port()
    with TriggerRelay(f"127.0.0.1:{firestore_port}") as relay:
        running = start_emulators(project, logs, relay.address, firestore_port)
        try:
            hosts = {e.name: e.host_port for e in running}
            yield Emulators(project, hosts["firestore"], hosts["pubsub"], relay, relay.url)
        finally:
            stop_emulators(running)


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _containers(project: str) -> Iterator[Emulators]:
    """The emulators in containers; the relay in this process, reachable from them."""
    from testcontainers.core.container import (
        DockerContainer,
    )

    from jobfleet.dev.emulators import answers
    from jobfleet.dev.relay import TriggerRelay

    image = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"
    with TriggerRelay("", host="0.0.0.0") as relay:  # its emulator is known once started
        relay_port = relay.address.rpartition(":")[2]
        firestore = (
            DockerContainer(image)
            .with_exposed_ports(8080)
            .with_kwargs(extra_hosts={"host.docker.internal": "host-gateway"})
            .with_command(["sh", "-c", (
                'sdk="$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")" && '
                'exec "$sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator" start '
                f"--host=0.0.0.0 --port=8080 --functions_emulator=host.docker.internal:{relay_port}"
            )])
        )
        pubsub = DockerContainer(image).with_exposed_ports(8085).with_command(
            f"gcloud beta emulators pubsub start --host-port=0.0.0.0:8085 --project={project}"
        )
        with firestore, pubsub:
            hosts = [
                f"{c.get_container_host_ip()}:{c.get_exposed_port(p)}"
                for c, p in ((firestore, 8080), (pubsub, 8085))
            ]
            deadline = time.monotonic() + 120
            while not all(answers(h) for h in hosts) and time.monotonic() < deadline:
                time.sleep(0.5)
            relay.firestore_host = hosts[0]
            yield Emulators(project, hosts[0], hosts[1], relay, f"http://127.0.0.1:{relay_port}")


@pytest.fixture
def gcp_env(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    """Point the Google client libraries (and child processes) at the emulators."""
    for name, value in emulators.environment().items():
        monkeypatch.setenv(name, value)
    return emulators


def answers_ok(url: str) -> bool:
    """True once `url` answers 200: a server started by a test is up."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition the test cannot be told about (a delivery, a redelivery)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass(frozen=True)
class Server:
    """A real `jobfleet serve` process on loopback."""

    url: str
    token: str | None
    process: subprocess.Popen[bytes]
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class ServerFactory(Protocol):
    def __call__(self, *, token: str | None = None, env: dict[str, str] | None = None,
                 args: Sequence[str] = (), scheduler: bool = False) -> Server:
        ...


@pytest.fixture
def serve(home: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `jobfleet serve` (against the test's home, or `env`'s backend; `args` added to
    its command line) and wait until /healthz answers; every server is stopped at the end
    of the test. Its local scheduler (which also sweeps every minute) runs only with
    `scheduler=True`, so that no sweep races a test that sweeps."""
    from jobfleet.dev.emulators import free_port

    started: list[Server] = []

    def start(*, token: str | None = None, env: dict[str, str] | None = None,
              args: Sequence[str] = (), scheduler: bool = False) -> Server:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        environment = {**os.environ, **(env or {})}
        environment.pop("JOBFLEET_API_TOKEN", None)
        if token:
            environment["JOBFLEET_API_TOKEN"] = token
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobfleet", "serve", "--port", str(port), *args,
                 *([] if scheduler else ["--no-scheduler"])],
                env=environment, stdout=out, stderr=subprocess.STDOUT,
            )
        server = Server(f"http://127.0.0.1:{port}", token, process, log)
        started.append(server)
        if not eventually(lambda: _healthy(server), timeout=30):
            raise AssertionError(f"jobfleet serve did not start:\n{log.read_text()}")
        return server

    yield start
    for server in started:
        server.process.terminate()
    for server in started:
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _healthy(server: Server) -> bool:
    import urllib.error
    import urllib.request

    if server.process.poll() is not None:
        raise AssertionError(f"jobfleet serve exited:\n{server.log.read_text()}")
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False
