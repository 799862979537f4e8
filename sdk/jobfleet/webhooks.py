"""Sending an orchestration's JobCompletedEvent to the webhook URLs it names (rules in
core/webhooks.py).

`enqueue` runs in the follow-up of a publish (`JobFleet.advance`, called by `settle`
while it holds the publish claim): it creates one delivery per URL (a repeat creates
nothing) and makes each first attempt at once. A failed attempt never fails the settle;
`deliver_due`, called by every sweep, makes the retries. Each attempt is claimed by a
conditional write first, so two processes never send the same attempt at once; a
sender that dies after sending and before recording leaves the claim to lapse, and the
attempt is made again: at least once, with the same `webhook-id`.

Every request is signed per Standard Webhooks (`webhook-id` = the event id,
`webhook-timestamp`, `webhook-signature`), sent to the address the URL's name resolved
to once that address was checked (no redirect followed), so that a name that resolves
to a private address is refused, and recorded so, never sent.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from jobfleet.core.models import JobCompletedEvent, OrchestrationSnapshot
from jobfleet.core.ports import Store
from jobfleet.core.webhooks import (
    Attempt,
    SecretSetting,
    WebhookDelivery,
    address_refusal,
    after_attempt,
    check_secret,
    check_urls,
    new_delivery,
)
from jobfleet.errors import ConfigurationError, InvalidOption

if TYPE_CHECKING:
    from jobfleet.config import Settings
    from jobfleet.fleet import JobFleet

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_SECONDS = 10.0  # to connect, and then to each read of the answer
ATTEMPT_HOLD_SECONDS = 60.0  # an attempt's claim: longer than the attempt can take
RESOLVE_TIMEOUT_SECONDS = 5.0  # a kick-off's look-up of a webhook's host name
DUE_PER_SWEEP = 200  # deliveries a sweep attempts at most; the next sweep takes the rest
SENDERS = 8  # attempts in flight at once
SECRET_CACHE_SECONDS = 600.0  # a Secret Manager version is read again after this


class Refused(Exception):
    """The URL's host resolved to an address webhooks may not be sent to."""


# -- at kick-off ------------------------------------------------------------------------------


def check_webhooks(urls: Sequence[str], settings: Settings) -> list[str]:
    """The webhooks of a kick-off, or InvalidOption naming what is refused: the URL's
    form, its host, and what a host name resolves to now (a name that does not resolve
    is let through: the address is checked again before each attempt)."""
    if isinstance(urls, str):
        raise InvalidOption("webhooks must be a list of URLs, not one string")
    checked = check_urls(list(urls), settings.webhook_allow)
    if checked and settings.webhook_secret is None:
        raise InvalidOption(
            "webhooks are signed, and no signing secret is configured: set "
            "JOBFLEET_WEBHOOK_SECRET to a Standard Webhooks secret (whsec_...) or to a "
            "Secret Manager version (projects/P/secrets/S/versions/latest)"
        )
    for url in checked:
        parts = urlsplit(url)
        try:
            addresses = _resolve_within(parts.hostname or "", _port(parts.scheme, parts.port),
                                        RESOLVE_TIMEOUT_SECONDS)
        except OSError:
            continue
        for address in addresses:
            why = address_refusal(address, settings.webhook_allow)
            if why:
                raise InvalidOption(f"webhook {url!r} is refused: its host resolves to {why}")
    return checked


# -- after a publish, and in the sweep -----------------------------------------------------------


def enqueue(fleet: JobFleet, snap: OrchestrationSnapshot) -> None:
    """Create the deliveries of an ended orchestration (once) and make their first
    attempts. A store failure while creating them raises, so that the publish is not
    recorded and the next settle or sweep does this again; an attempt never raises."""
    if not snap.webhooks or not snap.status.terminal:
        return
    event = JobCompletedEvent.for_orchestration(snap)
    payload = json.dumps(event.to_json())
    now = time.time()
    store = fleet.backend.store
    store.create_webhook_deliveries(
        [new_delivery(snap.id, url, event.event_id, payload, now) for url in snap.webhooks]
    )
    try:
        attempt_all(store, fleet.settings, [(snap.id, url) for url in snap.webhooks], now)
    except Exception as exc:
        log.warning("webhooks of orchestration %s: first attempts failed (%s); the sweep "
                    "retries them", snap.id, exc)


def deliver_due(fleet: JobFleet, now: float | None = None) -> Counter[str]:
    """Attempt every delivery due by `now` (up to DUE_PER_SWEEP); how many ended in each
    state, and `skipped` for those another process claimed first."""
    now = time.time() if now is None else now
    store = fleet.backend.store
    due = store.due_webhook_deliveries(now=now, limit=DUE_PER_SWEEP)
    return attempt_all(store, fleet.settings, [(d.orchestration_id, d.url) for d in due], now)


def deliveries(fleet: JobFleet, orchestration_id: str) -> list[WebhookDelivery]:
    """An orchestration's deliveries with their attempts; UnknownOrchestration if none."""
    store = fleet.backend.store
    store.get_orchestration(orchestration_id)
    return store.webhook_deliveries(orchestration_id)


def attempt_all(
    store: Store, settings: Settings, which: Sequence[tuple[str, str]], now: float
) -> Counter[str]:
    """Claim and attempt each (orchestration, URL), a few at once."""
    done: Counter[str] = Counter()
    if not which:
        return done
    secret, problem = _secret(settings.webhook_secret)
    claimant = uuid.uuid4().hex

    def one(key: tuple[str, str]) -> str:
        held = store.claim_webhook_delivery(key[0], key[1], now=now,
                                            hold=ATTEMPT_HOLD_SECONDS, claimant=claimant)
        if held is None:
            return "skipped"
        attempt = (Attempt(at=now, error=problem) if problem
                   else send(held, secret, settings.webhook_allow, now))
        ended = after_attempt(held, attempt)
        if not store.record_webhook_attempt(ended, claimant):
            return "skipped"
        _log(ended, attempt)
        return ended.state.value

    with ThreadPoolExecutor(min(SENDERS, len(which)), thread_name_prefix="jobfleet-webhook") \
            as pool:
        for state in pool.map(one, which):
            done[state] += 1
    return done


def _log(delivery: WebhookDelivery, attempt: Attempt) -> None:
    n = len(delivery.attempts)
    if attempt.ok:
        log.info("webhook %s of orchestration %s delivered (attempt %d)",
                 delivery.url, delivery.orchestration_id, n)
    else:
        log.warning("webhook %s of orchestration %s: attempt %d failed (%s); %s",
                    delivery.url, delivery.orchestration_id, n, attempt.error,
                    "giving up" if delivery.next_attempt_at is None
                    else f"next attempt at {datetime.fromtimestamp(delivery.next_attempt_at, UTC)}")


# -- one attempt ---------------------------------------------------------------------------------


def send(delivery: WebhookDelivery, secret: str, allow: frozenset[str], now: float) -> Attempt:
    """POST the delivery's event once, signed now; the attempt, never an exception."""
    started = time.monotonic()
    body = delivery.payload.encode()
    try:
        headers = {
            "content-type": "application/json",
            "user-agent": f"jobfleet/{version('jobfleet')}",
            **signature_headers(secret, delivery.event_id, delivery.payload),
        }
        status = post(delivery.url, body, headers, allow=allow,
                      timeout=ATTEMPT_TIMEOUT_SECONDS)
    except Refused as exc:
        return Attempt(at=now, duration=time.monotonic() - started,
                       error=f"refused, not sent: {exc}", refused=True)
    except Exception as exc:
        return Attempt(at=now, duration=time.monotonic() - started,
                       error=f"{type(exc).__name__}: {exc}")
    error = "" if 200 <= status < 300 else f"HTTP {status}"
    return Attempt(at=now, duration=time.monotonic() - started, status=status, error=error)


def signature_headers(secret: str, event_id: str, payload: str) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` (the wall clock: receivers refuse a stale one)
    and `webhook-signature`, per Standard Webhooks."""
    at = datetime.now(tz=UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, payload),
    }


def post(url: str, body: bytes, headers: dict[str, str], *, allow: frozenset[str],
         timeout: float) -> int:
    """The HTTP status of one POST to `url`, made to an address its host resolves to
    once every such address is allowed (Refused otherwise). Redirects are not followed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", _port(parts.scheme, parts.port)
    addresses = _resolve(host, port)
    for address in addresses:
        why = address_refusal(address, allow)
        if why:
            raise Refused(f"{host} resolves to {why}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPS(host, port, str(addresses[0]), timeout)
    else:
        connection = _PinnedHTTP(host, port, str(addresses[0]), timeout)
    try:
        connection.request("POST", target, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to
    by the time of the connect; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As _PinnedHTTP, with TLS verified for the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 80)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _resolve(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                              for info in infos))


def _resolve_within(host: str, port: int, timeout: float) -> list[Address]:
    """`_resolve`, giving up (OSError) after `timeout`: a kick-off must not hang on DNS."""
    found: list[list[Address]] = []
    failed: list[OSError] = []

    def look_up() -> None:
        try:
            found.append(_resolve(host, port))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=look_up, name="jobfleet-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if found:
        return found[0]
    raise failed[0] if failed else OSError(f"looking up {host} took over {timeout:.0f} s")


# -- the signing secret ---------------------------------------------------------------------------

_secrets: dict[str, tuple[float, str]] = {}  # Secret Manager version: (read at, secret)
_secrets_lock = threading.Lock()


def _secret(setting: SecretSetting | None) -> tuple[str, str]:
    """The signing secret, or "" and why there is none (recorded as the attempt's error,
    so that a process without the secret leaves a visible trace and the sweep retries)."""
    if setting is None:
        return "", "no signing secret here: set JOBFLEET_WEBHOOK_SECRET where settles run"
    try:
        return signing_secret(setting), ""
    except Exception as exc:
        return "", f"the signing secret could not be read: {type(exc).__name__}: {exc}"


def signing_secret(setting: SecretSetting) -> str:
    if setting.value:
        return setting.value
    name = setting.version_name
    with _secrets_lock:
        cached = _secrets.get(name)
        if cached is not None and time.monotonic() - cached[0] < SECRET_CACHE_SECONDS:
            return cached[1]
    secret = read_secret_version(name)
    with _secrets_lock:
        _secrets[name] = (time.monotonic(), secret)
    return secret


def read_secret_version(name: str) -> str:
    """The whsec_ secret held by a Secret Manager version (the caller's credentials need
    roles/secretmanager.secretAccessor on it)."""
    try:
        from google.cloud import secretmanager
    except ImportError:
        raise ConfigurationError(
            f"JOBFLEET_WEBHOOK_SECRET names a Secret Manager version ({name}), which needs "
            "the Google Cloud extra: pip install 'jobfleet[gcp]'"
        ) from None
    client: Any = secretmanager.SecretManagerServiceClient()
    secret = str(client.access_secret_version(name=name).payload.data.decode()).strip()
    check_secret(secret, f"the Secret Manager version {name}")
    return secret

