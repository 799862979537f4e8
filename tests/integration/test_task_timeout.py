"""Cloud Run's task timeout, as the stand-in and TaskSet play it: a task attempt running
longer is killed (a stopped one too) and retried while retries last."""

from __future__ import annotations

import os
import signal
import sys
import time

from jobfleet.backends.local.tasks import TaskSet


def run_to_the_end(tasks: TaskSet, bound: float = 30.0) -> list[tuple[int, int]]:
    ended: list[tuple[int, int]] = []
    deadline = time.monotonic() + bound
    tasks.step()
    while not tasks.finished:
        assert time.monotonic() < deadline, "the task set never finished"
        time.sleep(0.05)
        ended += [(e.attempt, e.exit_code) for e in tasks.step()]
    return ended


def test_an_attempt_past_the_task_timeout_is_killed_and_retried() -> None:
    tasks = TaskSet(
        command=[sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ),
        task_count=1, parallelism=1, max_retries=1, task_timeout=0.5,
    )
    ended = run_to_the_end(tasks)
    assert ended == [(0, -signal.SIGKILL), (1, -signal.SIGKILL)]
    assert [t.index for t in tasks.failed] == [0]


def test_a_stopped_attempt_is_killed_at_the_task_timeout() -> None:
    tasks = TaskSet(
        command=[sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ),
        task_count=1, parallelism=1, max_retries=0, task_timeout=1.0,
    )
    tasks.step()
    [task] = tasks.running
    assert task.process is not None
    os.kill(task.process.pid, signal.SIGSTOP)
    assert run_to_the_end(tasks) == [(0, -signal.SIGKILL)]


def test_without_a_timeout_nothing_is_killed() -> None:
    tasks = TaskSet(
        command=[sys.executable, "-c", "import time; time.sleep(1)"], env=dict(os.environ),
        task_count=1, parallelism=1, max_retries=0,
    )
    assert run_to_the_end(tasks) == [(0, 0)]
