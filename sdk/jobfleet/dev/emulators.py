"""Starting the Firestore and Pub/Sub emulators from the local gcloud install.

`gcloud` is a wrapper that leaves its Java child running when it alone is killed,
so each emulator starts in a process group of its own and stopping it ends the
whole group: no run leaks a server or a port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jobfleet.errors import ConfigurationError

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(host_port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host_port}/", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Emulator:
    name: str  # "firestore" or "pubsub"
    env_var: str
    command: list[str]
    host_port: str
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(self.host_port):
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise ConfigurationError(f"the {self.name} emulator did not start:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid)
            self.process.wait()
            self.process = None


def gcloud_emulator(name: str, project: str, logs: Path, port: int | None = None) -> Emulator:
    host_port = f"127.0.0.1:{port or free_port()}"
    if name == "firestore":
        command = ["gcloud", "emulators", "firestore", "start", f"--host-port={host_port}"]
        env_var = "FIRESTORE_EMULATOR_HOST"
    elif name == "pubsub":
        command = ["gcloud", "beta", "emulators", "pubsub", "start",
                   f"--host-port={host_port}", f"--project={project}"]
        env_var = "PUBSUB_EMULATOR_HOST"
    else:
        raise ValueError(f"no emulator named {name!r}")
    return Emulator(name, env_var, command, host_port, logs / f"{name}-emulator.log")


def start_emulators(project: str, logs: Path) -> list[Emulator]:
    """Start both emulators at once (each takes seconds of JVM start-up) and wait."""
    emulators = [gcloud_emulator(n, project, logs) for n in ("firestore", "pubsub")]
    try:
        for emulator in emulators:
            emulator.start()
        for emulator in emulators:
            emulator.wait_ready()
    except BaseException:
        for emulator in emulators:
            emulator.stop()
        raise
    return emulators
