"""Who the HTTP API lets in, short of verifying Google signatures (see the integration
tests for that): the static token, the Authorization header, the environment, the
loopback check and how several authenticators combine."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest

from jobfleet.api.auth import (
    GOOGLE_CERTS_URL,
    AnyOf,
    AuthError,
    Forbidden,
    GoogleIdTokens,
    Principal,
    StaticToken,
    Unauthenticated,
    authenticator_from_env,
    bearer_token,
    is_loopback,
)
from jobfleet.errors import ConfigurationError

SECRET = "s3cr3t-T0ken-value"
AUDIENCE = "https://jobfleet-api-abc123-uc.a.run.app"


def refusal(authenticate: Callable[[str], Principal], token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        authenticate(token)
    return caught.value


def assert_never_shows(token: str, error: BaseException) -> None:
    assert token not in str(error)
    assert token not in "".join(traceback.format_exception(error))


# The static token


def test_the_static_token_lets_its_holder_in() -> None:
    assert StaticToken(SECRET).authenticate(SECRET) == Principal("static-token")


@pytest.mark.parametrize(
    "sent",
    [
        "wrong",
        SECRET[:-1],
        SECRET + "x",
        SECRET.upper(),
        "",
        "s3cr3t-T0ken-välue",
    ],
)
def test_any_other_token_is_a_401_that_does_not_repeat_it(sent: str) -> None:
    error = refusal(StaticToken(SECRET).authenticate, sent)

    assert isinstance(error, Unauthenticated)
    assert error.status == 401
    assert "JOBFLEET_API_TOKEN" in str(error)
    assert_never_shows(SECRET, error)
    if sent:
        assert_never_shows(sent, error)


@pytest.mark.parametrize("configured", ["", "two words", "trailing-newline\n"])
def test_a_static_token_that_no_header_could_carry_is_refused_at_startup(
    configured: str,
) -> None:
    with pytest.raises(ConfigurationError, match="JOBFLEET_API_TOKEN") as caught:
        StaticToken(configured)
    if configured.strip():
        assert configured.strip() not in str(caught.value)


def test_the_static_token_does_not_show_in_its_repr() -> None:
    assert SECRET not in repr(StaticToken(SECRET))


# The Authorization header


@pytest.mark.parametrize(
    "header", [f"Bearer {SECRET}", f"bearer {SECRET}", f"BEARER  {SECRET} ", f"\tBearer {SECRET}"]
)
def test_the_bearer_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_token(header) == SECRET


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_token_says_how_to_send_one(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(header)

    assert str(caught.value) == "missing bearer token: send Authorization: Bearer <token>"
    assert caught.value.status == 401


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {SECRET}",
        f"Token {SECRET}",
        "Bearer",
        f"Bearer {SECRET} {SECRET}",
        f"Bearer{SECRET}",
        SECRET,
    ],
)
def test_a_malformed_header_is_a_401_that_does_not_repeat_it(header: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(header)

    assert str(caught.value) == "malformed Authorization header: expected 'Bearer <token>'"
    assert_never_shows(SECRET, caught.value)


# The environment


def test_without_settings_there_is_no_authenticator() -> None:
    assert authenticator_from_env({}) is None
    assert authenticator_from_env({"JOBFLEET_API_TOKEN": "", "JOBFLEET_API_AUDIENCE": ""}) is None


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBFLEET_API_TOKEN", SECRET)
    monkeypatch.delenv("JOBFLEET_API_AUDIENCE", raising=False)

    authenticator = authenticator_from_env()

    assert authenticator is not None
    assert authenticator.authenticate(SECRET) == Principal("static-token")


def test_a_token_in_the_environment_is_a_static_token() -> None:
    authenticator = authenticator_from_env({"JOBFLEET_API_TOKEN": SECRET})

    assert isinstance(authenticator, StaticToken)
    assert authenticator.authenticate(SECRET) == Principal("static-token")
    assert isinstance(refusal(authenticator.authenticate, "nope"), Unauthenticated)


def test_an_audience_and_principals_accept_google_id_tokens() -> None:
    authenticator = authenticator_from_env(
        {
            "JOBFLEET_API_AUDIENCE": f" {AUDIENCE} ",
            "JOBFLEET_API_PRINCIPALS": " CI@proj.iam.gserviceaccount.com,, ann@example.com ",
        }
    )

    assert isinstance(authenticator, GoogleIdTokens)
    assert authenticator.audience == AUDIENCE
    assert authenticator.principals == {"ci@proj.iam.gserviceaccount.com", "ann@example.com"}
    assert authenticator.certs_url == GOOGLE_CERTS_URL


def test_the_certs_url_can_point_at_another_issuer() -> None:
    authenticator = authenticator_from_env(
        {
            "JOBFLEET_API_AUDIENCE": AUDIENCE,
            "JOBFLEET_API_PRINCIPALS": "ann@example.com",
            "JOBFLEET_API_CERTS_URL": "http://127.0.0.1:8081/certs",
        }
    )

    assert isinstance(authenticator, GoogleIdTokens)
    assert authenticator.certs_url == "http://127.0.0.1:8081/certs"


def test_a_token_and_an_audience_accept_either() -> None:
    authenticator = authenticator_from_env(
        {
            "JOBFLEET_API_TOKEN": SECRET,
            "JOBFLEET_API_AUDIENCE": AUDIENCE,
            "JOBFLEET_API_PRINCIPALS": "ann@example.com",
        }
    )

    assert isinstance(authenticator, AnyOf)
    assert authenticator.authenticate(SECRET) == Principal("static-token")
    # Not a JWT: refused without fetching Google's certs.
    error = refusal(authenticator.authenticate, "nope")
    assert isinstance(error, Unauthenticated)


@pytest.mark.parametrize("principals", [None, "", " , "])
def test_an_audience_without_principals_is_a_configuration_error(principals: str | None) -> None:
    env = {"JOBFLEET_API_AUDIENCE": AUDIENCE}
    if principals is not None:
        env["JOBFLEET_API_PRINCIPALS"] = principals

    with pytest.raises(ConfigurationError, match="JOBFLEET_API_PRINCIPALS"):
        authenticator_from_env(env)


@pytest.mark.parametrize(
    "setting",
    [
        {"JOBFLEET_API_PRINCIPALS": "ann@example.com"},
        {"JOBFLEET_API_CERTS_URL": "http://127.0.0.1:8081/certs"},
    ],
)
def test_google_settings_without_an_audience_are_a_configuration_error(
    setting: dict[str, str],
) -> None:
    with pytest.raises(ConfigurationError, match="JOBFLEET_API_AUDIENCE"):
        authenticator_from_env({"JOBFLEET_API_TOKEN": SECRET, **setting})


def test_a_bad_static_token_in_the_environment_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        authenticator_from_env({"JOBFLEET_API_TOKEN": f"{SECRET} {SECRET}"})
    assert_never_shows(SECRET, caught.value)


def test_google_id_tokens_need_an_audience_and_principals() -> None:
    with pytest.raises(ConfigurationError, match="JOBFLEET_API_AUDIENCE"):
        GoogleIdTokens(" ", ["ann@example.com"])
    with pytest.raises(ConfigurationError, match="JOBFLEET_API_PRINCIPALS"):
        GoogleIdTokens(AUDIENCE, [])


def test_a_principal_string_is_a_comma_separated_list() -> None:
    authenticator = GoogleIdTokens(AUDIENCE, "ann@example.com,bob@example.com")
    assert authenticator.principals == {"ann@example.com", "bob@example.com"}


def test_a_token_that_is_not_a_jwt_is_refused_without_fetching_certs() -> None:
    # Port 9 (discard) is closed: a fetch would be a 503, not this 401.
    google = GoogleIdTokens(AUDIENCE, ["ann@example.com"], certs_url="http://127.0.0.1:9/")

    error = refusal(google.authenticate, SECRET)

    assert isinstance(error, Unauthenticated)
    assert str(error) == "the bearer token is not a Google ID token"
    assert_never_shows(SECRET, error)


# Loopback


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.53", "127.255.0.1", "::1", "[::1]", "localhost", "LOCALHOST"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "[::]", "", "10.0.0.1", "192.168.1.20", "example.com", "fe80::1"]
)
def test_hosts_reachable_from_elsewhere_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


# Several authenticators


class Refuses:
    def __init__(self, error: AuthError) -> None:
        self.error = error
        self.calls = 0

    def authenticate(self, token: str) -> Principal:
        self.calls += 1
        raise self.error


FORBIDDEN = Forbidden("ann@example.com is not allowed to use this API")
UNAUTHENTICATED = Unauthenticated("the bearer token has expired")


def test_the_first_authenticator_that_accepts_wins() -> None:
    later = Refuses(FORBIDDEN)

    principal = AnyOf(StaticToken(SECRET), later).authenticate(SECRET)

    assert principal == Principal("static-token")
    assert later.calls == 0


def test_a_later_authenticator_is_tried_after_a_refusal() -> None:
    first = Refuses(UNAUTHENTICATED)

    assert AnyOf(first, StaticToken(SECRET)).authenticate(SECRET) == Principal("static-token")
    assert first.calls == 1


@pytest.mark.parametrize("forbidden_first", [True, False])
def test_a_403_beats_a_401_whatever_the_order(forbidden_first: bool) -> None:
    refusals = [Refuses(FORBIDDEN), Refuses(UNAUTHENTICATED)]
    if not forbidden_first:
        refusals.reverse()

    error = refusal(AnyOf(*refusals).authenticate, SECRET)

    assert error is FORBIDDEN
    assert error.status == 403


def test_when_every_authenticator_says_401_the_answer_is_401() -> None:
    error = refusal(AnyOf(StaticToken(SECRET), Refuses(UNAUTHENTICATED)).authenticate, "nope")

    assert isinstance(error, Unauthenticated)
    assert_never_shows(SECRET, error)


def test_any_of_nothing_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        AnyOf()
