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
from jobfleet.core.registry import job
from jobfleet.errors import (
    InvalidOption,
    InvalidParams,
    JobfleetError,
    JobTimeout,
    LaunchFailed,
    UnknownJob,
    UnknownOrchestration,
    WaitTimeout,
)
from jobfleet.fleet import JobFleet, Orchestration

__all__ = [
    "ErrorInfo",
    "Failure",
    "InvalidOption",
    "InvalidParams",
    "JobCompletedEvent",
    "JobFleet",
    "JobTimeout",
    "JobfleetError",
    "LaunchFailed",
    "Orchestration",
    "OrchestrationSnapshot",
    "Status",
    "Success",
    "UnknownJob",
    "UnknownOrchestration",
    "WaitTimeout",
    "job",
]
