"""Google ID tokens verified for real: google-auth fetches signing certificates from a
local stand-in for https://www.googleapis.com/oauth2/v1/certs and checks tokens signed
with their private key, exactly as it does against Google."""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import pytest

from id_token_support import KID, CertsServer
from jobfleet.api.auth import (
    AuthError,
    AuthUnavailable,
    Forbidden,
    GoogleIdTokens,
    Principal,
    Unauthenticated,
    authenticator_from_env,
)
from jobfleet.dev.id_tokens import SigningKey, service_account_claims, sign

AUDIENCE = "https://jobfleet-api-abc123-uc.a.run.app"
ALLOWED = "ci@proj.iam.gserviceaccount.com"
@pytest.fixture
def google(certs_server: CertsServer) -> GoogleIdTokens:
    return GoogleIdTokens(AUDIENCE, [ALLOWED, "ann@example.com"], certs_url=certs_server.url)


def mint(key: SigningKey, kid: str = KID, **claims: Any) -> str:
    """An ID token shaped like the ones Google signs for a service account."""
    payload = {**service_account_claims(ALLOWED, AUDIENCE), "azp": "112233445566778899000",
               "sub": "112233445566778899000", **claims}
    return sign(key, kid, payload)


def refusal(google: GoogleIdTokens, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        google.authenticate(token)
    error = caught.value
    assert token not in str(error)
    assert token not in "".join(traceback.format_exception(error))
    return error


def test_a_valid_token_of_an_allowed_identity_names_it(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    assert google.authenticate(mint(google_key)) == Principal(ALLOWED)


def test_the_allow_list_ignores_case(google: GoogleIdTokens, google_key: SigningKey) -> None:
    token = mint(google_key, email="Ann@Example.COM")
    assert google.authenticate(token) == Principal("Ann@Example.COM")


def test_both_spellings_of_googles_issuer_are_accepted(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    assert google.authenticate(mint(google_key, iss="accounts.google.com")) == Principal(ALLOWED)


def test_an_expired_token_is_a_401(google: GoogleIdTokens, google_key: SigningKey) -> None:
    now = int(time.time())
    error = refusal(google, mint(google_key, iat=now - 7200, exp=now - 3600))

    assert isinstance(error, Unauthenticated)
    assert error.status == 401
    assert "expired" in str(error)


def test_a_token_just_past_expiry_is_within_the_clock_skew(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    now = int(time.time())
    token = mint(google_key, iat=now - 3600, exp=now - 2)
    assert google.authenticate(token) == Principal(ALLOWED)


def test_a_token_for_another_audience_is_a_401(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    error = refusal(google, mint(google_key, aud="https://someone-else.a.run.app"))

    assert isinstance(error, Unauthenticated)
    assert AUDIENCE in str(error)


def test_a_token_from_another_issuer_is_a_401(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    error = refusal(google, mint(google_key, iss="https://securetoken.google.com/proj"))

    assert isinstance(error, Unauthenticated)
    assert "accounts.google.com" in str(error)


def test_a_token_signed_with_an_unpublished_key_id_is_a_401(
    google: GoogleIdTokens, rogue_key: SigningKey
) -> None:
    error = refusal(google, mint(rogue_key, kid="unknown-kid"))

    assert isinstance(error, Unauthenticated)
    assert "key" in str(error)


def test_a_token_signed_by_another_key_under_a_published_key_id_is_a_401(
    google: GoogleIdTokens, rogue_key: SigningKey
) -> None:
    error = refusal(google, mint(rogue_key))

    assert isinstance(error, Unauthenticated)
    assert "signature" in str(error)


def test_a_tampered_token_is_a_401(google: GoogleIdTokens, google_key: SigningKey) -> None:
    header, _, signature = mint(google_key).split(".")
    forged = mint(google_key, email="ann@example.com").split(".")[1]

    assert isinstance(refusal(google, f"{header}.{forged}.{signature}"), Unauthenticated)


@pytest.mark.parametrize("token", ["abc.def.ghi", "eyJhbGciOiJSUzI1NiJ9.e30.", ".."])
def test_a_jwt_shaped_token_that_is_garbage_is_a_401_without_googles_message(
    google: GoogleIdTokens, token: str
) -> None:
    error = refusal(google, token)

    assert isinstance(error, Unauthenticated)
    # google-auth's own messages quote what they could not parse: none may travel along.
    assert error.__cause__ is None
    assert error.__context__ is None


def test_an_identity_missing_from_the_allow_list_is_a_403_that_names_it(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    error = refusal(google, mint(google_key, email="intruder@other.iam.gserviceaccount.com"))

    assert isinstance(error, Forbidden)
    assert error.status == 403
    assert str(error) == (
        "intruder@other.iam.gserviceaccount.com is not allowed to use this API; "
        "add it to JOBFLEET_API_PRINCIPALS"
    )


@pytest.mark.parametrize("verified", [False, "false", None])
def test_an_unverified_email_is_a_403(
    google: GoogleIdTokens, google_key: SigningKey, verified: object
) -> None:
    error = refusal(google, mint(google_key, email_verified=verified))

    assert isinstance(error, Forbidden)
    assert "not verified" in str(error)


def test_a_token_without_an_email_is_a_403(
    google: GoogleIdTokens, google_key: SigningKey
) -> None:
    token = mint(google_key, email=None, email_verified=None)

    assert isinstance(refusal(google, token), Forbidden)


def test_certs_are_fetched_once_for_many_verifications(
    google: GoogleIdTokens, google_key: SigningKey, certs_server: CertsServer
) -> None:
    tokens = [mint(google_key, sub=str(n)) for n in range(20)]

    for token in tokens:
        assert google.authenticate(token) == Principal(ALLOWED)
    refusal(google, mint(google_key, aud="https://elsewhere"))

    assert certs_server.fetches == 1


def test_concurrent_verifications_share_one_fetch(
    google: GoogleIdTokens, google_key: SigningKey, certs_server: CertsServer
) -> None:
    token = mint(google_key)
    seen: list[Principal] = []
    threads = [
        threading.Thread(target=lambda: seen.append(google.authenticate(token)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seen == [Principal(ALLOWED)] * 8
    assert certs_server.fetches == 1


@pytest.mark.parametrize(
    ("cache_control", "age"),
    [("public, max-age=60, must-revalidate", "60"), ("no-store", None), ("max-age=0", None)],
)
def test_certs_that_may_not_be_reused_are_fetched_again(
    google: GoogleIdTokens,
    google_key: SigningKey,
    certs_server: CertsServer,
    cache_control: str,
    age: str | None,
) -> None:
    certs_server.cache_control = cache_control
    certs_server.age = age

    for _ in range(3):
        assert google.authenticate(mint(google_key)) == Principal(ALLOWED)

    assert certs_server.fetches == 3


def test_unreachable_certs_are_a_503_not_the_callers_fault(
    google: GoogleIdTokens, google_key: SigningKey, certs_server: CertsServer
) -> None:
    certs_server.status = 500
    token = mint(google_key)

    error = refusal(google, token)

    assert isinstance(error, AuthUnavailable)
    assert error.status == 503
    # A failed fetch is not kept: the next request tries again.
    certs_server.status = 200
    assert google.authenticate(token) == Principal(ALLOWED)
    assert certs_server.fetches == 2


def test_the_environment_configures_the_same_verification(
    google_key: SigningKey, certs_server: CertsServer
) -> None:
    authenticator = authenticator_from_env(
        {
            "JOBFLEET_API_TOKEN": "local-dev-token",
            "JOBFLEET_API_AUDIENCE": AUDIENCE,
            "JOBFLEET_API_PRINCIPALS": ALLOWED,
            "JOBFLEET_API_CERTS_URL": certs_server.url,
        }
    )
    assert authenticator is not None

    assert authenticator.authenticate(mint(google_key)) == Principal(ALLOWED)
    assert authenticator.authenticate("local-dev-token") == Principal("static-token")
    with pytest.raises(Forbidden):
        authenticator.authenticate(mint(google_key, email="ann@example.com"))
