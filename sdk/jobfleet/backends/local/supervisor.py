"""One local execution: the tasks of an orchestration, run the way Cloud Run runs them.

Its tasks are `jobfleet worker` processes (see tasks.py: a task that dies is run
again with the next CLOUD_RUN_TASK_ATTEMPT). On top, it does what the store needs:
reaps expired leases (a hung worker), stops the tasks on cancel, and when every
task has ended with instances still unfinished (tasks out of attempts), ends them
Errored as WorkerLost. Completion itself is settled by the workers.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from jobfleet.backends import open_backend
from jobfleet.backends.local.launcher import EXECUTION_PREFIX
from jobfleet.backends.local.tasks import TaskSet
from jobfleet.config import Settings
from jobfleet.core.completion import abandon, settle
from jobfleet.core.models import Status
from jobfleet.core.retry import RetryPolicy

MAX_TASK_RETRIES = 3  # Cloud Run's default
TICK_SECONDS = 0.05
REAP_EVERY_SECONDS = 5.0


class Supervisor:
    def __init__(self, orchestration_id: str, task_count: int, settings: Settings) -> None:
        self.orchestration_id = orchestration_id
        self.backend = open_backend(settings)
        self.log = settings.log_of(orchestration_id)
        self.tasks = TaskSet(
            command=[sys.executable, "-m", "jobfleet", "worker"],
            env={**os.environ, "CLOUD_RUN_EXECUTION": f"{EXECUTION_PREFIX}{os.getpid()}"},
            task_count=task_count,
            parallelism=task_count,
            max_retries=MAX_TASK_RETRIES,
        )

    def run(self) -> None:
        store, oid = self.backend.store, self.orchestration_id
        next_reap = time.monotonic() + REAP_EVERY_SECONDS
        self.tasks.step()
        while not self.tasks.finished:
            time.sleep(TICK_SECONDS)
            for task in self.tasks.step():
                if task.exit_code:
                    print(f"jobfleet: task {task.index} attempt {task.attempt} exited with"
                          f" {task.exit_code}", file=sys.stderr, flush=True)
                    if store.get_orchestration(oid).status is Status.CANCELLED:
                        self.tasks.cancel()
            if time.monotonic() >= next_reap:
                self.reap()
                next_reap = time.monotonic() + REAP_EVERY_SECONDS
        if store.unfinished(oid):
            failed = ", ".join(str(t.index) for t in self.tasks.failed) or "none"
            abandon(store, self.backend.bus, oid,
                    f"every task ended with the instance unfinished (out of retries: task"
                    f" {failed}); the workers' output is in {self.log}")
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
        self.tasks.cancel()
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
