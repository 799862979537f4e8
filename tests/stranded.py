"""An orchestration in the state a kick-off leaves when it is killed between commit and
launch: every instance written, no execution recorded."""

from __future__ import annotations

import time
import uuid
from typing import Any

from jobfleet import JobFleet
from jobfleet.core.models import NewOrchestration, RunOptions
from jobfleet.core.params import instance_batches
from jobfleet.core.registry import get_job


def commit_without_launch(
    fleet: JobFleet, job_name: str, params: list[Any], *, age: float = 3600.0
) -> str:
    """`age` seconds old: long past any launcher's grace."""
    new = NewOrchestration(
        id=str(uuid.uuid4()), job_name=job_name,
        options=RunOptions(retries=0, backoff=0.1, timeout=None, parallelism=2),
        tags={}, created_at=time.time() - age,
    )
    batches = instance_batches(get_job(job_name), params, shards=2)
    fleet.backend.store.create_orchestration(new, batches)
    return new.id
