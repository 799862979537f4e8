"""`GET /v1/orchestrations/{id}/webhooks`: an orchestration's webhook deliveries, each
with every attempt made so far (jobfleet.webhooks), as routes.py does for the rest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from jobfleet import webhooks
from jobfleet.api.routes import ERRORS, PREFIX, fleet_of

router = APIRouter(prefix=PREFIX, tags=["webhooks"])


class WebhookAttempt(BaseModel):
    at: float = Field(description="when it was made (Unix seconds)")
    duration: float = Field(description="seconds it took")
    status: int | None = Field(description="the receiver's HTTP status; null if none came")
    error: str = Field(description="why it failed; empty when it succeeded")
    refused: bool = Field(description="not sent: the host resolved to a refused address")


class WebhookDelivery(BaseModel):
    url: str
    event_id: str = Field(description="the webhook-id header of every attempt")
    state: str = Field(description="pending, delivered or failed")
    created_at: float
    next_attempt_at: float | None = Field(description="when pending: the next attempt")
    attempts: list[WebhookAttempt]


class WebhookDeliveries(BaseModel):
    orchestration_id: str
    webhooks: list[WebhookDelivery]


@router.get(
    "/orchestrations/{orchestration_id}/webhooks", response_model=WebhookDeliveries,
    responses=ERRORS, summary="Webhook deliveries of the completion event, with their attempts",
)
def deliveries(orchestration_id: str, request: Request) -> dict[str, Any]:
    """One delivery per URL the orchestration names, created when its event is
    published; empty before that, or when it names none."""
    found = webhooks.deliveries(fleet_of(request), orchestration_id)
    return {"orchestration_id": orchestration_id, "webhooks": [d.shown() for d in found]}
