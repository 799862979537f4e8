"""Pub/Sub push: an ASGI app that hands each pushed JobCompletedEvent to a callback, for a
next stage that is a service rather than a loop.

Pub/Sub POSTs every message as a JSON envelope with an OIDC token of the subscription's
push service account, and reads the answer as the ack: 2xx acks; anything else is a nack,
delivered again after the subscription's retry backoff and, past its maximum delivery
attempts, moved to its dead-letter topic. So the answers are:

- 204: the callback returned, or the event is a duplicate of one this process handled;
- 401 (the token proves nothing) or 403 (it proves an identity not allowed): the callback
  is not called; 503 when Google's signing certificates are out of reach;
- 400: not a push envelope, or its data is not a JobCompletedEvent (delivering it again
  cannot help, so it ends in the dead-letter topic); 413 past `max_body_bytes`;
- 500: the callback raised.

The token is checked by the API's own verifier (`GoogleIdTokens`): issuer
accounts.google.com, the audience, a verified e-mail among `service_accounts`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobfleet.api.auth import AuthError, GoogleIdTokens, bearer_token
from jobfleet.api.problems import problem
from jobfleet.core.deliveries import RECENT_IDS, RecentIds, decode_event
from jobfleet.core.models import JobCompletedEvent

log = logging.getLogger(__name__)

# An event is a few kilobytes; Pub/Sub's largest message (10 MB) is about 13.4 MB as base64.
MAX_BODY_BYTES = 1024 * 1024

Callback = Callable[[JobCompletedEvent], object]


class BadPush(ValueError):
    """The body is not a Pub/Sub push envelope carrying a JobCompletedEvent."""


@dataclass(frozen=True)
class PushedMessage:
    """What one push delivered, beside its event."""

    event: JobCompletedEvent
    message_id: str
    subscription: str
    attributes: dict[str, str] = field(default_factory=dict)
    delivery_attempt: int | None = None  # set by Pub/Sub when a dead-letter policy is on


def parse_envelope(body: bytes) -> PushedMessage:
    """The wrapped push format: `{"message": {"data", "attributes", "messageId"},
    "subscription", "deliveryAttempt"}`, with `data` in base64."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadPush("the body is not JSON") from None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise BadPush("the body is not a Pub/Sub push envelope: no 'message' object")
    data = message.get("data")
    if not isinstance(data, str):
        raise BadPush("the pushed message has no 'data'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadPush("the pushed message's 'data' is not base64") from None
    try:
        event = decode_event(raw)
    except (ValueError, KeyError, TypeError):
        raise BadPush("the pushed message is not a JobCompletedEvent") from None
    attributes = message.get("attributes") or {}
    attempt = envelope.get("deliveryAttempt")
    return PushedMessage(
        event=event,
        message_id=str(message.get("messageId") or message.get("message_id") or ""),
        subscription=str(envelope.get("subscription") or ""),
        attributes={str(k): str(v) for k, v in attributes.items()}
        if isinstance(attributes, dict) else {},
        delivery_attempt=attempt if isinstance(attempt, int) else None,
    )


class PushHandler:
    """The ASGI app `push_handler` returns; it answers POST on any path it is given."""

    def __init__(
        self,
        callback: Callback,
        verifier: GoogleIdTokens,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        remember: int = RECENT_IDS,
    ) -> None:
        self.callback = callback
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.handled = 0
        self.duplicates = 0
        self.failures = 0
        self._done = RecentIds(remember)
        self._in_flight: dict[str, asyncio.Future[bool]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone by uvicorn: nothing to set up
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if request.method != "POST":
            return problem(405, "method_not_allowed", "Pub/Sub pushes with POST",
                           headers={"Allow": "POST"})
        try:
            token = bearer_token(request.headers.get("authorization"))
            await run_in_threadpool(self.verifier.authenticate, token)
        except AuthError as refused:
            code = {401: "unauthenticated", 403: "forbidden"}.get(refused.status, "unavailable")
            return problem(refused.status, code, str(refused))
        try:
            body = await self._body(request)
        except ClientDisconnect:
            return Response(status_code=400)
        if body is None:
            return problem(413, "too_large", f"the push is larger than {self.max_body_bytes} bytes")
        try:
            pushed = parse_envelope(body)
        except BadPush as bad:
            log.error("refused a push that is not a JobCompletedEvent: %s", bad)
            return problem(400, "bad_push", str(bad))
        if await self._deliver(pushed):
            return Response(status_code=204)
        return problem(500, "callback_failed", "the callback raised; Pub/Sub delivers again")

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None past the limit (read no further than it)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _deliver(self, pushed: PushedMessage) -> bool:
        """Whether the push may be acked. A copy of an event in flight waits for the first
        copy's outcome, as `EventSubscriber` does."""
        event_id = pushed.event.event_id
        while True:
            if event_id in self._done:
                self.duplicates += 1
                return True
            first = self._in_flight.get(event_id)
            if first is None:
                break
            if not await asyncio.shield(first):
                return False  # the first copy failed; this one comes back for another try
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[event_id] = outcome
        ok = False
        try:
            await self._call(pushed.event)
            ok = True
        except Exception:
            self.failures += 1
            log.exception(
                "push callback failed on event %s (message %s, delivery %s); Pub/Sub "
                "delivers it again", event_id, pushed.message_id, pushed.delivery_attempt or "?",
            )
        finally:
            if ok:
                self.handled += 1
                self._done.add(event_id)
            del self._in_flight[event_id]
            outcome.set_result(ok)
        return ok

    async def _call(self, event: JobCompletedEvent) -> None:
        if inspect.iscoroutinefunction(self.callback):
            await self.callback(event)
            return
        result = await run_in_threadpool(self.callback, event)
        if inspect.isawaitable(result):
            await result


def push_handler(
    callback: Callback,
    *,
    audience: str,
    service_accounts: Iterable[str] | str,
    certs_url: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> PushHandler:
    """An ASGI app for a Pub/Sub push subscription (`ensure_subscription(...,
    push_endpoint=..., push_service_account=...)`) that calls `callback` (sync, run in a
    thread, or async) with each JobCompletedEvent.

    `audience` is the audience of the subscription's OIDC token (by default its push
    endpoint's URL); `service_accounts` the push service accounts allowed (one, or
    several comma-separated). Give it a route of a Starlette or FastAPI app,
    `Route("/pubsub/push", handler, methods=["POST"])` in its routes, or serve it alone
    (`uvicorn.run(handler)`), where it answers on every path.
    """
    verifier = GoogleIdTokens(
        audience, service_accounts, certs_url=certs_url,
        guarding="this push endpoint",
        settings=("push_handler(audience=...)", "push_handler(service_accounts=...)"),
    )
    return PushHandler(callback, verifier, max_body_bytes=max_body_bytes)


__all__ = ["BadPush", "PushHandler", "PushedMessage", "parse_envelope", "push_handler"]
