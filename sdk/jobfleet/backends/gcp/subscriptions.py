"""Topics and subscriptions on Pub/Sub: created when missing, and kept as asked.

A subscription's topic and filter cannot change after creation, so an existing one that
differs there is refused. Its delivery settings can: the ack deadline, the retry backoff,
the dead-letter policy and the push endpoint are updated in place when they differ, so
`ensure_subscription` may run on every start of a next stage and its settings follow the
code.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1 import types as pubsub_types

from jobfleet.core.deliveries import (
    DEFAULT_DELIVERY_ATTEMPTS,
    MAX_BACKOFF,
    MIN_BACKOFF,
    check_backoff,
    check_delivery_attempts,
    check_name,
)
from jobfleet.errors import InvalidSubscription, SubscriptionMismatch

ACK_DEADLINE = 60  # seconds a handler may run before Pub/Sub redelivers (the client extends it)
MIN_ACK_DEADLINE, MAX_ACK_DEADLINE = 10, 600
DEAD_LETTER_RETENTION = 7 * 24 * 3600  # Pub/Sub's longest: dead letters wait a week for a look
MUTABLE = ("ack_deadline_seconds", "retry_policy", "dead_letter_policy", "push_config")


def topic_path(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    return f"projects/{project}/subscriptions/{subscription}"


def ensure_topic(publisher: Any, topic: str) -> None:
    """Create the topic (a full path) unless it exists."""
    with contextlib.suppress(api_exceptions.AlreadyExists):
        publisher.create_topic(request={"name": topic})


@dataclass(frozen=True)
class Delivery:
    """The mutable half of a subscription, as `ensure_subscription` wants it."""

    ack_deadline_seconds: int
    retry_policy: Any
    dead_letter_policy: Any
    push_config: Any

    def differences(self, existing: Any) -> list[str]:
        return [name for name in MUTABLE if getattr(existing, name) != getattr(self, name)]


def ensure_subscription(
    project: str,
    topic: str,
    subscription: str,
    filter: str | None = None,
    *,
    ack_deadline: int = ACK_DEADLINE,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = DEFAULT_DELIVERY_ATTEMPTS,
    min_backoff: float = MIN_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
    push_endpoint: str | None = None,
    push_service_account: str | None = None,
    push_audience: str | None = None,
) -> str:
    """Create the topic and a subscription to it, or bring an existing subscription's
    delivery settings to these; safe to call on every start. Returns its path.

    - A failed delivery (a nack, a handler that raised, a push answered with anything but
      2xx) comes back after an exponential backoff from `min_backoff` to `max_backoff`
      seconds (Pub/Sub's retry policy; 0..600).
    - With `dead_letter_topic` (an id in `project`, or a full path), a message delivered
      `max_delivery_attempts` times (5..100) without an ack is moved there. The topic is
      created if missing, and so is a subscription of the same id on it, which keeps
      dead letters for 7 days: Pub/Sub drops messages of a topic nobody subscribes to.
    - With `push_endpoint`, Pub/Sub POSTs each message there with an OIDC token of
      `push_service_account` for `push_audience` (default: the endpoint's URL), which
      `jobfleet.api.push.push_handler` verifies.

    In production Pub/Sub's service agent (service-PROJECT_NUMBER@gcp-sa-pubsub.iam.
    gserviceaccount.com) needs roles/pubsub.publisher on the dead-letter topic and
    roles/pubsub.subscriber on this subscription, and roles/iam.serviceAccountTokenCreator
    on the push service account (docs/google-cloud.md, Subscribers).
    """
    check_name(subscription)
    wanted_topic = topic_path(project, topic)
    dead_letters = None if dead_letter_topic is None else topic_path(project, dead_letter_topic)
    delivery = _delivery(
        wanted_topic, ack_deadline, dead_letters, max_delivery_attempts, min_backoff,
        max_backoff, push_endpoint, push_service_account, push_audience,
    )
    name = subscription_path(project, subscription)
    publisher = PublisherClient()
    try:
        ensure_topic(publisher, wanted_topic)
        if dead_letters is not None:
            ensure_topic(publisher, dead_letters)
    finally:
        publisher.transport.close()
    with SubscriberClient() as subscriber:
        if dead_letters is not None:
            _keep_dead_letters(subscriber, project, dead_letters)
        try:
            settings = {field: getattr(delivery, field) for field in MUTABLE}
            subscriber.create_subscription(
                request={
                    "name": name,
                    "topic": wanted_topic,
                    "filter": filter or "",
                    # An empty policy is not the same as none: Pub/Sub looks its topic up.
                    **{field: value for field, value in settings.items() if value},
                }
            )
        except api_exceptions.AlreadyExists:
            existing = subscriber.get_subscription(request={"subscription": name})
            if existing.topic != wanted_topic or existing.filter != (filter or ""):
                raise SubscriptionMismatch(
                    f"subscription {subscription!r} exists on {existing.topic} with filter "
                    f"{existing.filter!r}, not on {wanted_topic} with {filter or ''!r}; "
                    "delete it or choose another name"
                ) from None
            changed = delivery.differences(existing)
            if changed:
                # A field in the mask but not in the body is cleared (an empty one is not).
                fields = {f: getattr(delivery, f) for f in changed if getattr(delivery, f)}
                subscriber.update_subscription(
                    request={
                        "subscription": {"name": name, **fields},
                        "update_mask": {"paths": changed},
                    }
                )
    return name


def _delivery(
    topic: str,
    ack_deadline: int,
    dead_letters: str | None,
    max_delivery_attempts: int,
    min_backoff: float,
    max_backoff: float,
    push_endpoint: str | None,
    push_service_account: str | None,
    push_audience: str | None,
) -> Delivery:
    """The settings checked against Pub/Sub's ranges before any call is made."""
    if not MIN_ACK_DEADLINE <= ack_deadline <= MAX_ACK_DEADLINE:
        raise InvalidSubscription(
            f"ack_deadline must be {MIN_ACK_DEADLINE} to {MAX_ACK_DEADLINE} seconds, "
            f"not {ack_deadline!r}"
        )
    low, high = check_backoff(min_backoff, max_backoff)
    retry = pubsub_types.RetryPolicy(
        minimum_backoff=datetime.timedelta(seconds=low),
        maximum_backoff=datetime.timedelta(seconds=high),
    )
    dead_letter = pubsub_types.DeadLetterPolicy()
    if dead_letters is not None:
        if dead_letters == topic:
            raise InvalidSubscription(
                "the dead-letter topic is the subscription's own topic: dead letters "
                "would be delivered again; name another topic"
            )
        check_name(dead_letters.rsplit("/", 1)[-1], "dead-letter topic")
        dead_letter = pubsub_types.DeadLetterPolicy(
            dead_letter_topic=dead_letters,
            max_delivery_attempts=check_delivery_attempts(max_delivery_attempts),
        )
    push = pubsub_types.PushConfig()
    if push_endpoint is not None:
        if not push_endpoint.startswith(("https://", "http://")):
            raise InvalidSubscription(
                f"push_endpoint must be a URL (https:// in production), not {push_endpoint!r}"
            )
        if not push_service_account:
            raise InvalidSubscription(
                "a push subscription needs push_service_account: push_handler accepts "
                "only deliveries that carry its OIDC token"
            )
        push = pubsub_types.PushConfig(
            push_endpoint=push_endpoint,
            oidc_token=pubsub_types.PushConfig.OidcToken(
                service_account_email=push_service_account,
                audience=push_audience or push_endpoint,
            ),
        )
    elif push_service_account or push_audience:
        raise InvalidSubscription(
            "push_service_account and push_audience apply to a push subscription: "
            "give push_endpoint too"
        )
    return Delivery(ack_deadline, retry, dead_letter, push)


def _keep_dead_letters(subscriber: Any, project: str, dead_letters: str) -> None:
    """A subscription on the dead-letter topic, of the same id, so dead letters are kept."""
    name = subscription_path(project, dead_letters.rsplit("/", 1)[-1])
    with contextlib.suppress(api_exceptions.AlreadyExists):
        subscriber.create_subscription(
            request={
                "name": name,
                "topic": dead_letters,
                "message_retention_duration": {"seconds": DEAD_LETTER_RETENTION},
                "expiration_policy": {},  # never expires, however long nobody reads it
            }
        )
