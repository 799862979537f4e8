"""Celery app for the peer benchmark.

Kept in its own top-level module so the worker subprocess can load it with ``-A celery_tasks``;
the broker URL comes from the environment because the benchmark starts redis on a random port.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ["CELERY_BENCH_REDIS_URL"]

app = Celery("celery_tasks", broker=REDIS_URL, backend=REDIS_URL)
# Otherwise stock settings on purpose: the comparison is against Celery as people run it.
# This one only silences a deprecation warning at worker start.
app.conf.broker_connection_retry_on_startup = True


def _noop(x: int) -> int:
    return x


def _done(results: list[int]) -> int:
    return len(results)


# Registered by call rather than as decorators: Celery is untyped and mypy --strict rejects
# untyped decorators (under an error code that differs between mypy versions). Explicit names
# keep the tasks matching whether this module is imported as ``celery_tasks`` (the worker) or
# ``benchmarks.celery_tasks`` (callers inside the repo).
noop = app.task(_noop, name="celery_tasks.noop")
done = app.task(_done, name="celery_tasks.done")
