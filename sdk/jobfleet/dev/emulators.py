"""Starting the Firestore and Pub/Sub emulators from the local Google Cloud CLI install.

The Firestore emulator is started from its own binary rather than through `gcloud`,
because only the binary takes `--functions_emulator`: the address it POSTs an event
to for each write that matches a registered Eventarc trigger (the trigger relay in
`jobfleet.dev.relay`). Each emulator starts in a process group of its own and
stopping it ends the whole group (`gcloud` leaves its Java child running when it
alone is killed): no run leaks a server or a port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobfleet.errors import ConfigurationError

START_TIMEOUT = 90.0
STOP_GRACE = 5.0
FIRESTORE_BINARY = Path("platform", "cloud-firestore-emulator", "cloud_firestore_emulator")
INSTALL_FIRESTORE = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run "
    "`gcloud components install cloud-firestore-emulator` (or, where the CLI came from "
    "apt, `apt-get install google-cloud-cli-firestore-emulator`); it needs Java 11+"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def responds(url: str, *, ok_only: bool = False) -> bool:
    """Whether a server is listening at `url`: any HTTP answer, even an error status,
    says so (with `ok_only`, only a 200 does)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return not ok_only or bool(reply.status == 200)
    except urllib.error.HTTPError:
        return not ok_only
    except OSError:
        return False


def answers(host_port: str) -> bool:
    """Whether an emulator at `host_port` is up: it answers 200 at its root."""
    return responds(f"http://{host_port}/", ok_only=True)


def _group_alive(leader: int | subprocess.Popen[Any]) -> bool:
    # Reap the leader if it is our own child: a zombie leader keeps its group "alive".
    if isinstance(leader, subprocess.Popen):
        leader.poll()
        pid = leader.pid
    else:
        pid = leader
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child: its parent reaps it
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(leader: int | subprocess.Popen[Any], signum: int) -> None:
    pid = leader.pid if isinstance(leader, subprocess.Popen) else leader
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass  # already gone


def stop_groups(leaders: Sequence[int | subprocess.Popen[Any]], grace: float = STOP_GRACE) -> None:
    """SIGTERM every process group at once, wait for all of them, SIGKILL what is left.

    A leader is a process group id, or the Popen of our own child that leads its group
    (which is then also reaped).
    """
    for leader in leaders:
        _signal_group(leader, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = [leader for leader in leaders if _group_alive(leader)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [leader for leader in alive if _group_alive(leader)]
    for leader in alive:
        _signal_group(leader, signal.SIGKILL)
    for leader in leaders:
        if isinstance(leader, subprocess.Popen):
            leader.wait()


def stop_group(leader: int | subprocess.Popen[Any], grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    stop_groups([leader], grace)


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
            time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise ConfigurationError(f"the {self.name} emulator did not start:\n{tail}")

    def stop(self) -> None:
        stop_emulators([self])


def stop_emulators(emulators: Sequence[Emulator]) -> None:
    """Stop them in parallel: each JVM takes a second or two to shut down."""
    running = [e.process for e in emulators if e.process is not None]
    stop_groups(running)
    for emulator in emulators:
        emulator.process = None


def sdk_root() -> Path | None:
    """The Google Cloud CLI's install folder, from where `gcloud` resolves to."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = Path(gcloud).resolve().parent.parent  # <root>/bin/gcloud
    if (root / "platform").is_dir():
        return root
    try:  # an unusual layout: ask gcloud itself (a second or two)
        asked = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(asked) if asked else None


def firestore_binary() -> Path:
    root = sdk_root()
    binary = root / FIRESTORE_BINARY if root is not None else None
    if binary is None or not os.access(binary, os.X_OK):
        where = f"no {binary}" if binary is not None else "no `gcloud` on PATH"
        raise ConfigurationError(f"the Firestore emulator is not installed ({where}): "
                                 f"{INSTALL_FIRESTORE}")
    return binary


def firestore_emulator(logs: Path, relay: str, port: int | None = None) -> Emulator:
    """The Firestore emulator, POSTing trigger events to the relay at `relay` (host:port)."""
    host_port = f"127.0.0.1:{port or free_port()}"
    host, _, bound = host_port.rpartition(":")
    command = [str(firestore_binary()), "start", f"--host={host}", f"--port={bound}",
               f"--functions_emulator={relay}"]
    return Emulator("firestore", "FIRESTORE_EMULATOR_HOST", command, host_port,
                    logs / "firestore-emulator.log")


def pubsub_emulator(project: str, logs: Path, port: int | None = None) -> Emulator:
    if shutil.which("gcloud") is None:
        raise ConfigurationError(
            "the Pub/Sub emulator needs the Google Cloud CLI: install it and run "
            "`gcloud components install pubsub-emulator` (it needs Java 11+)"
        )
    host_port = f"127.0.0.1:{port or free_port()}"
    command = ["gcloud", "beta", "emulators", "pubsub", "start",
               f"--host-port={host_port}", f"--project={project}"]
    return Emulator("pubsub", "PUBSUB_EMULATOR_HOST", command, host_port,
                    logs / "pubsub-emulator.log")


def start_emulators(
    project: str, logs: Path, relay: str, firestore_port: int | None = None
) -> list[Emulator]:
    """Start both emulators at once (each takes seconds of JVM start-up) and wait.

    `relay` is the host:port of the trigger relay that the Firestore emulator will POST
    trigger events to; it need not be listening yet.
    """
    emulators = [firestore_emulator(logs, relay, firestore_port), pubsub_emulator(project, logs)]
    try:
        for emulator in emulators:
            emulator.start()
        for emulator in emulators:
            emulator.wait_ready()
    except BaseException:
        stop_emulators(emulators)
        raise
    return emulators
