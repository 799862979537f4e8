"""The embedded store's webhook deliveries (the Store port's webhook half).

A delivery is a row keyed by (orchestration, URL); its attempts and claim are JSON text
in `data`, with `state` and `next_attempt_at` beside it for the due query (a partial
index over the pending ones). A claim reads and writes the row in one `BEGIN IMMEDIATE`
transaction, so two sweeps on one home never send the same attempt at once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from jobfleet.backends.local.connections import SqliteConnections
from jobfleet.core.webhooks import DeliveryState, WebhookDelivery, claimed, may_claim

PENDING = f"'{DeliveryState.PENDING.value}'"  # a literal, so the partial index is used


class SqliteWebhooks(SqliteConnections):
    """The webhook half of SqliteStore."""

    def create_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO webhook_deliveries"
                " (orchestration_id, url, state, next_attempt_at, data) VALUES (?, ?, ?, ?, ?)",
                [(d.orchestration_id, d.url, d.state.value, d.next_attempt_at,
                  json.dumps(d.to_json())) for d in deliveries],
            )

    def webhook_deliveries(self, orchestration_id: str) -> list[WebhookDelivery]:
        rows = self._db.execute(
            "SELECT data FROM webhook_deliveries WHERE orchestration_id = ? ORDER BY url",
            (orchestration_id,),
        ).fetchall()
        return [WebhookDelivery.from_json(json.loads(r[0])) for r in rows]

    def due_webhook_deliveries(self, *, now: float, limit: int) -> list[WebhookDelivery]:
        rows = self._db.execute(
            "SELECT data FROM webhook_deliveries INDEXED BY webhook_deliveries_due"
            f" WHERE state = {PENDING} AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [WebhookDelivery.from_json(json.loads(r[0])) for r in rows]

    def claim_webhook_delivery(
        self, orchestration_id: str, url: str, *, now: float, hold: float, claimant: str
    ) -> WebhookDelivery | None:
        with self._write() as db:
            found = self._delivery(db, orchestration_id, url)
            if found is None or not may_claim(found, now):
                return None
            held = claimed(found, now=now, hold=hold, claimant=claimant)
            self._save(db, held)
            return held

    def record_webhook_attempt(self, delivery: WebhookDelivery, claimant: str) -> bool:
        with self._write() as db:
            found = self._delivery(db, delivery.orchestration_id, delivery.url)
            if found is None or found.claimant != claimant:
                return False
            self._save(db, delivery)
            return True

    @staticmethod
    def _delivery(db: sqlite3.Connection, orchestration_id: str, url: str
                  ) -> WebhookDelivery | None:
        row = db.execute(
            "SELECT data FROM webhook_deliveries WHERE orchestration_id = ? AND url = ?",
            (orchestration_id, url),
        ).fetchone()
        return None if row is None else WebhookDelivery.from_json(json.loads(row[0]))

    @staticmethod
    def _save(db: sqlite3.Connection, delivery: WebhookDelivery) -> None:
        db.execute(
            "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, data = ?"
            " WHERE orchestration_id = ? AND url = ?",
            (delivery.state.value, delivery.next_attempt_at, json.dumps(delivery.to_json()),
             delivery.orchestration_id, delivery.url),
        )
