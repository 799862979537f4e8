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

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from google.api_core import exceptions
from google.cloud import firestore

from jobfleet.backends.gcp.firestore_conditional import Write, write_unless_changed
from jobfleet.backends.gcp.firestore_documents import EXPIRE_AT, Snapshot, expire_at
from jobfleet.backends.gcp.firestore_worker import field_filter
from jobfleet.core.webhooks import WebhookDelivery, claimed, delivery_key, may_claim

WEBHOOKS = "jobfleet_webhooks"


def delivery_from(doc: Snapshot) -> WebhookDelivery | None:
    return WebhookDelivery.from_json(doc.to_dict() or {}) if doc.exists else None


class FirestoreWebhooks:
    """Mixed into FirestoreStore, which provides the client."""

    _client: firestore.Client
    _retention: timedelta

    @property
    def _webhooks(self) -> firestore.CollectionReference:
        return self._client.collection(WEBHOOKS)

    def _expires(self, delivery: WebhookDelivery) -> datetime:
        return expire_at(delivery.created_at, self._retention)

    def create_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            try:
                self._webhooks.document(delivery.key).create(
                    {**delivery.to_json(), EXPIRE_AT: self._expires(delivery)}
                )
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
        def decide(doc: Snapshot, raced: bool) -> WebhookDelivery | Write | None:
            found = delivery_from(doc)
            if found is not None and found.claimant == claimant:
                return found  # our write landed although its answer was lost
            if found is None or not may_claim(found, now):
                return None
            held = claimed(found, now=now, hold=hold, claimant=claimant)
            return Write(held.to_json(), held)

        answer: WebhookDelivery | None = write_unless_changed(
            self._client, self._webhooks.document(delivery_key(orchestration_id, url)),
            decide, what=f"claim the webhook delivery of orchestration {orchestration_id} "
                         f"to {url}",
            expires=expire_at(time.time(), self._retention),
        )
        return answer

    def record_webhook_attempt(self, delivery: WebhookDelivery, claimant: str) -> bool:
        def decide(doc: Snapshot, raced: bool) -> bool | Write:
            found = delivery_from(doc)
            if raced and found == delivery:
                return True  # our write landed although its answer was lost
            if found is None or found.claimant != claimant:
                return False
            return Write(delivery.to_json(), True)

        done: bool = write_unless_changed(
            self._client, self._webhooks.document(delivery.key), decide,
            what=f"record the webhook attempt of orchestration {delivery.orchestration_id} "
                 f"to {delivery.url}",
            expires=self._expires(delivery),
        )
        return done
