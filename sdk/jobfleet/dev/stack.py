"""`jobfleet dev up` / `down`: the whole Google Cloud shape on one machine.

Both emulators, the trigger relay that the Firestore emulator sends its trigger events
to (and that POSTs them to the function as Eventarc would), the Cloud Run stand-in
(whose tasks are real `jobfleet worker` processes), the Cloud Scheduler stand-in
(which fires schedules' HTTP targets with ID tokens it signs) and the completion
function on functions-framework. Every part runs in a process group of its own, recorded in a
state file, so that `down` (and any failed `up`) stops all of it.

A running Firestore emulator (FIRESTORE_EMULATOR_HOST) is reused only together with
the relay it sends its events to (JOBFLEET_TRIGGER_RELAY): `up` adds the function's
route to that relay, and `down` removes it and leaves both running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobfleet.config import DEFAULT_CLOUD_RUN_JOB, DEFAULT_REGION, DEFAULT_TOPIC, Settings
from jobfleet.core.worker_classes import TFVARS_FILE, classes_of_modules, write_tfvars
from jobfleet.dev.cloud_scheduler import CERTS_PATH
from jobfleet.dev.emulators import (
    answers,
    firestore_emulator,
    free_port,
    pubsub_emulator,
    responds,
    stop_groups,
)
from jobfleet.dev.relay_http import add_route, remove_route
from jobfleet.dev.sweeper import DEFAULT_EVERY_SECONDS
from jobfleet.errors import ConfigurationError

DEFAULT_PROJECT = "jobfleet-dev"
READY_TIMEOUT = 90.0
RELAY = "JOBFLEET_TRIGGER_RELAY"
DEFAULT_TASK_TIMEOUT = 600.0  # Cloud Run's default task timeout
FUNCTION = "function"  # the part stopped first, so that no invocation meets a stopped emulator
API_URL = "JOBFLEET_API_URL"


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # part -> process group id
    route: str | None = None  # the function's trigger id on the relay

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps({"env": self.env, "groups": self.groups, "route": self.route})
        )

    @classmethod
    def load(cls, state_dir: Path) -> Stack | None:
        try:
            data = json.loads((state_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(state_dir, data["env"], data["groups"], data.get("route"))

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

    def wait_for(self, part: str, ready: str) -> None:
        """Until `ready` answers, or the part's processes are gone."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.groups[part], 0)
            except ProcessLookupError:
                break
            if responds(ready):
                return
            time.sleep(0.1)
        tail = (self.state_dir / f"{part}.log").read_text(errors="replace")[-1500:]
        raise ConfigurationError(f"{part} did not start; its log ends:\n{tail}")

    def stop(self) -> None:
        """Remove the function's route; stop the function, then the rest at once."""
        relay = self.env.get(RELAY)
        if self.route is not None and relay:
            remove_route(relay, self.route)
            self.route = None
        first = [pid for part, pid in self.groups.items() if part == FUNCTION]
        stop_groups(first)
        stop_groups([pid for part, pid in self.groups.items() if part != FUNCTION])
        self.groups.clear()
        self.state_file.unlink(missing_ok=True)


def up(
    state_dir: Path,
    project: str = DEFAULT_PROJECT,
    parallelism: int = 10,
    sweep_every: float = DEFAULT_EVERY_SECONDS,
    task_timeout: float = DEFAULT_TASK_TIMEOUT,
    scheduler_clock_speed: float = 1.0,
) -> Stack:
    """Start every part, wait until each answers, and return the environment to use.

    Emulators already named by FIRESTORE_EMULATOR_HOST (with JOBFLEET_TRIGGER_RELAY) and
    PUBSUB_EMULATOR_HOST and answering are reused (and left running by `down`).
    """
    existing = Stack.load(state_dir)
    if existing is not None and existing.alive():
        return existing
    if existing is not None:
        existing.stop()
    stack = Stack(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        _start(stack, project, parallelism, sweep_every, task_timeout, scheduler_clock_speed)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start(
    stack: Stack, project: str, parallelism: int, sweep_every: float, task_timeout: float,
    scheduler_clock_speed: float,
) -> None:
    env = {
        "JOBFLEET_BACKEND": "gcp",
        "GOOGLE_CLOUD_PROJECT": project,
        "JOBFLEET_REGION": DEFAULT_REGION,
        "JOBFLEET_CLOUD_RUN_JOB": DEFAULT_CLOUD_RUN_JOB,
        "JOBFLEET_TOPIC": os.environ.get("JOBFLEET_TOPIC") or DEFAULT_TOPIC,
    }
    stack.env = env
    waits: list[tuple[str, str]] = []
    given_firestore = os.environ.get("FIRESTORE_EMULATOR_HOST")
    given_relay = (os.environ.get(RELAY) or "").rstrip("/")
    if given_firestore and answers(given_firestore):
        if not (given_relay and responds(f"{given_relay}/_relay/stats")):
            raise ConfigurationError(
                f"FIRESTORE_EMULATOR_HOST={given_firestore} answers, but no trigger relay "
                f"answers at {RELAY}={given_relay or '(unset)'}: the emulator sends its "
                f"trigger events only to the relay it was started with. Set {RELAY} to that "
                "relay, or unset FIRESTORE_EMULATOR_HOST for `jobfleet dev up` to start both."
            )
        env["FIRESTORE_EMULATOR_HOST"], env[RELAY] = given_firestore, given_relay
    else:
        relay_port = free_port()
        firestore = firestore_emulator(stack.state_dir, relay=f"127.0.0.1:{relay_port}")
        stack.spawn("firestore-emulator", firestore.command, {})
        stack.spawn("relay", [
            sys.executable, "-m", "jobfleet.dev.relay", "--port", str(relay_port),
            "--firestore", firestore.host_port,
        ], {})
        env["FIRESTORE_EMULATOR_HOST"] = firestore.host_port
        env[RELAY] = f"http://127.0.0.1:{relay_port}"
        waits += [("firestore-emulator", f"http://{firestore.host_port}/"),
                  ("relay", f"{env[RELAY]}/_relay/stats")]
    given_pubsub = os.environ.get("PUBSUB_EMULATOR_HOST")
    if given_pubsub and answers(given_pubsub):
        env["PUBSUB_EMULATOR_HOST"] = given_pubsub
    else:
        pubsub = pubsub_emulator(project, stack.state_dir)
        stack.spawn("pubsub-emulator", pubsub.command, {})
        env["PUBSUB_EMULATOR_HOST"] = pubsub.host_port
        waits.append(("pubsub-emulator", f"http://{pubsub.host_port}/"))

    cloud_run_port, function_port = free_port(), free_port()
    env["JOBFLEET_CLOUD_RUN_ENDPOINT"] = f"http://127.0.0.1:{cloud_run_port}"
    worker_env = [f"--env={k}={v}" for k, v in env.items()
                  if k not in ("JOBFLEET_CLOUD_RUN_ENDPOINT", RELAY)]
    # The worker classes of the JOBFLEET_JOBS modules, as Terraform would create them.
    classes = stack.state_dir / TFVARS_FILE
    write_tfvars(classes, classes_of_modules(Settings.from_env().jobs_modules))
    stack.spawn("cloud-run", [
        sys.executable, "-m", "jobfleet.dev.cloud_run", "--port", str(cloud_run_port),
        "--project", project, "--region", env["JOBFLEET_REGION"],
        "--job", env["JOBFLEET_CLOUD_RUN_JOB"], "--parallelism", str(parallelism),
        "--task-timeout", str(task_timeout), "--classes", str(classes), *worker_env,
    ], env)
    function_url = f"http://127.0.0.1:{function_port}/"
    stack.spawn(FUNCTION, [  # as the image starts it (cli/function.py)
        sys.executable, "-m", "jobfleet", "function", "--host", "127.0.0.1",
        "--port", str(function_port),
    ], env)
    # What Cloud Scheduler does in production: the sweep, every `sweep_every` seconds.
    stack.spawn("sweeper", [
        sys.executable, "-m", "jobfleet.dev.sweeper", "--every", str(sweep_every),
    ], env)
    scheduler = _start_scheduler(stack, project, env, scheduler_clock_speed)
    waits += [("cloud-run", f"{env['JOBFLEET_CLOUD_RUN_ENDPOINT']}/_standin/calls"),
              (FUNCTION, function_url), ("cloud-scheduler", f"{scheduler}/_standin/calls")]
    for part, ready in waits:
        stack.wait_for(part, ready)
    stack.route = str(add_route(env[RELAY], project, function_url)["trigger_id"])
    stack.save()
    if env.get(API_URL):
        # Production's self-healing, reproduced: the sweep as a Cloud Scheduler job that
        # POSTs to the API (the sweeper process above sweeps too; sweeps are idempotent).
        from jobfleet.backends.gcp.cloud_scheduler import CloudSchedulerTimer

        CloudSchedulerTimer(Settings.from_env(env)).ensure_sweep()


def _start_scheduler(
    stack: Stack, project: str, env: dict[str, str], clock_speed: float
) -> str:
    """The Cloud Scheduler stand-in, its jobs kept in the state folder across restarts.

    The API verifies its ID tokens only when it knows its own URL: with JOBFLEET_API_URL
    set, `up` exports what `jobfleet serve` needs to accept them (audience, principal,
    certs URL). Without it, none of those: JOBFLEET_API_CERTS_URL alone is refused."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    stack.spawn("cloud-scheduler", [
        sys.executable, "-m", "jobfleet.dev.cloud_scheduler", "--port", str(port),
        "--project", project, "--region", env["JOBFLEET_REGION"],
        "--state", str(stack.state_dir / "cloud-scheduler.json"),
        "--clock-speed", str(clock_speed),
    ], {})
    account = f"jobfleet-scheduler@{project}.iam.gserviceaccount.com"
    env["JOBFLEET_CLOUD_SCHEDULER_ENDPOINT"] = endpoint
    env["JOBFLEET_SCHEDULER_SERVICE_ACCOUNT"] = account
    api_url = (os.environ.get(API_URL) or "").rstrip("/")
    if api_url:
        env[API_URL] = api_url
        env["JOBFLEET_API_CERTS_URL"] = f"{endpoint}{CERTS_PATH}"
        env["JOBFLEET_API_AUDIENCE"] = api_url
        principals = os.environ.get("JOBFLEET_API_PRINCIPALS") or ""
        env["JOBFLEET_API_PRINCIPALS"] = ",".join(
            p for p in (*principals.split(","), account) if p.strip()
        )
    return endpoint


def down(state_dir: Path) -> bool:
    """Stop every part `up` started; False when nothing was running."""
    stack = Stack.load(state_dir)
    if stack is None:
        return False
    stack.stop()
    return True


def exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={value}" for name, value in sorted(env.items()))
