"""Celery app for the peer benchmark.

Kept in its own top-level module so the worker subprocess can load it with ``-A celery_tasks``;
the broker URL comes from the environment because the benchmark starts redis on a random port.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ["CELERY_BENCH_REDIS_URL"]

app = Celery("celery_tasks", broker=REDIS_URL, backend=REDIS_URL)
# Stock settings on purpose: the comparison is against Celery as people run it.
app.conf.broker_connection_retry_on_startup = True


# Explicit names, so the tasks match whether this module is imported as ``celery_tasks``
# (worker) or ``benchmarks.celery_tasks`` (callers inside the repo).
@app.task(name="celery_tasks.noop")  # type: ignore[untyped-decorator]
def noop(x: int) -> int:
    return x


@app.task(name="celery_tasks.done")  # type: ignore[untyped-decorator]
def done(results: list[int]) -> int:
    return len(results)
