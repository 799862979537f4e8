"""The consumer side of at-least-once delivery, shared by every subscriber (Pub/Sub
streaming pull, Pub/Sub push, the local event log): reading an event from a message body,
remembering which events were handled, and the redelivery backoff."""

from __future__ import annotations

import json
import re
from collections import OrderedDict

from jobfleet.core.models import JobCompletedEvent
from jobfleet.errors import InvalidSubscription

RECENT_IDS = 10_000
# Pub/Sub's dead-letter policy accepts 5..100 deliveries; the local subscriber keeps the
# same range so that one setting means the same on both backends.
MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
DEFAULT_DELIVERY_ATTEMPTS = 5
# Pub/Sub's retry policy: an exponential backoff between these (its own defaults).
MIN_BACKOFF = 10.0
MAX_BACKOFF = 600.0
# Pub/Sub's rule for subscription and topic ids, applied locally too.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


def decode_event(data: bytes | str) -> JobCompletedEvent:
    """A message body as a JobCompletedEvent; ValueError, KeyError or TypeError when it
    is not one (redelivering cannot fix that)."""
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise TypeError("a JobCompletedEvent is a JSON object")
    return JobCompletedEvent.from_json(parsed)


def check_delivery_attempts(attempts: int) -> int:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not (
        MIN_DELIVERY_ATTEMPTS <= attempts <= MAX_DELIVERY_ATTEMPTS
    ):
        raise InvalidSubscription(
            f"max_delivery_attempts must be an integer from {MIN_DELIVERY_ATTEMPTS} to "
            f"{MAX_DELIVERY_ATTEMPTS} (Pub/Sub's range for a dead-letter policy), not "
            f"{attempts!r}"
        )
    return attempts


def check_backoff(minimum: float, maximum: float) -> tuple[float, float]:
    if not (0 <= minimum <= maximum <= MAX_BACKOFF):
        raise InvalidSubscription(
            f"the retry backoff must satisfy 0 <= min_backoff <= max_backoff <= "
            f"{MAX_BACKOFF:g} seconds (Pub/Sub's range), not {minimum!r}..{maximum!r}"
        )
    return float(minimum), float(maximum)


def check_name(name: str, what: str = "subscription") -> str:
    if not NAME.fullmatch(name) or name.lower().startswith("goog"):
        raise InvalidSubscription(
            f"{what} name {name!r} is not valid: 3 to 255 characters, starting with a "
            "letter, of letters, digits and - _ . ~ + %, not starting with 'goog' "
            "(Pub/Sub's rule, kept locally so that one name works on both backends)"
        )
    return name


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Seconds before delivery `attempts + 1`, after `attempts` failed ones."""
    return min(maximum, minimum * 2.0 ** max(attempts - 1, 0))


class RecentIds:
    """The event ids handled lately, oldest forgotten first: duplicates arrive close together."""

    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)
