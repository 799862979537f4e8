"""Webhooks on the embedded backend, to a real receiver on loopback: signed so that
`standardwebhooks` verifies them, retried by the sweep on an injected clock until the
receiver answers 2xx or 24 h have passed, every attempt recorded and visible (SDK, API,
CLI); private URLs refused; duplicate settles and a settler killed mid-request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import TESTS, Cli, ServerFactory
from jobfleet import JobFleet, Status
from jobfleet.core.completion import settle
from jobfleet.core.models import JobCompletedEvent
from jobfleet.core.webhooks import RETRY_FOR_SECONDS, DeliveryState
from jobfleet.errors import InvalidOption
from jobfleet.webhooks import deliveries
from webhook_support import SECRET, ended_orchestration, receiver

GREETINGS = [{"name": "a", "count": 1}, {"name": "b", "count": 2}]


@pytest.fixture
def allowed(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A signing secret, and plain http to loopback allowed (the receiver's address)."""
    monkeypatch.setenv("JOBFLEET_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("JOBFLEET_WEBHOOK_ALLOW", "http,private")
    return home


@pytest.fixture
def hooks_fleet(allowed: Path) -> Iterator[JobFleet]:
    with JobFleet() as fleet:
        yield fleet


def test_a_receiver_that_fails_twice_gets_a_verifiable_event_on_the_third_attempt(
    hooks_fleet: JobFleet, serve: ServerFactory, cli: Cli,
) -> None:
    fleet = hooks_fleet
    with receiver([500, 500, 200]) as hook:
        run = fleet.kick_off("greet", GREETINGS, tags={"team": "data"}, webhooks=[hook.url])
        snap = run.wait(timeout=120)
        assert snap.status is Status.COMPLETED and snap.webhooks == [hook.url]
        [first] = deliveries(fleet, run.id)  # attempted at once by the worker's settle
        assert [a.status for a in first.attempts] == [500]
        assert first.state is DeliveryState.PENDING
        assert first.next_attempt_at == pytest.approx(first.attempts[0].at + 30)

        fleet.sweep(now=first.attempts[0].at + 10)  # not due yet
        assert len(hook.received) == 1
        fleet.sweep(now=first.attempts[0].at + 30)
        fleet.sweep(now=first.attempts[0].at + 30 + 120)
        assert len(hook.received) == 3

    [done] = deliveries(fleet, run.id)
    assert done.state is DeliveryState.DELIVERED and done.next_attempt_at is None
    assert [a.status for a in done.attempts] == [500, 500, 200]
    assert [a.error for a in done.attempts] == ["HTTP 500", "HTTP 500", ""]
    event = JobCompletedEvent.for_orchestration(snap)
    for request in hook.received:  # every attempt signed, with the event id as webhook-id
        assert request.error == ""
        assert request.headers["webhook-id"] == event.event_id
        assert request.verified == event.to_json()
        assert request.headers["content-type"] == "application/json"

    server = serve()
    body = httpx.get(f"{server.url}/v1/orchestrations/{run.id}/webhooks", timeout=30).json()
    [shown] = body["webhooks"]
    assert shown["state"] == "delivered" and shown["url"] == hook.url
    assert [a["status"] for a in shown["attempts"]] == [500, 500, 200]
    assert httpx.get(f"{server.url}/v1/orchestrations/nope/webhooks", timeout=30
                     ).status_code == 404
    printed = cli("webhooks", run.id)
    assert printed.returncode == 0, printed.stderr
    assert "delivered  (3 attempts)" in printed.stdout and "HTTP 500" in printed.stdout


def test_a_receiver_that_never_answers_2xx_is_given_up_on_after_24_hours(
    hooks_fleet: JobFleet,
) -> None:
    fleet = hooks_fleet
    with receiver([503]) as hook:
        run = fleet.kick_off("greet", GREETINGS[:1], webhooks=[hook.url])
        run.wait(timeout=120)
        [delivery] = deliveries(fleet, run.id)
        start = delivery.attempts[0].at
        while delivery.state is DeliveryState.PENDING:
            assert delivery.next_attempt_at is not None
            fleet.sweep(now=delivery.next_attempt_at)
            [delivery] = deliveries(fleet, run.id)
    offsets = [round(a.at - start) for a in delivery.attempts]
    assert offsets[:7] == [0, 30, 150, 750, 2550, 6150, 9750]  # then hourly
    assert offsets[-1] == RETRY_FOR_SECONDS  # one last attempt at the 24 h mark
    assert len(delivery.attempts) == len(hook.received) == 29
    assert delivery.state is DeliveryState.FAILED and delivery.next_attempt_at is None
    fleet.sweep(now=start + 2 * RETRY_FOR_SECONDS)
    assert len(hook.received) == 29  # failed for good


@pytest.mark.parametrize("url", [
    "https://10.0.0.1/hook",
    "https://169.254.169.254/computeMetadata/v1/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://localhost/hook",
    "https://[::1]/hook",
    "https://100.64.0.1/hook",  # CGNAT
    "https://[fd00::1]/hook",  # unique local
    "https://2130706433/hook",  # a name (to urlsplit) that resolves to 127.0.0.1
    "http://93.184.216.34/hook",  # public, but not https
])
def test_private_and_plain_http_urls_are_refused_at_kick_off_and_nothing_is_created(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("JOBFLEET_WEBHOOK_SECRET", SECRET)
    with JobFleet() as configured, pytest.raises(InvalidOption, match="webhook"):
        configured.kick_off("greet", GREETINGS, webhooks=[url])
    assert fleet.history() == []


def test_a_host_name_that_resolves_to_loopback_is_refused(
    fleet: JobFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = socket.gethostname()
    if socket.gethostbyname(name).split(".")[0] not in {"127", "10", "172", "192"}:
        pytest.skip(f"this machine's name {name} resolves to a public address")
    monkeypatch.setenv("JOBFLEET_WEBHOOK_SECRET", SECRET)
    with JobFleet() as configured, pytest.raises(InvalidOption, match="resolves to"):
        configured.kick_off("greet", GREETINGS, webhooks=[f"https://{name}/hook"])
    assert fleet.history() == []


def test_the_metadata_server_stays_refused_when_private_ranges_are_allowed(
    allowed: Path,
) -> None:
    with JobFleet() as fleet, pytest.raises(InvalidOption, match="link-local"):
        fleet.kick_off("greet", GREETINGS, webhooks=["http://169.254.169.254/"])


def test_webhooks_without_a_signing_secret_are_refused_with_what_to_set(fleet: JobFleet) -> None:
    with pytest.raises(InvalidOption, match="JOBFLEET_WEBHOOK_SECRET"):
        fleet.kick_off("greet", GREETINGS, webhooks=["https://hooks.example.com/done"])
    assert fleet.history() == []


def test_a_name_that_resolves_to_a_private_address_when_sent_is_recorded_not_sent(
    hooks_fleet: JobFleet, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBFLEET_WEBHOOK_ALLOW")
    with JobFleet() as fleet, receiver([200]) as hook:
        port = hook.url.split(":")[2].split("/")[0]
        oid = ended_orchestration(fleet, [f"https://2130706433:{port}/hook"])
        settle(fleet.backend.store, fleet.backend.bus, oid, fleet.advance)
        [delivery] = deliveries(fleet, oid)
        assert hook.received == []
    assert delivery.state is DeliveryState.FAILED
    [attempt] = delivery.attempts
    assert attempt.refused and "127.0.0.1 is a private, loopback" in attempt.error


def test_an_end_settled_three_times_at_once_makes_one_delivery_and_one_request(
    hooks_fleet: JobFleet,
) -> None:
    fleet = hooks_fleet
    with receiver([200]) as hook:
        oid = ended_orchestration(fleet, [hook.url])
        store, bus = fleet.backend.store, fleet.backend.bus
        threads = [threading.Thread(target=settle, args=(store, bus, oid, fleet.advance))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fleet.orchestration(oid).wait(30).event_published
        [delivery] = deliveries(fleet, oid)
        assert len(hook.received) == 1
    assert delivery.state is DeliveryState.DELIVERED and len(delivery.attempts) == 1


def test_a_settle_without_the_follow_up_leaves_a_webhook_orchestration_to_one_with_it(
    hooks_fleet: JobFleet,
) -> None:
    fleet = hooks_fleet
    with receiver([200]) as hook:
        oid = ended_orchestration(fleet, [hook.url])
        snap = settle(fleet.backend.store, fleet.backend.bus, oid)  # no advance
        assert snap.status is Status.COMPLETED and not snap.event_published
        assert hook.received == []
        fleet.sweep()
        assert fleet.orchestration(oid).status().event_published
        assert len(hook.received) == 1


def test_a_settler_killed_mid_request_is_finished_by_the_sweep_with_the_same_webhook_id(
    hooks_fleet: JobFleet,
) -> None:
    fleet = hooks_fleet
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    script = str(TESTS / "webhook_support.py")
    with receiver([200]) as hook:
        oid = ended_orchestration(fleet, [hook.url])
        settler = subprocess.Popen([sys.executable, script, oid], env=env)
        hook.kill_pid = settler.pid  # killed once its request has arrived
        assert settler.wait(60) == -signal.SIGKILL
        assert len(hook.received) == 1
        assert not fleet.orchestration(oid).status().event_published
        [unrecorded] = deliveries(fleet, oid)
        assert unrecorded.attempts == () and unrecorded.claimant is not None
        time.sleep(1.2)  # the dead settler's publish claim and attempt hold run out
        fleet.sweep()
        assert fleet.orchestration(oid).status().event_published
        [delivery] = deliveries(fleet, oid)
        assert len(hook.received) == 2
    assert delivery.state is DeliveryState.DELIVERED and len(delivery.attempts) == 1
    first, second = hook.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert first.verified == second.verified
