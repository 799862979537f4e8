"""Runs the tasks of one local execution the way Cloud Run does.

One `jobfleet worker` process per task with the Cloud Run environment; a task that
dies (SIGKILL, crash) while its share has unfinished instances is started again
with the next CLOUD_RUN_TASK_ATTEMPT, up to MAX_TASK_RETRIES; a share whose task is
out of attempts is given up (Errored: worker lost). Expired leases (a hung worker)
are reaped on the way. Completion itself is settled by the workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from jobfleet.backends import open_backend
from jobfleet.config import Settings
from jobfleet.core.completion import settle
from jobfleet.core.models import WORKER_LOST, ErrorInfo, Status
from jobfleet.core.retry import RetryPolicy
from jobfleet.worker import EXIT_CANNOT_WORK

MAX_TASK_RETRIES = 3  # as Cloud Run's default; a worker that cannot start is not retried
TICK_SECONDS = 0.05
REAP_EVERY_SECONDS = 5.0


class Supervisor:
    def __init__(self, orchestration_id: str, task_count: int, settings: Settings) -> None:
        self.orchestration_id = orchestration_id
        self.task_count = task_count
        self.backend = open_backend(settings)
        self.log = settings.logs / f"{orchestration_id}.log"
        self.tasks: dict[int, subprocess.Popen[bytes]] = {}
        self.attempts: dict[int, int] = {}

    def start(self, index: int) -> None:
        attempt = self.attempts.get(index, -1) + 1
        self.attempts[index] = attempt
        env = {
            **os.environ,
            "CLOUD_RUN_TASK_INDEX": str(index),
            "CLOUD_RUN_TASK_ATTEMPT": str(attempt),
            "CLOUD_RUN_EXECUTION": f"local-pid-{os.getpid()}",
        }
        self.tasks[index] = subprocess.Popen(
            [sys.executable, "-m", "jobfleet", "worker"], env=env, stdin=subprocess.DEVNULL
        )

    def run(self) -> None:
        store, oid = self.backend.store, self.orchestration_id
        for index in range(self.task_count):
            self.start(index)
        next_reap = time.monotonic() + REAP_EVERY_SECONDS
        while self.tasks:
            time.sleep(TICK_SECONDS)
            for index, process in list(self.tasks.items()):
                code = process.poll()
                if code is None:
                    continue
                del self.tasks[index]
                if code != 0:
                    print(f"jobfleet: task {index} exited with {code}", file=sys.stderr)
                self.after_exit(index, code)
            if time.monotonic() >= next_reap:
                self.reap()
                next_reap = time.monotonic() + REAP_EVERY_SECONDS
        settle(store, self.backend.bus, oid)

    def after_exit(self, index: int, code: int) -> None:
        store, oid = self.backend.store, self.orchestration_id
        if store.get_orchestration(oid).status is not Status.IN_PROGRESS:
            return
        if store.unfinished(oid, index) == 0:
            return
        if self.attempts[index] < MAX_TASK_RETRIES and code != EXIT_CANNOT_WORK:
            self.start(index)
            return
        why = (
            f"task {index} failed {self.attempts[index] + 1} times (last exit status {code});"
            f" its output is in {self.log}"
        )
        store.give_up(oid, index, ErrorInfo(type=WORKER_LOST, message=why), now=time.time())
        settle(store, self.backend.bus, oid)

    def reap(self) -> None:
        """Instances whose lease ran out (a hung or vanished worker) are retried or failed."""
        store, oid = self.backend.store, self.orchestration_id
        now = time.time()
        stale = store.stale_claims(oid, now=now)
        if stale:
            policy = RetryPolicy.of(store.get_orchestration(oid).options)
            outcomes = [policy.after_worker_lost(c, now, "its lease expired") for c in stale]
            store.record_outcomes(oid, outcomes)
            settle(store, self.backend.bus, oid)

    def stop(self, signum: int, frame: FrameType | None) -> None:
        for process in self.tasks.values():
            process.kill()
        sys.exit(0)


def main() -> None:
    supervisor = Supervisor(
        os.environ["ORCHESTRATION_ID"],
        int(os.environ["CLOUD_RUN_TASK_COUNT"]),
        Settings.from_env(),
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    supervisor.run()


if __name__ == "__main__":
    main()
