"""Retry policy: exponential backoff with jitter, and what a failed attempt becomes."""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobfleet.core.models import (
    WORKER_LOST,
    ClaimedInstance,
    ErrorInfo,
    Outcome,
    RunOptions,
    Status,
)

MAX_BACKOFF = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int
    backoff: float
    max_backoff: float = MAX_BACKOFF

    @classmethod
    def of(cls, options: RunOptions) -> RetryPolicy:
        return cls(retries=options.retries, backoff=options.backoff)

    def allows_another(self, attempts_made: int) -> bool:
        return attempts_made <= self.retries

    def delay(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Full exponential step with 'equal jitter': between half and all of it.

        Jitter keeps a burst of siblings that failed together (a flaky dependency)
        from retrying in lockstep.
        """
        doublings = min(max(0, attempts_made - 1), 64)  # past 2**64 only the cap matters
        step = min(self.max_backoff, self.backoff * 2**doublings)
        return float(step * (rng or random).uniform(0.5, 1.0))

    def after_failure(
        self,
        claim: ClaimedInstance,
        error: ErrorInfo,
        now: float,
        rng: random.Random | None = None,
    ) -> Outcome:
        if self.allows_another(claim.attempts):
            return Outcome(
                job_id=claim.job_id,
                index=claim.index,
                owner=claim.owner,
                status=Status.PENDING,
                error=error,
                not_before=now + self.delay(claim.attempts, rng),
            )
        return Outcome(
            job_id=claim.job_id,
            index=claim.index,
            owner=claim.owner,
            status=Status.ERRORED,
            error=error,
        )

    def after_worker_lost(self, claim: ClaimedInstance, now: float, why: str) -> Outcome:
        """A lost worker counts as a failed attempt: retried while attempts remain."""
        return self.after_failure(claim, ErrorInfo(type=WORKER_LOST, message=why), now)
