"""The Firestore store's webhook deliveries (the Store port's webhook half).

    jobfleet_webhooks/{sha256(orchestration id, url)[:40]}   one per (orchestration, URL)

A delivery document holds its attempts as an array of maps. `next_attempt_at` is set
only while it is pending, so the due query is one range filter on a single-field index
(documents without the field are not in it); an orchestration's deliveries are one
equality query on `orchestration_id`. A claim or a record is a write on condition that
the document is unchanged since it was read, as a fire's claim is
(firestore_schedules.py): of concurrent claimants one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions
from google.cloud import firestore

from jobfleet.backends.gcp.firestore_documents import Snapshot
from jobfleet.backends.gcp.firestore_worker import CONFLICT_ATTEMPTS, field_filter, pause_after_race
from jobfleet.core.webhooks import WebhookDelivery, claimed, delivery_key, may_claim
from jobfleet.errors import JobfleetError

WEBHOOKS = "jobfleet_webhooks"


def delivery_from(doc: Snapshot) -> WebhookDelivery | None:
    return WebhookDelivery.from_json(doc.to_dict() or {}) if doc.exists else None


class FirestoreWebhooks:
    """Mixed into FirestoreStore, which provides the client."""

    _client: firestore.Client

    @property
    def _webhooks(self) -> firestore.CollectionReference:
        return self._client.collection(WEBHOOKS)

    def create_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            try:
                self._webhooks.document(delivery.key).create(delivery.to_json())
            except exceptions.Conflict:  # AlreadyExists: created by an earlier follow-up
                continue

    def webhook_deliveries(self, orchestration_id: str) -> list[WebhookDelivery]:
        query = self._webhooks.where(filter=field_filter("orchestration_id", "==",
                                                          orchestration_id))
        found = [WebhookDelivery.from_json(doc.to_dict() or {}) for doc in query.stream()]
        return sorted(found, key=lambda d: d.url)

    def due_webhook_deliveries(self, *, now: float, limit: int) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        query = (
            self._webhooks.where(filter=field_filter("next_attempt_at", "<=", now))
            .order_by("next_attempt_at").limit(limit)
        )
        return [WebhookDelivery.from_json(doc.to_dict() or {}) for doc in query.stream()]

    def claim_webhook_delivery(
        self, orchestration_id: str, url: str, *, now: float, hold: float, claimant: str
    ) -> WebhookDelivery | None:
        ref = self._webhooks.document(delivery_key(orchestration_id, url))
        for _ in range(CONFLICT_ATTEMPTS):
            doc = ref.get()
            found = delivery_from(doc)
            if found is not None and found.claimant == claimant:
                return found  # our write landed although its answer was lost
            if found is None or not may_claim(found, now):
                return None
            held = claimed(found, now=now, hold=hold, claimant=claimant)
            try:
                ref.update(held.to_json(), option=self._unchanged_since(doc))
            except (exceptions.Conflict, exceptions.FailedPrecondition):
                pause_after_race()
                continue
            return held
        raise JobfleetError(
            f"could not claim the webhook delivery of orchestration {orchestration_id} to "
            f"{url}: it changed {CONFLICT_ATTEMPTS} times in a row while being read"
        )

    def record_webhook_attempt(self, delivery: WebhookDelivery, claimant: str) -> bool:
        ref = self._webhooks.document(delivery.key)
        raced = False
        for _ in range(CONFLICT_ATTEMPTS):
            doc = ref.get()
            found = delivery_from(doc)
            if raced and found == delivery:
                return True  # our write landed although its answer was lost
            if found is None or found.claimant != claimant:
                return False
            try:
                ref.update(delivery.to_json(), option=self._unchanged_since(doc))
            except (exceptions.Conflict, exceptions.FailedPrecondition):
                raced = True
                pause_after_race()
                continue
            return True
        raise JobfleetError(
            f"could not record the webhook attempt of orchestration "
            f"{delivery.orchestration_id} to {delivery.url}: it changed "
            f"{CONFLICT_ATTEMPTS} times in a row while being read"
        )

    def _unchanged_since(self, doc: Snapshot) -> Any:
        return self._client.write_option(last_update_time=doc.update_time)
