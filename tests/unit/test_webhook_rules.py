"""The webhook rules (core/webhooks.py): which URLs may receive events, the backoff and
its 24 h limit, claims, and the settings that name the secret and what is allowed."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from jobfleet.core.webhooks import (
    ALLOW_HTTP,
    ALLOW_PRIVATE,
    RETRY_FOR_SECONDS,
    Attempt,
    DeliveryState,
    after_attempt,
    check_url,
    check_urls,
    claimed,
    may_claim,
    new_delivery,
    parse_allow,
    parse_secret,
)
from jobfleet.errors import ConfigurationError, InvalidOption

NONE: frozenset[str] = frozenset()
BOTH = frozenset({ALLOW_HTTP, ALLOW_PRIVATE})
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/done", "https://hooks.example.com:8443/a?b=c",
    "https://93.184.216.34/x", "https://[2606:4700::1111]/x",
])
def test_public_https_urls_are_accepted(url: str) -> None:
    assert check_url(url, NONE)


@pytest.mark.parametrize(("url", "why"), [
    ("http://hooks.example.com/", "only https"),
    ("ftp://hooks.example.com/", "only https"),
    ("https:///nohost", "no host"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("https://10.1.2.3/", "private"),
    ("https://192.168.0.1/", "private"),
    ("https://172.16.0.1/", "private"),
    ("https://127.0.0.1/", "private, loopback"),
    ("https://100.64.0.1/", "private"),
    ("https://[fd12::1]/", "private"),
    ("https://[::ffff:127.0.0.1]/", "private, loopback"),
    ("https://169.254.169.254/", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://metadata.google.internal/", "metadata server"),
    ("https://localhost/", "local or internal name"),
    ("https://db.c.my-project.internal/", "local or internal name"),
    ("https://0.0.0.0/", "not a unicast"),
    ("https://224.0.0.1/", "not a unicast"),
    ("https://hooks.example.com:99999/", "not a URL"),
])
def test_refused_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(InvalidOption, match=why):
        check_url(url, NONE)


def test_allowing_private_and_http_lets_a_local_receiver_through_but_not_the_metadata_server(
) -> None:
    assert check_url("http://127.0.0.1:8000/hook", BOTH) == "127.0.0.1"
    assert check_url("https://localhost/hook", BOTH) == "localhost"
    with pytest.raises(InvalidOption, match="only https"):
        check_url("http://127.0.0.1/", frozenset({ALLOW_PRIVATE}))
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/"):
        with pytest.raises(InvalidOption):
            check_url(url, BOTH)


def test_a_list_of_urls_is_deduplicated_and_bounded() -> None:
    url = "https://hooks.example.com/"
    assert check_urls([url, url], NONE) == [url]
    with pytest.raises(InvalidOption, match="a list"):
        check_urls(url, NONE)
    with pytest.raises(InvalidOption, match="at most 10"):
        check_urls([f"{url}{n}" for n in range(11)], NONE)


def test_the_backoff_runs_for_24_hours_then_fails() -> None:
    d = new_delivery("o", "https://h.example.com/", "e", "{}", 0.0)
    at = 0.0
    times = []
    while d.state is DeliveryState.PENDING:
        times.append(at)
        d = after_attempt(d, Attempt(at=at, status=500))
        at = d.next_attempt_at if d.next_attempt_at is not None else at
    assert times[:7] == [0, 30, 150, 750, 2550, 6150, 9750]
    assert times[-1] == RETRY_FOR_SECONDS and times[-2] == RETRY_FOR_SECONDS - 1050
    assert d.state is DeliveryState.FAILED and len(d.attempts) == 29


def test_a_2xx_delivers_and_a_refusal_fails_at_once() -> None:
    d = new_delivery("o", "https://h.example.com/", "e", "{}", 0.0)
    assert after_attempt(d, Attempt(at=1.0, status=204)).state is DeliveryState.DELIVERED
    refused = after_attempt(d, Attempt(at=1.0, error="refused", refused=True))
    assert refused.state is DeliveryState.FAILED and refused.next_attempt_at is None
    for status in (301, 410, 429):  # redirects are not followed; anything else is retried
        assert after_attempt(d, Attempt(at=1.0, status=status)).state is DeliveryState.PENDING


def test_a_delivery_is_claimed_when_due_and_not_held() -> None:
    d = new_delivery("o", "https://h.example.com/", "e", "{}", 10.0)
    assert not may_claim(d, 9.0)
    assert may_claim(d, 10.0)
    held = claimed(d, now=10.0, hold=60.0, claimant="c")
    assert not may_claim(held, 70.0) and may_claim(held, 70.5)
    assert not may_claim(after_attempt(held, Attempt(at=10.0, status=200)), 1e12)


def test_the_secret_setting_is_a_secret_or_a_secret_manager_version_name() -> None:
    assert parse_secret(None) is None
    assert parse_secret(SECRET) is not None and parse_secret(SECRET).value == SECRET  # type: ignore[union-attr]
    name = "projects/my-project/secrets/jobfleet-webhooks/versions/latest"
    parsed = parse_secret(name)
    assert parsed is not None and parsed.version_name == name and not parsed.value
    for bad in ("projects/p/secrets/s", "hunter2", "whsec_!!!"):
        with pytest.raises(ConfigurationError, match="JOBFLEET_WEBHOOK_SECRET"):
            parse_secret(bad)


def test_the_allow_setting_names_what_it_lets_through() -> None:
    assert parse_allow(None) == NONE
    assert parse_allow(" http , Private") == BOTH
    with pytest.raises(ConfigurationError, match="JOBFLEET_WEBHOOK_ALLOW"):
        parse_allow("everything")


def test_ipv4_mapped_addresses_are_judged_as_ipv4() -> None:
    from jobfleet.core.webhooks import address_refusal

    assert address_refusal(ipaddress.ip_address("::ffff:10.0.0.1"), NONE)
    assert address_refusal(ipaddress.ip_address("::ffff:8.8.8.8"), NONE) is None
