"""One local execution: the tasks of an orchestration, run the way Cloud Run runs them.

Its tasks are `jobfleet worker` processes (see tasks.py: a task that dies is run
again with the next CLOUD_RUN_TASK_ATTEMPT). On top, it does what Cloud Run's task
timeout and jobfleet's sweep do in production: a worker whose lease expired (hung:
stopped, or stuck in native code that holds the GIL) has its claims recovered and is
killed, so that its task runs again; when every task has ended with instances left,
core/sweep.py decides between a recovery execution and ending them Errored.
Completion itself is settled by the workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from types import FrameType

from jobfleet.backends import open_backend
from jobfleet.backends.local.launcher import EXECUTION_PREFIX
from jobfleet.backends.local.processes import is_stopped
from jobfleet.backends.local.tasks import TaskSet
from jobfleet.config import Settings
from jobfleet.core.completion import settle
from jobfleet.core.models import Status
from jobfleet.core.sweep import Ports, execution_ended, reap_expired
from jobfleet.pipelines import advancer

MAX_TASK_RETRIES = 3  # Cloud Run's default
STOPPED_CHECK_SECONDS = 0.5
TICK_SECONDS = 0.05


class Supervisor:
    def __init__(self, orchestration_id: str, task_count: int, settings: Settings) -> None:
        self.orchestration_id = orchestration_id
        self.backend = open_backend(settings)
        self.ports = Ports(self.backend.store, self.backend.launcher, self.backend.bus,
                           advancer(settings))
        self.log = settings.log_of(orchestration_id)
        self.log_limit = settings.log_limit_bytes
        self.lease = settings.lease_seconds
        self.reap_every = min(5.0, settings.lease_seconds / 3)
        self.execution = f"{EXECUTION_PREFIX}{os.getpid()}"
        self.tasks = TaskSet(
            command=[sys.executable, "-m", "jobfleet", "worker"],
            env={**os.environ, "CLOUD_RUN_EXECUTION": self.execution},
            task_count=task_count,
            parallelism=task_count,
            max_retries=MAX_TASK_RETRIES,
        )

    def run(self) -> None:
        store, oid = self.backend.store, self.orchestration_id
        next_reap = time.monotonic() + self.reap_every
        self.tasks.step()
        threading.Thread(target=self.kill_stopped_workers, name="jobfleet-stopped-workers",
                         daemon=True).start()
        while not self.tasks.finished:
            time.sleep(TICK_SECONDS)
            for ended in self.tasks.step():
                if ended.exit_code:
                    print(f"jobfleet: task {ended.index} attempt {ended.attempt} exited with"
                          f" {ended.exit_code}", file=sys.stderr, flush=True)
                    if store.get_orchestration(oid).status is Status.CANCELLED:
                        self.tasks.cancel()
            if time.monotonic() >= next_reap:
                self.reap()
                self.keep_log_small()
                next_reap = time.monotonic() + self.reap_every
        snap = store.get_orchestration(oid)
        if snap.status is Status.IN_PROGRESS and store.unfinished_count(oid):
            failed = ", ".join(str(t.index) for t in self.tasks.failed) or "none"
            execution_ended(self.ports, snap,
                            f"every task of {self.execution} ended with the instance"
                            f" unfinished (out of retries: task {failed}); the workers'"
                            f" output is in {self.log}")
        settle(store, self.backend.bus, oid, self.ports.advance)

    def reap(self) -> None:
        """Instances whose lease ran out are recovered, and their hung workers killed
        (their tasks then run again)."""
        snap = self.backend.store.get_orchestration(self.orchestration_id)
        if snap.status is Status.IN_PROGRESS:
            owners = reap_expired(self.ports, snap, now=time.time())
            if owners:
                self.backend.launcher.stop_tasks(self.execution, owners)

    def kill_stopped_workers(self) -> None:
        """A worker stopped (SIGSTOP) for a whole lease is hung, whatever the store says:
        one stopped inside a write holds SQLite's write lock, so that no lease can expire
        in the store and no reap can be written. Killed, it releases the lock (its write
        rolls back) and its task runs again. This looks only at processes, never at the
        store, so it keeps working while the store is locked."""
        stopped_since: dict[int, float] = {}
        while True:
            time.sleep(STOPPED_CHECK_SECONDS)
            now = time.monotonic()
            pids = {t.process.pid for t in list(self.tasks.tasks) if t.process is not None}
            for pid in list(stopped_since):
                if pid not in pids:
                    del stopped_since[pid]
            for pid in pids:
                if not is_stopped(pid):
                    stopped_since.pop(pid, None)
                elif now - stopped_since.setdefault(pid, now) >= self.lease:
                    print(f"jobfleet: worker {pid} has been stopped for {self.lease:.0f} s;"
                          " killing it so that its task runs again", file=sys.stderr, flush=True)
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

    def keep_log_small(self) -> None:
        """A job that prints without end must not fill the disk: past the limit the log
        moves to <log>.1 (the writers append to the emptied file)."""
        try:
            if self.log.stat().st_size > self.log_limit:
                shutil.copyfile(self.log, self.log.with_name(self.log.name + ".1"))
                os.truncate(self.log, 0)
        except OSError as exc:
            print(f"jobfleet: could not rotate {self.log}: {exc}", file=sys.stderr)

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
