"""Cloud Scheduler jobs as the timing of schedules (being written: see issue 10)."""

from __future__ import annotations

from jobfleet.config import Settings
from jobfleet.core.schedules import Schedule


class CloudSchedulerTimer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def apply(self, schedule: Schedule) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError
