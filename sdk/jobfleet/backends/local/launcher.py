"""The local launcher: a detached supervisor process per orchestration, like one
Cloud Run execution, whose tasks are `jobfleet worker` processes in its process group.

A job's Resources (its worker class) mean nothing here and are ignored: every task runs
on this machine, with no task timeout, whatever CPU, memory or image the job declares.
(The attempt timeout of `@job(timeout=)` still holds: the worker enforces it.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from jobfleet.backends.local.processes import (
    command_line,
    environment,
    group_members,
    is_stopped,
)
from jobfleet.config import Settings
from jobfleet.core.models import NewOrchestration
from jobfleet.core.recovery import Owner

EXECUTION_PREFIX = "local-pid-"
SUPERVISOR_MODULE = "jobfleet.backends.local.supervisor"
LAUNCH_GRACE_SECONDS = 10.0  # a local launch takes milliseconds


class ProcessLauncher:
    launch_grace = LAUNCH_GRACE_SECONDS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def launch(
        self,
        orchestration: NewOrchestration,
        task_count: int,
        jobs: list[str],
        shards: Sequence[int] | None = None,
    ) -> str:
        self.settings.logs.mkdir(parents=True, exist_ok=True)
        log = self.settings.log_of(orchestration.id)
        env = {
            **os.environ,
            **self.settings.worker_environment(
                orchestration.job_name, orchestration.id, jobs, shards=shards,
                traceparent=orchestration.traceparent,
            ),
            "CLOUD_RUN_TASK_COUNT": str(task_count),
        }
        if shards is None:
            env.pop("JOBFLEET_SHARDS", None)  # not inherited from a recovering supervisor
        if orchestration.traceparent is None:
            env.pop("TRACEPARENT", None)  # nor from the caller
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the caller; its group holds the workers
            )
        return f"{EXECUTION_PREFIX}{process.pid}"

    def is_running(self, execution: str) -> bool:
        """While its supervisor or any of its workers lives: a worker whose supervisor was
        killed still finishes its share, and must not be given up on."""
        return any(_group_alive(pid) for pid in _pids(execution))

    def cancel(self, execution: str) -> None:
        for pid in _pids(execution):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                if _group_alive(pid):
                    os.killpg(pid, signal.SIGTERM)
                    _kill_stopped(pid)

    def stop_tasks(self, execution: str, owners: Sequence[str]) -> bool:
        """SIGKILL the hung workers (a stopped process too): their supervisor runs their
        tasks again, the way Cloud Run retries a task that hit its timeout."""
        groups = set(_pids(execution))
        for text in owners:
            owner = Owner.parse(text)
            if owner is not None and _is_the_worker(owner, groups):
                with contextlib.suppress(OSError):
                    os.kill(owner.pid, signal.SIGKILL)
        return True


def _pids(execution: str) -> list[int]:
    pids = []
    for name in execution.split(","):
        if not name.startswith(EXECUTION_PREFIX):
            raise ValueError(f"not a local execution: {name!r}")
        pids.append(int(name.removeprefix(EXECUTION_PREFIX)))
    return pids


def _group_alive(pgid: int) -> bool:
    """A jobfleet supervisor or worker lives in it, not a process that reused the number."""
    return any(b"jobfleet" in command_line(pid) for pid in group_members(pgid))


def _is_the_worker(owner: Owner, groups: set[int]) -> bool:
    """The process is still that worker (pids are reused, and quickly where pid_max is
    32768): in the execution's group, with the owner's orchestration, execution and
    attempt in its environment."""
    try:
        if os.getpgid(owner.pid) not in groups or b"worker" not in command_line(owner.pid):
            return False
    except OSError:
        return False
    env = environment(owner.pid)
    return (
        env.get("ORCHESTRATION_ID") == owner.orchestration_id
        and env.get("CLOUD_RUN_EXECUTION", "").replace("/", "-") == owner.execution
        and env.get("CLOUD_RUN_TASK_ATTEMPT", "0") == str(owner.task_attempt)
    )


def _kill_stopped(pgid: int) -> None:
    """A stopped process never sees SIGTERM: it ends with SIGKILL."""
    for pid in group_members(pgid):
        if is_stopped(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
