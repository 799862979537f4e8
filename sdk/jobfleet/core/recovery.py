"""What happens to the instances of a worker that died or hung: one rule for every reaper.

A worker holds a batch of claimed instances and runs them one after another. When it
dies (a SIGKILL, `os._exit`, a crash in native code) or stops answering (SIGSTOP, native
code holding the GIL), its claims are left InProgress. Which of them was running is
known only when it held exactly one: that instance is charged a failed attempt
(WorkerLost), retried while its retries last. A worker that held several leaves no such
clue, so none of them is charged: they go back to Pending with their attempt given back,
marked to run alone from now on. A poison instance among them then crashes a worker
that holds nothing else, and is charged alone; its siblings are never failed for it.

Every reaper (the worker of a retried task, the local supervisor, the sweep) calls
`lost_worker_outcomes`; no other code decides what a lost worker's instances become.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from jobfleet.core.models import ClaimedInstance, Outcome, Status
from jobfleet.core.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a claim: one attempt of one task (`task_index` is its shard) of one
    execution, in one process on one host."""

    orchestration_id: str
    execution: str  # the short name, as CLOUD_RUN_EXECUTION gives it ("" if unknown)
    task_index: int
    task_attempt: int
    host: str
    pid: int

    def __str__(self) -> str:
        return (
            f"{self.orchestration_id}/{self.execution}/task-{self.task_index}"
            f"/attempt-{self.task_attempt}/{self.host}/{self.pid}"
        )

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """None for a name this version did not write."""
        parts = text.rsplit("/", 5)
        if len(parts) != 6:
            return None
        oid, execution, task, attempt, host, pid = parts
        try:
            return cls(
                oid, execution, int(task.removeprefix("task-")),
                int(attempt.removeprefix("attempt-")), host, int(pid),
            )
        except ValueError:
            return None

    def works_for(self, executions: str) -> bool:
        """Whether this owner is a task of one of `executions` (as recorded on the
        orchestration: comma-separated full or short names)."""
        return self.execution in {name.rsplit("/", 1)[-1] for name in executions.split(",")}


def held_by(stale: Sequence[ClaimedInstance], executions: str) -> list[ClaimedInstance]:
    """The claims whose owners are tasks of `executions`: when an execution has ended,
    only its own workers are known dead (another execution's may be running the same
    orchestration by then). A claim whose owner cannot be read counts as theirs."""
    return [
        c for c in stale
        if (owner := Owner.parse(c.owner)) is None or owner.works_for(executions)
    ]


def lost_worker_outcomes(
    stale: Sequence[ClaimedInstance], policy: RetryPolicy, why: str, now: float | None = None
) -> list[Outcome]:
    """The outcomes that end the claims of dead workers (see the module's docstring)."""
    now = time.time() if now is None else now
    held: dict[str, list[ClaimedInstance]] = defaultdict(list)
    for claim in stale:
        held[claim.owner].append(claim)
    outcomes: list[Outcome] = []
    for claims in held.values():
        if len(claims) == 1:
            # A charged instance that may run again does so alone: it may be the poison.
            outcomes.append(replace(policy.after_worker_lost(claims[0], now, why), isolate=True))
            continue
        outcomes.extend(
            Outcome(
                job_id=c.job_id, index=c.index, owner=c.owner, status=Status.PENDING,
                not_before=now, refund=True, isolate=True,
            )
            for c in claims
        )
    return outcomes

