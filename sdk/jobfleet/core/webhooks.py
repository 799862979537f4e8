"""Webhooks: which URLs may receive an orchestration's JobCompletedEvent, and how a
delivery moves from one attempt to the next. Pure rules; the sending is in
jobfleet/webhooks.py.

A delivery is one (orchestration, URL). It is created once the event is published,
attempted at once, then again after each backoff step until a 2xx answer, or until 24 h
after its first attempt have passed (then it is failed). An attempt is claimed by a
conditional write (`may_claim`), so two sweeps never send the same attempt at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from jobfleet.core.models import JsonObject
from jobfleet.errors import ConfigurationError, InvalidOption

MAX_WEBHOOKS = 10  # per orchestration
MAX_URL_LENGTH = 2048
# Seconds before attempt n + 1 (the first is at once), then hourly: for up to 24 h
# after the first attempt, which is followed by one last attempt at the 24 h mark.
BACKOFF = (30.0, 120.0, 600.0, 1800.0, 3600.0)
LATER_BACKOFF = 3600.0
RETRY_FOR_SECONDS = 24 * 3600.0

# JOBFLEET_WEBHOOK_ALLOW: "http" lets plain http URLs through, "private" addresses in
# private, loopback, CGNAT and unique-local ranges (a receiver on the same machine or
# VPC). Link-local addresses (169.254.0.0/16, fe80::/10: the metadata server) and the
# metadata server's names are refused whatever is allowed.
ALLOW_HTTP, ALLOW_PRIVATE = "http", "private"
ALLOW_CHOICES = (ALLOW_HTTP, ALLOW_PRIVATE)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.google.internal.", "metadata"})
LOCAL_NAMES = ("localhost", ".localhost", ".internal", ".local")

SECRET_PREFIX = "whsec_"
SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST: when (the sender's clock), how long it took, and the HTTP status it got
    or the error that stopped it (`refused`: the URL resolved to a refused address)."""

    at: float
    duration: float = 0.0
    status: int | None = None
    error: str = ""
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> JsonObject:
        return {"at": self.at, "duration": self.duration, "status": self.status,
                "error": self.error, "refused": self.refused}

    @classmethod
    def from_json(cls, data: JsonObject) -> Attempt:
        return cls(at=float(data["at"]), duration=float(data.get("duration") or 0.0),
                   status=data.get("status"), error=data.get("error") or "",
                   refused=bool(data.get("refused")))


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """The event of one orchestration to one URL, and every attempt made so far.

    `payload` is the event's JSON as first sent, so that every attempt sends the same
    bytes; `hold_until` and `claimant` mark an attempt in flight."""

    orchestration_id: str
    url: str
    event_id: str
    payload: str
    created_at: float
    state: DeliveryState = DeliveryState.PENDING
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    next_attempt_at: float | None = None
    hold_until: float | None = None
    claimant: str | None = None

    @property
    def key(self) -> str:
        return delivery_key(self.orchestration_id, self.url)

    def to_json(self) -> JsonObject:
        """Everything a store keeps."""
        return {
            "orchestration_id": self.orchestration_id, "url": self.url,
            "event_id": self.event_id, "payload": self.payload, "created_at": self.created_at,
            "state": self.state.value, "attempts": [a.to_json() for a in self.attempts],
            "next_attempt_at": self.next_attempt_at, "hold_until": self.hold_until,
            "claimant": self.claimant,
        }

    @classmethod
    def from_json(cls, data: JsonObject) -> WebhookDelivery:
        return cls(
            orchestration_id=data["orchestration_id"], url=data["url"],
            event_id=data["event_id"], payload=data["payload"],
            created_at=float(data["created_at"]), state=DeliveryState(data["state"]),
            attempts=tuple(Attempt.from_json(a) for a in data.get("attempts") or ()),
            next_attempt_at=data.get("next_attempt_at"), hold_until=data.get("hold_until"),
            claimant=data.get("claimant"),
        )

    def shown(self) -> JsonObject:
        """What the API, the CLI and the dashboard show: no payload, no claim."""
        return {
            "url": self.url, "event_id": self.event_id, "state": self.state.value,
            "created_at": self.created_at, "next_attempt_at": self.next_attempt_at,
            "attempts": [a.to_json() for a in self.attempts],
        }


def delivery_key(orchestration_id: str, url: str) -> str:
    """A document id for (orchestration, URL): URLs hold slashes, which ids may not."""
    return hashlib.sha256(f"{orchestration_id}\n{url}".encode()).hexdigest()[:40]


def new_delivery(
    orchestration_id: str, url: str, event_id: str, payload: str, now: float
) -> WebhookDelivery:
    return WebhookDelivery(orchestration_id=orchestration_id, url=url, event_id=event_id,
                           payload=payload, created_at=now, next_attempt_at=now)


# -- attempts ---------------------------------------------------------------------------


def may_claim(delivery: WebhookDelivery, now: float) -> bool:
    """Pending, due, and no attempt in flight (or its claimant's hold has lapsed)."""
    return (
        delivery.state is DeliveryState.PENDING
        and delivery.next_attempt_at is not None
        and delivery.next_attempt_at <= now
        and (delivery.hold_until is None or delivery.hold_until < now)
    )


def claimed(delivery: WebhookDelivery, *, now: float, hold: float, claimant: str
            ) -> WebhookDelivery:
    return replace(delivery, hold_until=now + hold, claimant=claimant)


def backoff_after(attempts: int) -> float:
    """Seconds from attempt number `attempts` (1-based) to the next."""
    return BACKOFF[attempts - 1] if attempts <= len(BACKOFF) else LATER_BACKOFF


def after_attempt(delivery: WebhookDelivery, attempt: Attempt) -> WebhookDelivery:
    """The delivery once `attempt` is recorded: delivered on a 2xx; failed when refused,
    or when 24 h have passed since its first attempt; else pending until the next step
    of the backoff (and at the 24 h mark at the latest). The claim is released."""
    attempts = (*delivery.attempts, attempt)
    done = replace(delivery, attempts=attempts, hold_until=None, claimant=None,
                   next_attempt_at=None)
    if attempt.ok:
        return replace(done, state=DeliveryState.DELIVERED)
    deadline = attempts[0].at + RETRY_FOR_SECONDS
    if attempt.refused or attempt.at >= deadline:
        return replace(done, state=DeliveryState.FAILED)
    following = min(attempt.at + backoff_after(len(attempts)), deadline)
    return replace(done, state=DeliveryState.PENDING, next_attempt_at=following)


# -- which URLs ---------------------------------------------------------------------------


def parse_allow(text: str | None) -> frozenset[str]:
    """JOBFLEET_WEBHOOK_ALLOW: comma-separated, of ALLOW_CHOICES."""
    chosen = frozenset(p.strip().lower() for p in (text or "").split(",") if p.strip())
    unknown = sorted(chosen - set(ALLOW_CHOICES))
    if unknown:
        raise ConfigurationError(
            f"JOBFLEET_WEBHOOK_ALLOW takes {' and/or '.join(ALLOW_CHOICES)} "
            f"(comma-separated), not {', '.join(unknown)}"
        )
    return chosen


def check_urls(urls: Any, allow: frozenset[str]) -> list[str]:
    """The webhook URLs of a kick-off, checked without resolving names (the caller does
    that too): InvalidOption naming the first refused one. Repeats are dropped."""
    if isinstance(urls, str) or not isinstance(urls, list | tuple):
        raise InvalidOption("webhooks must be a list of URLs")
    unique = list(dict.fromkeys(urls))
    if len(unique) > MAX_WEBHOOKS:
        raise InvalidOption(f"at most {MAX_WEBHOOKS} webhooks per orchestration, "
                            f"not {len(unique)}")
    for url in unique:
        check_url(url, allow)
    return unique


def check_url(url: Any, allow: frozenset[str]) -> str:
    """The host of a URL a webhook may be sent to; InvalidOption saying why not."""
    if not isinstance(url, str) or not url:
        raise InvalidOption(f"a webhook is a URL string, not {url!r}")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidOption(f"webhook URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise InvalidOption(f"webhook {url!r} is not a URL: {exc}") from None
    schemes = ("https", "http") if ALLOW_HTTP in allow else ("https",)
    if parts.scheme not in schemes:
        raise InvalidOption(
            f"webhook {url!r}: only https URLs are accepted"
            + ("" if parts.scheme != "http" else
               " (JOBFLEET_WEBHOOK_ALLOW=http lets plain http through, e.g. for a local "
               "receiver)")
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidOption(f"webhook {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidOption(f"webhook {url!r}: credentials in the URL are not accepted; "
                            "the signature authenticates the sender")
    if any(c.isspace() for c in url):
        raise InvalidOption(f"webhook {url!r} contains white space")
    why = host_refusal(host, allow)
    if why:
        raise InvalidOption(f"webhook {url!r} is refused: {why}")
    return host


def host_refusal(host: str, allow: frozenset[str]) -> str | None:
    """Why a URL's host (a name or an address literal) may not receive webhooks, or None.
    A name is judged by its form only; `address_refusal` judges what it resolves to."""
    host = host.strip("[]").lower()
    if host in METADATA_NAMES:
        return "it names the metadata server"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if ALLOW_PRIVATE not in allow and (host == LOCAL_NAMES[0]
                                           or host.rstrip(".").endswith(LOCAL_NAMES[1:])):
            return (f"{host} is a local or internal name ({_private_hint()})")
        return None
    return address_refusal(address, allow)


def address_refusal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: frozenset[str]
) -> str | None:
    """Why a webhook may not be sent to this address, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return f"{address} is link-local (the metadata server's range)"
    if address.is_multicast or address.is_unspecified:
        return f"{address} is not a unicast address"
    if address.is_global or ALLOW_PRIVATE in allow:
        return None
    return f"{address} is a private, loopback or reserved address ({_private_hint()})"


def _private_hint() -> str:
    return "JOBFLEET_WEBHOOK_ALLOW=private accepts private ranges"


# -- the signing secret ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretSetting:
    """JOBFLEET_WEBHOOK_SECRET: the secret itself (`whsec_...`), or the name of a Secret
    Manager version that holds it."""

    value: str = ""
    version_name: str = ""


def parse_secret(text: str | None) -> SecretSetting | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("projects/"):
        if not SECRET_VERSION.match(text):
            raise ConfigurationError(
                "JOBFLEET_WEBHOOK_SECRET names a Secret Manager version as "
                f"projects/PROJECT/secrets/SECRET/versions/VERSION (e.g. latest), not {text!r}"
            )
        return SecretSetting(version_name=text)
    if not text.startswith(SECRET_PREFIX):
        raise ConfigurationError(
            "JOBFLEET_WEBHOOK_SECRET must be a Standard Webhooks secret (whsec_ followed by "
            "base64) or a Secret Manager version name (projects/P/secrets/S/versions/latest)"
        )
    check_secret(text, "JOBFLEET_WEBHOOK_SECRET")
    return SecretSetting(value=text)


def check_secret(secret: str, where: str) -> None:
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(secret)
    except Exception as exc:  # binascii.Error, EmptyWebhookSecretError
        raise ConfigurationError(
            f"{where} is not a usable secret (whsec_ followed by base64): {exc}"
        ) from None
