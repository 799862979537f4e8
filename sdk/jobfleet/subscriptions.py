"""Subscribing to completion events, on either backend: the start of a next stage.

`subscribe(name, handler)` is the same call on a laptop and on Google Cloud: on the gcp
backend it ensures a Pub/Sub subscription `name` on the events topic (with its retry and
dead-letter policies) and returns an `EventSubscriber`; locally it returns a
`LocalEventSubscriber` on the event log in JOBFLEET_HOME. Both deliver at least once, ack
when the handler returns, deliver again after a backoff when it raises, and dead-letter
an event after `max_delivery_attempts` deliveries. A next stage that is a web service
takes pushes instead: `push_handler` (`jobfleet.api.push`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from jobfleet.config import Settings
from jobfleet.core.deliveries import DEFAULT_DELIVERY_ATTEMPTS, MAX_BACKOFF, MIN_BACKOFF
from jobfleet.core.models import JobCompletedEvent
from jobfleet.errors import ConfigurationError, InvalidSubscription

if TYPE_CHECKING:
    from jobfleet.api.push import PushHandler

Handler = Callable[[JobCompletedEvent], object]
DEAD_LETTER_SUFFIX = "-dead-letters"


class Subscriber(Protocol):
    """What `subscribe` returns: `EventSubscriber` or `LocalEventSubscriber`."""

    handled: int
    duplicates: int
    failures: int

    def start(self) -> Subscriber: ...
    def run(self, timeout: float | None = None) -> None: ...
    def check(self) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    def __enter__(self) -> Subscriber: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def subscribe(
    name: str,
    handler: Handler,
    *,
    filter: str | None = None,
    max_delivery_attempts: int | None = DEFAULT_DELIVERY_ATTEMPTS,
    dead_letter_topic: str | None = None,
    min_backoff: float = MIN_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
    settings: Settings | None = None,
) -> Subscriber:
    """A subscriber (not started: use `with` or `start()`) of the subscription `name`.

    On Google Cloud the subscription is created or brought up to these settings first;
    its dead letters go to `dead_letter_topic` (default `<name>-dead-letters`), or
    nowhere with `max_delivery_attempts=None`, which redelivers for ever. Locally dead
    letters stay in the home (`LocalEventSubscriber.dead_letters()`). `filter` is a
    Pub/Sub filter, which only Pub/Sub applies: locally it is refused, so filter in the
    handler for a chain that must run on both.
    """
    settings = Settings.from_env() if settings is None else settings
    if settings.backend == "local":
        if filter:
            raise InvalidSubscription(
                "the local event log cannot apply a Pub/Sub filter: drop `filter` and "
                "check the event's tags in the handler, which works on both backends"
            )
        from jobfleet.backends import check_home
        from jobfleet.backends.local.subscriber import LocalEventSubscriber

        check_home(settings)
        return LocalEventSubscriber(
            settings.database, name, handler, max_delivery_attempts=max_delivery_attempts,
            min_backoff=min_backoff, max_backoff=max_backoff,
        )
    try:
        from jobfleet.backends.gcp.pubsub import EventSubscriber
        from jobfleet.backends.gcp.subscriptions import ensure_subscription
    except ImportError as exc:
        raise ConfigurationError(
            f'subscribing on Google Cloud needs pip install "jobfleet[gcp]" ({exc})'
        ) from None
    project = settings.require_project()
    dead_letters = None
    if max_delivery_attempts is not None:
        dead_letters = dead_letter_topic or f"{name}{DEAD_LETTER_SUFFIX}"
    ensure_subscription(
        project, settings.topic, name, filter,
        dead_letter_topic=dead_letters,
        max_delivery_attempts=max_delivery_attempts or DEFAULT_DELIVERY_ATTEMPTS,
        min_backoff=min_backoff, max_backoff=max_backoff,
    )
    return EventSubscriber(project, name, handler)


def push_handler(
    callback: Handler,
    *,
    audience: str,
    service_accounts: Iterable[str] | str,
    certs_url: str | None = None,
) -> PushHandler:
    """The ASGI app of a Pub/Sub push subscription; see `jobfleet.api.push.push_handler`.
    Needs `pip install "jobfleet[api]"`."""
    try:
        from jobfleet.api.push import push_handler as make
    except ImportError as exc:
        raise ConfigurationError(
            f'the push handler needs pip install "jobfleet[api]" ({exc})'
        ) from None
    return make(callback, audience=audience, service_accounts=service_accounts,
                certs_url=certs_url)
