"""Acme's jobs: an account migration whose second stage notifies the migrated customers,
and a nightly clean-up of expired sessions.

Each job that needs more than the base worker declares its machine (`Resources`); jobs
that declare the same share a worker class, a Cloud Run job of its own, made from the
list `jobfleet worker-classes` prints. `cleanup_sessions` declares none and runs on the
base worker. The work itself stands in for Acme's (it computes and calls nothing), so
the example runs in seconds anywhere: on the local backend, on `jobfleet dev up`, on
Google Cloud.

    jobfleet run migrate_accounts --params accounts.json \\
        --then "notify_customers from acme_jobs.jobs:notices_for"
    jobfleet schedules sync    # deploys nightly_session_cleanup
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from jobfleet import Resources, Stage, StageResults, job, params_provider, schedule

SCHEMA_VERSION = "v2"
SESSION_SHARDS = 4
LOCKED_PREFIX = "locked-"  # an account that cannot be migrated until someone unlocks it


class Account(BaseModel):
    """One account to migrate."""

    account_id: str = Field(min_length=1, max_length=64)
    plan: Literal["free", "team", "enterprise"] = "free"


@job("migrate_accounts", retries=2, resources=Resources(
    cpu=4, memory="8Gi", task_timeout=3600, max_retries=3,  # worker class c4-m8gi-t3600-r3
))
def migrate_accounts(params: Account) -> dict[str, str]:
    """Move one account to the new schema. A locked account fails, and keeps its
    params in the results, for a re-run once it is unlocked."""
    if params.account_id.startswith(LOCKED_PREFIX):
        raise PermissionError(f"account {params.account_id} is locked; unlock it and re-run")
    return {"account_id": params.account_id, "plan": params.plan, "schema": SCHEMA_VERSION}


class Notice(BaseModel):
    """One message to one customer."""

    account_id: str = Field(min_length=1, max_length=64)
    template: Literal["migrated", "reminder"] = "migrated"


@job("notify_customers", retries=1, resources=Resources(
    cpu=1, memory="512Mi", task_timeout=60, max_retries=1,  # worker class c1-m512mi-t60-r1
))
def notify_customers(params: Notice) -> dict[str, str]:
    return {"account_id": params.account_id, "sent": f"{params.template}:{params.account_id}"}


def notices_for(results: StageResults) -> list[dict[str, str]]:
    """The second stage's parameter sets, computed when the migration ends: one notice
    per account it migrated."""
    return [{"account_id": str(s.result["account_id"]), "template": "migrated"}
            for s in results.successes]


# The pipeline from Python: fleet.kick_off("migrate_accounts", accounts, then=MIGRATION).
MIGRATION = [Stage("notify_customers", params=notices_for, parallelism=2)]


class SessionShard(BaseModel):
    """One shard of the session table."""

    shard: int = Field(ge=0, lt=SESSION_SHARDS)


@job("cleanup_sessions", retries=1)
def cleanup_sessions(params: SessionShard) -> dict[str, int]:
    return {"shard": params.shard, "deleted": 0}


@params_provider("session_shards")
def session_shards() -> list[dict[str, int]]:
    """Called at every fire: the shards as they are that night."""
    return [{"shard": n} for n in range(SESSION_SHARDS)]


schedule("nightly_session_cleanup", job="cleanup_sessions", cron="30 2 * * *",
         timezone="Europe/Berlin", params_provider="session_shards", parallelism=2,
         tags={"team": "platform"}, description="delete expired sessions, every night")
