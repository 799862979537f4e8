"""A pipeline stage that has ended but whose end nobody has announced yet: what the
tests of duplicate and killed deliveries start from. Run as a script, it is a process
that announces a stage's end (and may die doing it)."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from typing import Any

from jobfleet import JobFleet, Stage
from jobfleet.core.models import NewOrchestration, Outcome, RunOptions, Status
from jobfleet.core.params import instance_batches
from jobfleet.core.pipeline import PIPELINE_TAG, STAGE_TAG, check_stages
from jobfleet.core.registry import get_job


def ended_stage(fleet: JobFleet, params: list[Any], then: list[Stage]) -> str:
    """A first stage of `greet` over `params`, every instance Completed, not announced."""
    store = fleet.backend.store
    oid = str(uuid.uuid4())
    new = NewOrchestration(
        id=oid, job_name="greet",
        options=RunOptions(retries=0, backoff=0.1, timeout=None, parallelism=1),
        tags={PIPELINE_TAG: oid, STAGE_TAG: "1"}, created_at=time.time(),
        then=check_stages(then),
    )
    store.create_orchestration(new, instance_batches(get_job("greet"), params, shards=1))
    owner = f"{oid}/test/task-0/attempt-0/host/{os.getpid()}"
    claimed = store.claim(oid, 0, owner, limit=len(params), now=time.time(), lease=60)
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, owner, Status.COMPLETED, result=c.params["name"])
        for c in claimed
    ])
    assert store.unfinished_count(oid) == 0
    return oid


SETTLER = "settler"


def main() -> None:
    """argv: orchestration id, then "settle" (announce), "die-before" (die in advance,
    before the next stage starts) or "die-after" (die after it started, before the
    publish is recorded). The publish claim is held for 1 s, so a sweep takes over fast."""
    from jobfleet import pipelines
    from jobfleet.core import completion

    oid, how = sys.argv[1], sys.argv[2]
    completion.STAGE_HOLD_SECONDS = 1.0
    fleet = JobFleet()

    def advance(stage: Any) -> None:
        if how == "die-before":
            os.kill(os.getpid(), signal.SIGKILL)
        pipelines.advance(fleet, stage)
        if how == "die-after":
            os.kill(os.getpid(), signal.SIGKILL)

    completion.settle(fleet.backend.store, fleet.backend.bus, oid, advance)


if __name__ == "__main__":
    main()
