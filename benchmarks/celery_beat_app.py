"""Celery app for the schedules benchmark's peer: Celery beat and one worker.

Loaded by ``celery -A celery_beat_app beat|worker`` (benchmarks/ on PYTHONPATH). Everything
comes from the environment, which benchmarks/schedules.py sets:

- CELERY_BENCH_REDIS_URL: the broker (redis on a random port, started by the benchmark);
- CELERY_BEAT_IDLE: a JSON list of [name, minute, hour] crontab entries that are not due
  during the measurement (the 1,000 schedules held idle);
- CELERY_BEAT_EVERY_MINUTE: "1" to add one ``crontab()`` entry (every minute) whose task
  records, in the list STAMPS in redis, the time.time() at which it started in the worker.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from celery.schedules import crontab

REDIS_URL = os.environ["CELERY_BENCH_REDIS_URL"]
STAMPS = "beat-bench-stamps"
EVERY_MINUTE = "every-minute"

app = Celery("celery_beat_app", broker=REDIS_URL)
app.conf.broker_connection_retry_on_startup = True
app.conf.timezone = "UTC"  # beat has one time zone per app; the entries are given in UTC


def _stamp() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.rpush(STAMPS, repr(time.time()))
    client.close()


def _noop() -> None:
    return None


# Registered by call, not as decorators (see celery_tasks.py: mypy --strict and Celery).
stamp = app.task(_stamp, name="celery_beat_app.stamp")
noop = app.task(_noop, name="celery_beat_app.noop")

_schedule: dict[str, dict[str, object]] = {
    name: {"task": "celery_beat_app.noop", "schedule": crontab(minute=minute, hour=hour)}
    for name, minute, hour in json.loads(os.environ.get("CELERY_BEAT_IDLE", "[]"))
}
if os.environ.get("CELERY_BEAT_EVERY_MINUTE") == "1":
    _schedule[EVERY_MINUTE] = {"task": "celery_beat_app.stamp", "schedule": crontab()}
app.conf.beat_schedule = _schedule
