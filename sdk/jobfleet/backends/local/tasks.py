"""Running the tasks of one execution as processes, the way Cloud Run Jobs does.

Each task is a process with CLOUD_RUN_TASK_INDEX / _COUNT / _ATTEMPT set; at most
`parallelism` run at once; a task that exits non-zero (a crash, a SIGKILL) is run
again with the next attempt number until it has used `max_retries` retries. The
local supervisor and the Cloud Run stand-in both run their tasks with this.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class TaskState:
    index: int
    attempt: int = 0
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None  # of the latest attempt, once it ended
    started: float = 0.0  # monotonic time the latest attempt started

    @property
    def succeeded(self) -> bool:
        return self.process is None and self.exit_code == 0


@dataclass(frozen=True, slots=True)
class Ended:
    """One attempt of a task that ended (read before a retry reuses its TaskState)."""

    index: int
    attempt: int
    exit_code: int


@dataclass(slots=True)
class TaskSet:
    command: Sequence[str]
    env: Mapping[str, str]
    task_count: int
    parallelism: int
    max_retries: int
    # Cloud Run's task timeout: an attempt running longer is killed (and retried while
    # retries last). None: no limit, as the local supervisor runs them.
    task_timeout: float | None = None
    tasks: list[TaskState] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.tasks = [TaskState(i) for i in range(self.task_count)]

    # -- state ----------------------------------------------------------------

    @property
    def running(self) -> list[TaskState]:
        return [t for t in self.tasks if t.process is not None]

    @property
    def failed(self) -> list[TaskState]:
        """Tasks that ended non-zero with no retry left."""
        return [
            t for t in self.tasks
            if t.process is None and t.exit_code not in (None, 0)
            and (t.attempt >= self.max_retries or self.cancelled)
        ]

    @property
    def finished(self) -> bool:
        return not self.running and (self.cancelled or all(
            t.succeeded or t in self.failed for t in self.tasks
        ))

    # -- driving --------------------------------------------------------------

    def _start(self, task: TaskState) -> None:
        if task.exit_code is not None:
            task.attempt += 1
        env = {
            **self.env,
            "CLOUD_RUN_TASK_INDEX": str(task.index),
            "CLOUD_RUN_TASK_COUNT": str(self.task_count),
            "CLOUD_RUN_TASK_ATTEMPT": str(task.attempt),
        }
        task.exit_code = None
        task.started = time.monotonic()
        task.process = subprocess.Popen(list(self.command), env=env, stdin=subprocess.DEVNULL)

    def _waiting(self) -> list[TaskState]:
        """Tasks to start: never started, or ended non-zero with retries left."""
        if self.cancelled:
            return []
        return [
            t for t in self.tasks
            if t.process is None and (
                (t.exit_code is None)
                or (t.exit_code != 0 and t.attempt < self.max_retries)
            )
        ]

    def step(self) -> list[Ended]:
        """Collect ended processes and start what may start; returns the attempts that ended."""
        ended = []
        for task in self.running:
            assert task.process is not None
            if self.task_timeout and time.monotonic() - task.started > self.task_timeout:
                task.process.kill()  # SIGKILL works on a stopped process too
                task.process.wait()
            code = task.process.poll()
            if code is not None:
                task.process, task.exit_code = None, code
                ended.append(Ended(task.index, task.attempt, code))
        room = self.parallelism - len(self.running)
        for task in self._waiting()[: max(0, room)]:
            self._start(task)
        return ended

    def cancel(self) -> None:
        self.cancelled = True
        for task in self.running:
            assert task.process is not None
            task.process.kill()
            task.exit_code = task.process.wait()
            task.process = None
