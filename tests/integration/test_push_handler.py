"""The Pub/Sub push handler served by uvicorn over a socket, as a next-stage service runs it:
tokens signed by a local key whose certificate is served in Google's format (as in
tests/id_token_support.py), envelopes shaped as Pub/Sub pushes them."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from conftest import eventually
from id_token_support import KID, CertsServer
from jobfleet import JobCompletedEvent, Status
from jobfleet.api.push import PushHandler
from jobfleet.dev.emulators import free_port
from jobfleet.dev.id_tokens import SigningKey, service_account_claims, sign
from jobfleet.subscriptions import push_handler

ENDPOINT_PATH = "/pubsub/push"
PUSHER = "pubsub-push@proj.iam.gserviceaccount.com"


@dataclass
class Service:
    """A next stage: the push handler on a route of its own app, behind uvicorn."""

    url: str
    audience: str
    handler: PushHandler
    received: list[JobCompletedEvent]
    fail_next: list[Exception]


@pytest.fixture
def service(certs_server: CertsServer) -> Iterator[Service]:
    from starlette.applications import Starlette
    from starlette.routing import Route

    port = free_port()
    url = f"http://127.0.0.1:{port}{ENDPOINT_PATH}"
    received: list[JobCompletedEvent] = []
    fail_next: list[Exception] = []

    def load(event: JobCompletedEvent) -> None:
        if fail_next:
            raise fail_next.pop()
        received.append(event)

    handler = push_handler(load, audience=url, service_accounts=[PUSHER],
                           certs_url=certs_server.url)
    app = Starlette(routes=[Route(ENDPOINT_PATH, handler, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert eventually(lambda: server.started, timeout=10)
    yield Service(url, url, handler, received, fail_next)
    server.should_exit = True
    thread.join(10)


def completed(orchestration_id: str) -> JobCompletedEvent:
    return JobCompletedEvent(
        event_id=JobCompletedEvent.event_id_for(orchestration_id),
        orchestration_id=orchestration_id, job_name="extract", status=Status.COMPLETED,
        total=3, succeeded=3, failed=0, cancelled=0, tags={"pipeline": "nightly"},
        created_at=1_700_000_000.0, finished_at=1_700_000_010.0,
    )


def envelope(event: JobCompletedEvent, attempt: int = 1) -> dict[str, Any]:
    """What Pub/Sub POSTs for one message (wrapped format)."""
    data = base64.b64encode(json.dumps(event.to_json()).encode()).decode()
    return {
        "message": {
            "data": data, "attributes": event.attributes(),
            "messageId": "2070443601311540", "message_id": "2070443601311540",
            "publishTime": "2026-01-31T12:00:00.000Z",
        },
        "subscription": "projects/proj/subscriptions/transform",
        "deliveryAttempt": attempt,
    }


def token(key: SigningKey, audience: str, **claims: Any) -> str:
    return sign(key, KID, {**service_account_claims(PUSHER, audience), **claims})


def push(service: Service, body: Any, bearer: str | None, raw: bytes | None = None
         ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(service.url, content=content,
                      headers={**headers, "Content-Type": "application/json"}, timeout=10)


def test_a_push_with_pubsubs_token_reaches_the_callback_and_is_acked(
    service: Service, google_key: SigningKey
) -> None:
    event = completed("orch-1")
    reply = push(service, envelope(event), token(google_key, service.audience))
    assert reply.status_code == 204  # a 2xx is Pub/Sub's ack
    assert service.received == [event]

    again = push(service, envelope(event, attempt=2), token(google_key, service.audience))
    assert again.status_code == 204  # a redelivered copy is acked, not handled twice
    assert service.received == [event]
    assert (service.handler.handled, service.handler.duplicates) == (1, 1)


@pytest.mark.parametrize(
    ("forge", "status", "says"),
    [
        ("rogue_key", 401, "signature does not verify"),
        ("audience", 401, "another audience"),
        ("email", 403, "not allowed to use this push endpoint"),
        ("unverified", 403, "not verified"),
        ("issuer", 401, "not issued by accounts.google.com"),
        ("none", 401, "missing bearer token"),
    ],
)
def test_a_push_without_pubsubs_token_is_refused_and_the_callback_not_called(
    service: Service, google_key: SigningKey, rogue_key: SigningKey,
    forge: str, status: int, says: str,
) -> None:
    forged: dict[str, str | None] = {
        "rogue_key": token(rogue_key, service.audience),
        "audience": token(google_key, "https://someone-else.a.run.app/push"),
        "email": token(google_key, service.audience,
                       email="intruder@other.iam.gserviceaccount.com"),
        "unverified": token(google_key, service.audience, email_verified=False),
        "issuer": token(google_key, service.audience, iss="https://evil.example"),
        "none": None,
    }
    bearer = forged[forge]
    reply = push(service, envelope(completed("orch-forged")), bearer)
    assert reply.status_code == status
    assert says in reply.json()["error"]["message"]
    assert service.received == []


@pytest.mark.parametrize(
    ("body", "raw", "says"),
    [
        (None, b"not json", "not JSON"),
        ({"subscription": "projects/p/subscriptions/s"}, None, "no 'message'"),
        ({"message": {"data": "%%%not base64%%%"}}, None, "not base64"),
        ({"message": {"data": base64.b64encode(b'{"hello": 1}').decode()}}, None,
         "not a JobCompletedEvent"),
        ({"message": {"attributes": {}}}, None, "no 'data'"),
    ],
)
def test_a_malformed_push_is_a_400_and_the_callback_not_called(
    service: Service, google_key: SigningKey, body: Any, raw: bytes | None, says: str
) -> None:
    reply = push(service, body, token(google_key, service.audience), raw=raw)
    assert reply.status_code == 400
    assert says in reply.json()["error"]["message"]
    assert service.received == []


def test_a_failing_callback_answers_5xx_so_pubsub_delivers_again(
    service: Service, google_key: SigningKey
) -> None:
    event = completed("orch-flaky")
    service.fail_next.append(ConnectionError("the warehouse is down"))
    first = push(service, envelope(event), token(google_key, service.audience))
    assert first.status_code == 500
    assert "warehouse" not in first.text  # the service's error stays in its logs
    assert service.received == []

    second = push(service, envelope(event, attempt=2), token(google_key, service.audience))
    assert second.status_code == 204
    assert service.received == [event]
    assert (service.handler.failures, service.handler.handled) == (1, 1)


def test_only_post_is_answered(service: Service) -> None:
    assert httpx.get(service.url, timeout=10).status_code == 405
