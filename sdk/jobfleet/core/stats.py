"""What the fleet has done, summed from orchestration snapshots: the numbers /metrics shows.

Dead letters are instances that ended Errored after their last attempt; their ratio is
over every instance that ran to an end (cancelled ones did not).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from jobfleet.core.models import OrchestrationSnapshot, Status


@dataclass(slots=True)
class JobStats:
    completed: int = 0
    errored: int = 0
    cancelled: int = 0
    in_progress: int = 0
    pending: int = 0
    orchestrations: dict[Status, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)  # of finished orchestrations
    finished_instances: int = 0  # instances of finished orchestrations, for throughput

    @property
    def dead_letter_ratio(self) -> float:
        ran = self.completed + self.errored
        return self.errored / ran if ran else 0.0

    @property
    def throughput(self) -> float:
        """Instances per second of running time, over the finished orchestrations."""
        busy = sum(self.durations)
        return self.finished_instances / busy if busy > 0 else 0.0


def job_stats(snapshots: Iterable[OrchestrationSnapshot]) -> dict[str, JobStats]:
    stats: dict[str, JobStats] = {}
    for snap in snapshots:
        s = stats.setdefault(snap.job_name, JobStats())
        c = snap.counts
        s.completed += c.succeeded
        s.errored += c.failed
        s.cancelled += c.cancelled
        s.in_progress += c.in_progress
        s.pending += c.pending
        s.orchestrations[snap.status] = s.orchestrations.get(snap.status, 0) + 1
        if snap.status.terminal and snap.finished_at is not None:
            s.durations.append(max(0.0, snap.finished_at - snap.created_at))
            s.finished_instances += c.succeeded + c.failed
    return stats
