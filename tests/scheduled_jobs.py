"""A job with a schedule declared in code, for the schedule tests (through JOBFLEET_JOBS
or --jobs-module, beside sample_jobs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobfleet import job, schedule

CUSTOMERS = ("acme", "globex", "initech")


class Report(BaseModel):
    customer: str


@job("nightly_report", retries=0)
def nightly_report(params: Report) -> dict[str, Any]:
    return {"customer": params.customer, "rows": len(params.customer)}


def every_customer() -> list[dict[str, str]]:
    """Called at every fire: the customers of the day, not those of the deploy."""
    return [{"customer": c} for c in CUSTOMERS]


schedule("nightly_report", job="nightly_report", cron="0 2 * * *",
         timezone="Europe/Berlin", params=every_customer,
         description="one report per customer, every night")
