"""The Store port's webhook half (core/ports.py), run against every Store adapter with
the fixtures of conftest.py: deliveries created once, found when due by an indexed
query, claimed by one caller of many, recorded only by their claimant."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace

from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions
from jobfleet.core.ports import Store
from jobfleet.core.webhooks import (
    Attempt,
    DeliveryState,
    WebhookDelivery,
    after_attempt,
    new_delivery,
)

from .conftest import StoreFactory

T0 = 1_700_000_000.0
HOLD = 60.0
HOOKS = ["https://a.example.com/done", "https://b.example.com/done?x=1"]


def delivery(url: str = HOOKS[0], oid: str | None = None, at: float = T0) -> WebhookDelivery:
    return new_delivery(oid or str(uuid.uuid4()), url, "event-1", '{"status": "Completed"}', at)


def test_an_orchestration_keeps_its_webhooks(store: Store) -> None:
    new = NewOrchestration(
        id=str(uuid.uuid4()), job_name="greet", tags={}, created_at=T0, webhooks=HOOKS,
        options=RunOptions(retries=0, backoff=1.0, timeout=None, parallelism=1),
    )
    store.create_orchestration(new, [[NewInstance(str(uuid.uuid4()), 0, 0, {})]])
    assert store.get_orchestration(new.id).webhooks == HOOKS
    [listed] = store.list_orchestrations()
    assert listed.webhooks == HOOKS


def test_deliveries_are_created_once_and_listed_by_url(store: Store) -> None:
    oid = str(uuid.uuid4())
    first = [delivery(url, oid) for url in reversed(HOOKS)]
    store.create_webhook_deliveries(first)
    store.create_webhook_deliveries([replace(d, payload="{}", created_at=T0 + 5) for d in first])
    listed = store.webhook_deliveries(oid)
    assert [d.url for d in listed] == HOOKS
    assert all(d.payload == '{"status": "Completed"}' and d.created_at == T0 for d in listed)
    assert store.webhook_deliveries(str(uuid.uuid4())) == []


def test_due_deliveries_are_the_pending_ones_whose_time_has_come(store: Store) -> None:
    soon, later, done = delivery(at=T0), delivery(at=T0 + 100), delivery(at=T0)
    store.create_webhook_deliveries([later, soon, done])
    held = store.claim_webhook_delivery(done.orchestration_id, done.url, now=T0, hold=HOLD,
                                        claimant="c")
    assert held is not None
    delivered = after_attempt(held, Attempt(at=T0, status=204))
    assert store.record_webhook_attempt(delivered, "c")
    due = store.due_webhook_deliveries(now=T0 + 1, limit=10)
    assert [d.orchestration_id for d in due] == [soon.orchestration_id]
    due = store.due_webhook_deliveries(now=T0 + 100, limit=10)
    assert [d.orchestration_id for d in due] == [soon.orchestration_id, later.orchestration_id]
    assert len(store.due_webhook_deliveries(now=T0 + 100, limit=1)) == 1


def test_of_concurrent_claimants_one_gets_the_attempt(store_factory: StoreFactory) -> None:
    first = store_factory.open()
    d = delivery()
    first.create_webhook_deliveries([d])
    won: list[str] = []

    def claim(n: int) -> None:
        store = store_factory.open()
        if store.claim_webhook_delivery(d.orchestration_id, d.url, now=T0, hold=HOLD,
                                        claimant=f"c{n}") is not None:
            won.append(f"c{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    [stored] = first.webhook_deliveries(d.orchestration_id)
    assert stored.claimant == won[0] and stored.hold_until == T0 + HOLD
    # Held: nobody else may claim it until the hold lapses; then one may.
    assert first.claim_webhook_delivery(d.orchestration_id, d.url, now=T0 + HOLD - 1,
                                        hold=HOLD, claimant="late") is None
    assert first.claim_webhook_delivery(d.orchestration_id, d.url, now=T0 + HOLD + 1,
                                        hold=HOLD, claimant="late") is not None


def test_only_the_claimant_records_its_attempt(store: Store) -> None:
    d = delivery()
    store.create_webhook_deliveries([d])
    held = store.claim_webhook_delivery(d.orchestration_id, d.url, now=T0, hold=HOLD,
                                        claimant="first")
    assert held is not None
    retaken = store.claim_webhook_delivery(d.orchestration_id, d.url, now=T0 + HOLD + 1,
                                           hold=HOLD, claimant="second")
    assert retaken is not None
    failed = after_attempt(held, Attempt(at=T0, status=500, error="HTTP 500", duration=0.2))
    assert not store.record_webhook_attempt(failed, "first")
    ok = after_attempt(retaken, Attempt(at=T0 + HOLD + 1, status=200, duration=0.1))
    assert store.record_webhook_attempt(ok, "second")
    [stored] = store.webhook_deliveries(d.orchestration_id)
    assert stored.state is DeliveryState.DELIVERED and stored.claimant is None
    assert stored.attempts == (Attempt(at=T0 + HOLD + 1, status=200, duration=0.1),)
    assert store.due_webhook_deliveries(now=T0 + 10 * HOLD, limit=10) == []


def test_a_failed_attempt_is_due_again_after_its_backoff(store: Store) -> None:
    d = delivery()
    store.create_webhook_deliveries([d])
    held = store.claim_webhook_delivery(d.orchestration_id, d.url, now=T0, hold=HOLD,
                                        claimant="c")
    assert held is not None
    assert store.record_webhook_attempt(
        after_attempt(held, Attempt(at=T0, error="ConnectionRefusedError")), "c")
    assert store.due_webhook_deliveries(now=T0 + 29, limit=10) == []
    [due] = store.due_webhook_deliveries(now=T0 + 30, limit=10)
    assert due.state is DeliveryState.PENDING and due.attempts[0].error
