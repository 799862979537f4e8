"""The limits of kick-off options and tags: one rule for the SDK, the CLI and the API."""

from __future__ import annotations

from typing import Any

from jobfleet.core.models import EVENT_ATTRIBUTES, RunOptions
from jobfleet.errors import InvalidOption

MAX_PARALLELISM = 100_000
MAX_RETRIES = 100
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds; Cloud Run tasks stop at 168 hours
MAX_TAGS = 64
MAX_TAG_KEY = 256  # Pub/Sub's limits for a message attribute, in bytes
MAX_TAG_VALUE = 1024
TAG_KEY_FORBIDDEN = (":", "=")  # they separate key and value in filters and queries


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(options: RunOptions, tags: dict[str, str]) -> None:
    """Raise InvalidOption naming the first option out of range."""
    if not _whole(options.parallelism) or not 1 <= options.parallelism <= MAX_PARALLELISM:
        raise InvalidOption(
            f"parallelism must be a whole number from 1 to {MAX_PARALLELISM}, "
            f"got {options.parallelism!r}"
        )
    if not _whole(options.retries) or not 0 <= options.retries <= MAX_RETRIES:
        raise InvalidOption(
            f"retries must be a whole number from 0 to {MAX_RETRIES}, got {options.retries!r}"
        )
    if options.timeout is not None and not 0 < options.timeout <= MAX_TIMEOUT:
        raise InvalidOption(
            f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds, got {options.timeout!r}"
        )
    check_tags(tags)


def check_tags(tags: dict[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidOption(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or key.startswith("goog"):
            raise InvalidOption(f"tag key {key!r} must be a non-empty string not starting 'goog'")
        if not _utf8(key):
            raise InvalidOption(
                f"tag key {key!r} is not valid UTF-8 text; give tags as UTF-8 text"
            )
        if any(c in key for c in TAG_KEY_FORBIDDEN):
            raise InvalidOption(f"tag key {key!r} must not contain ':' or '='")
        if len(key.encode()) > MAX_TAG_KEY:
            raise InvalidOption(f"tag key {key[:40]!r}... is longer than {MAX_TAG_KEY} bytes")
        if key in EVENT_ATTRIBUTES:
            raise InvalidOption(f"tag key {key!r} is reserved for the completion event")
        if not isinstance(value, str):
            raise InvalidOption(f"tag {key!r} must have a string value, got {value!r}")
        if not _utf8(value):
            raise InvalidOption(
                f"tag {key!r} has a value that is not valid UTF-8 text ({value[:40]!r}); "
                "give tags as UTF-8 text"
            )
        if len(value.encode()) > MAX_TAG_VALUE:
            raise InvalidOption(f"tag {key!r} has a value longer than {MAX_TAG_VALUE} bytes")


def _utf8(text: str) -> bool:
    """False for text holding lone surrogates: bytes that were not UTF-8 in argv (Python
    keeps them as surrogate escapes) or a JSON string with an unpaired \\ud800-\\udfff."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_tag_filter(text: str) -> tuple[str, str]:
    """`key:value`, as the CLI and the API take a tag filter."""
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise InvalidOption(f"a tag filter is KEY:VALUE, got {text!r}")
    return key, value
