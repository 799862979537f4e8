"""`jobfleet dev up` / `down`: the whole Google Cloud shape on one machine.

Both emulators, the Cloud Run stand-in (whose tasks are real `jobfleet worker`
processes), the completion function on functions-framework, and the bridge that
turns Firestore changes into the CloudEvents Eventarc would send. Every part runs
in a process group of its own, recorded in a state file, so that `down` (and any
failed `up`) stops all of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jobfleet import cloud_function
from jobfleet.config import DEFAULT_CLOUD_RUN_JOB, DEFAULT_REGION, DEFAULT_TOPIC
from jobfleet.dev.emulators import answers, free_port, gcloud_emulator, stop_group
from jobfleet.errors import ConfigurationError

DEFAULT_PROJECT = "jobfleet-dev"
READY_TIMEOUT = 90.0


def _responds(url: str) -> bool:
    """Any HTTP answer, even an error status, means the server is listening."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # part -> process group id

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"env": self.env, "groups": self.groups}))

    @classmethod
    def load(cls, state_dir: Path) -> Stack | None:
        try:
            data = json.loads((state_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(state_dir, data["env"], data["groups"])

    def alive(self) -> bool:
        for pid in self.groups.values():
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return False
        return bool(self.groups)

    def spawn(self, part: str, command: list[str], env: dict[str, str]) -> None:
        with open(self.state_dir / f"{part}.log", "ab") as log:
            process = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.groups[part] = process.pid
        self.save()

    def wait_for(self, part: str, ready: str | None) -> None:
        """Until `ready` answers (or, with none, the process is still up after a moment)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.groups[part], 0)
            except ProcessLookupError:
                break
            if ready is None or _responds(ready):
                if ready is None:
                    time.sleep(1.0)
                return
            time.sleep(0.2)
        tail = (self.state_dir / f"{part}.log").read_text(errors="replace")[-1500:]
        raise ConfigurationError(f"{part} did not start; its log ends:\n{tail}")

    def stop(self) -> None:
        for pid in reversed(list(self.groups.values())):
            stop_group(pid)
        self.groups.clear()
        self.state_file.unlink(missing_ok=True)


def up(state_dir: Path, project: str = DEFAULT_PROJECT, parallelism: int = 10) -> Stack:
    """Start every part, wait until each answers, and return the environment to use.

    Emulators already named by FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST and
    answering are reused (and left running by `down`).
    """
    existing = Stack.load(state_dir)
    if existing is not None and existing.alive():
        return existing
    if existing is not None:
        existing.stop()
    stack = Stack(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        _start(stack, project, parallelism)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start(stack: Stack, project: str, parallelism: int) -> None:
    env = {
        "JOBFLEET_BACKEND": "gcp",
        "GOOGLE_CLOUD_PROJECT": project,
        "JOBFLEET_REGION": DEFAULT_REGION,
        "JOBFLEET_CLOUD_RUN_JOB": DEFAULT_CLOUD_RUN_JOB,
        "JOBFLEET_TOPIC": os.environ.get("JOBFLEET_TOPIC") or DEFAULT_TOPIC,
    }
    for name, var in (("firestore", "FIRESTORE_EMULATOR_HOST"),
                      ("pubsub", "PUBSUB_EMULATOR_HOST")):
        given = os.environ.get(var)
        if given and answers(given):
            env[var] = given
            continue
        emulator = gcloud_emulator(name, project, stack.state_dir)
        stack.spawn(f"{name}-emulator", emulator.command, {})
        env[var] = emulator.host_port
    for name, var in (("firestore", "FIRESTORE_EMULATOR_HOST"),
                      ("pubsub", "PUBSUB_EMULATOR_HOST")):
        if f"{name}-emulator" in stack.groups:
            stack.wait_for(f"{name}-emulator", f"http://{env[var]}/")

    cloud_run_port, function_port = free_port(), free_port()
    env["JOBFLEET_CLOUD_RUN_ENDPOINT"] = f"http://127.0.0.1:{cloud_run_port}"
    stack.env = env
    worker_env = [f"--env={k}={v}" for k, v in env.items() if k != "JOBFLEET_CLOUD_RUN_ENDPOINT"]
    stack.spawn("cloud-run", [
        sys.executable, "-m", "jobfleet.dev.cloud_run", "--port", str(cloud_run_port),
        "--project", project, "--region", env["JOBFLEET_REGION"],
        "--job", env["JOBFLEET_CLOUD_RUN_JOB"], "--parallelism", str(parallelism),
        *worker_env,
    ], env)
    stack.spawn("function", [
        sys.executable, "-m", "functions_framework", "--target", "on_job_written",
        "--source", cloud_function.__file__, "--signature-type", "cloudevent",
        "--host", "127.0.0.1", "--port", str(function_port),
    ], env)
    stack.wait_for("cloud-run", f"{env['JOBFLEET_CLOUD_RUN_ENDPOINT']}/_standin/calls")
    stack.wait_for("function", f"http://127.0.0.1:{function_port}/")
    stack.spawn("bridge", [
        sys.executable, "-m", "jobfleet.dev.bridge", "--project", project,
        "--function-url", f"http://127.0.0.1:{function_port}/",
    ], env)
    stack.wait_for("bridge", None)
    stack.save()


def down(state_dir: Path) -> bool:
    """Stop every part `up` started; False when nothing was running."""
    stack = Stack.load(state_dir)
    if stack is None:
        return False
    stack.stop()
    return True


def exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={value}" for name, value in sorted(env.items()))
