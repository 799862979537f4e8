"""The local launcher: a detached supervisor process per orchestration, like one
Cloud Run execution, whose tasks are `jobfleet worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from jobfleet.config import Settings
from jobfleet.core.models import NewOrchestration

EXECUTION_PREFIX = "local-pid-"
SUPERVISOR_MODULE = "jobfleet.backends.local.supervisor"


class ProcessLauncher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def launch(self, orchestration: NewOrchestration, task_count: int, jobs: list[str]) -> str:
        self.settings.logs.mkdir(parents=True, exist_ok=True)
        log = self.settings.log_of(orchestration.id)
        env = {
            **os.environ,
            **self.settings.environment(),
            "JOBFLEET_JOBS": ",".join(dict.fromkeys([*self.settings.jobs_modules, *jobs])),
            "JOB_NAME": orchestration.job_name,
            "ORCHESTRATION_ID": orchestration.id,
            "CLOUD_RUN_TASK_COUNT": str(task_count),
        }
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
        """The supervisor's process is alive (and is still a supervisor, not a reused pid)."""
        try:
            cmdline = Path(f"/proc/{_pid(execution)}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return SUPERVISOR_MODULE.encode() in cmdline

    def cancel(self, execution: str) -> None:
        if not self.is_running(execution):
            return
        try:
            os.killpg(_pid(execution), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # already gone


def _pid(execution: str) -> int:
    if not execution.startswith(EXECUTION_PREFIX):
        raise ValueError(f"not a local execution: {execution!r}")
    return int(execution.removeprefix(EXECUTION_PREFIX))
