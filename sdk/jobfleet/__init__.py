"""jobfleet: parallel background jobs for Python teams on Google Cloud."""

from __future__ import annotations

from jobfleet.core.models import (
    ErrorInfo,
    Failure,
    JobCompletedEvent,
    OrchestrationSnapshot,
    Status,
    Success,
)
from jobfleet.core.pipeline import Stage, StageResults, When
from jobfleet.core.registry import job
from jobfleet.core.resources import Resources
from jobfleet.core.schedules import CatchUp, Overlap, Schedule, params_provider, schedule
from jobfleet.errors import (
    InvalidOption,
    InvalidParams,
    InvalidSchedule,
    JobfleetError,
    JobTimeout,
    LaunchFailed,
    UnknownJob,
    UnknownOrchestration,
    UnknownSchedule,
    WaitTimeout,
)
from jobfleet.fleet import JobFleet, Orchestration

__all__ = [
    "CatchUp",
    "ErrorInfo",
    "Failure",
    "InvalidOption",
    "InvalidParams",
    "InvalidSchedule",
    "JobCompletedEvent",
    "JobFleet",
    "JobTimeout",
    "JobfleetError",
    "LaunchFailed",
    "Orchestration",
    "OrchestrationSnapshot",
    "Overlap",
    "Resources",
    "Schedule",
    "Stage",
    "StageResults",
    "Status",
    "Success",
    "UnknownJob",
    "UnknownOrchestration",
    "UnknownSchedule",
    "WaitTimeout",
    "When",
    "job",
    "params_provider",
    "schedule",
]
