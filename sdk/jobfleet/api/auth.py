"""Who may call the HTTP API: bearer tokens, checked before any route but /healthz runs.

In the cloud callers send Google-signed ID tokens (a service account's or a user's);
locally a static token from JOBFLEET_API_TOKEN is enough. Refusals are 401 when the
token proves nothing and 403 when it proves an identity that is not allowed in, so a
caller knows whether to fix its token or ask for access. No message ever repeats the
token, and refusals are raised without the library exception that caused them, since
google-auth's messages quote the token they could not parse.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from jobfleet.errors import ConfigurationError, JobfleetError

if TYPE_CHECKING:
    import requests
    from google.auth import transport

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
STATIC_PRINCIPAL = "static-token"
# When the certs endpoint sends no max-age, reuse its answer this long: issuers publish
# a new key well before they sign with it.
DEFAULT_CERTS_TTL = 300.0
CERTS_FETCH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # the e-mail of a Google identity, or "static-token"


class AuthError(JobfleetError):
    """A request was refused before reaching its route; `status` is the HTTP answer."""

    status: ClassVar[int]


class Unauthenticated(AuthError):
    status = 401


class Forbidden(AuthError):
    status = 403


class AuthUnavailable(AuthError):
    """The token could not be checked at all (the signing certs are out of reach); the
    caller's token may be fine, so it must not be told to fix it."""

    status = 503


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal: ...


def bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
    return parts[1]


class StaticToken:
    """One shared secret, for a laptop or a test rig where minting ID tokens is a chore."""

    def __init__(self, token: str) -> None:
        if not token or any(ch.isspace() for ch in token):
            raise ConfigurationError(
                "the API token (JOBFLEET_API_TOKEN) must be non-empty and contain no "
                "whitespace, which an Authorization header cannot carry"
            )
        self._token = _as_bytes(token)

    def authenticate(self, token: str) -> Principal:
        # compare_digest so the time taken does not reveal how much of the token matched.
        if not hmac.compare_digest(_as_bytes(token), self._token):
            raise Unauthenticated(
                "the bearer token is not valid: send the token set in the server's "
                "JOBFLEET_API_TOKEN"
            )
        return Principal(STATIC_PRINCIPAL)

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"


class GoogleIdTokens:
    """Google-signed ID tokens for one audience (the API's URL), from an allow-list of
    e-mails: a valid signature proves who is calling, not that they may.

    The API and a Pub/Sub push endpoint (`api/push.py`) check tokens alike; `guarding`
    (what the tokens open) and `settings` (where the audience and the allow-list are
    set) only change what the refusals tell the caller to fix."""

    def __init__(
        self,
        audience: str,
        principals: Iterable[str],
        *,
        certs_url: str | None = None,
        clock_skew: int = 10,
        guarding: str = "this API",
        settings: tuple[str, str] = ("JOBFLEET_API_AUDIENCE", "JOBFLEET_API_PRINCIPALS"),
    ) -> None:
        audience_setting, principals_setting = settings
        if not audience.strip():
            raise ConfigurationError(
                f"the ID token audience ({audience_setting}) is empty: set it to the "
                "URL the tokens are minted for, e.g. https://jobfleet-api-abc123-uc.a.run.app"
            )
        allowed = _principal_set(principals)
        if not allowed:
            raise ConfigurationError(
                f"no principal may use {guarding}: list the allowed e-mails in "
                f"{principals_setting}"
            )
        _import_google()
        import requests

        self.audience = audience.strip()
        self.principals = allowed
        self.certs_url = certs_url or GOOGLE_CERTS_URL
        self.clock_skew = clock_skew
        self.guarding = guarding
        self.principals_setting = principals_setting
        self._certs = _CachedCertsRequest(requests.Session())

    def authenticate(self, token: str) -> Principal:
        claims = self._verified_claims(token)
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthenticated("the bearer token was not issued by accounts.google.com")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise Forbidden(
                "the ID token carries no e-mail: mint it with the e-mail claim included "
                "(gcloud ... --include-email, or format=full on the metadata server)"
            )
        # Older Google tokens carried the flag as the string "true".
        if claims.get("email_verified") not in (True, "true"):
            raise Forbidden(f"the e-mail {email} is not verified by Google")
        if email.lower() not in self.principals:
            raise Forbidden(
                f"{email} is not allowed to use {self.guarding}; add it to "
                f"{self.principals_setting}"
            )
        return Principal(email)

    def _verified_claims(self, token: str) -> Mapping[str, Any]:
        if token.count(".") != 2:
            # Not a JWT at all: say so without paying for a certs fetch.
            raise Unauthenticated("the bearer token is not a Google ID token")
        from google.auth import exceptions
        from google.oauth2 import id_token

        failure: AuthError
        try:
            return id_token.verify_token(
                token,
                cast("transport.Request", self._certs),
                audience=self.audience,
                certs_url=self.certs_url,
                clock_skew_in_seconds=self.clock_skew,
            )
        except (exceptions.TransportError, json.JSONDecodeError):
            failure = AuthUnavailable(
                f"cannot check ID tokens now: fetching the signing certificates from "
                f"{self.certs_url} failed; retry later"
            )
        except ValueError as refused:
            failure = Unauthenticated(self._why(refused))
        # Raised outside the handler so that no traceback carries google-auth's message.
        raise failure

    def _why(self, refused: ValueError) -> str:
        # google-auth raises the same types for every refusal, so its wording is all there
        # is to tell them apart; a wording it changes still ends in the generic 401.
        said = str(refused)
        if said.startswith("Token expired"):
            return "the bearer token has expired; get a fresh ID token"
        if said.startswith("Token used too early"):
            return "the bearer token is not valid yet; check the caller's clock"
        if "wrong audience" in said:
            return (
                f"the bearer token was minted for another audience; "
                f"request an ID token for {self.audience}"
            )
        if said.startswith("Certificate for key id"):
            return "the bearer token is signed by a key that Google does not publish"
        if said.startswith("Could not verify token signature"):
            return "the bearer token's signature does not verify"
        return "the bearer token is not a valid Google ID token"

    def __repr__(self) -> str:
        return f"GoogleIdTokens(audience={self.audience!r}, principals={len(self.principals)})"


class AnyOf:
    """Several ways in at once: the first authenticator to accept the token wins."""

    # On a tie the later authenticator's reason is kept, so put the most specific last.
    _WEIGHT: ClassVar[dict[int, int]] = {401: 0, 503: 1, 403: 2}

    def __init__(self, *authenticators: Authenticator) -> None:
        if not authenticators:
            raise ConfigurationError("AnyOf needs at least one authenticator")
        self.authenticators = authenticators

    def authenticate(self, token: str) -> Principal:
        best: AuthError | None = None
        for authenticator in self.authenticators:
            try:
                return authenticator.authenticate(token)
            except AuthError as refused:
                if best is None or self._weight(refused) >= self._weight(best):
                    best = refused
        assert best is not None
        # A Forbidden names who is missing from the allow-list; that beats "not valid".
        raise best.with_traceback(None)

    def _weight(self, refused: AuthError) -> int:
        return self._WEIGHT.get(refused.status, 0)


def authenticator_from_env(env: Mapping[str, str] | None = None) -> Authenticator | None:
    env = os.environ if env is None else env
    chosen: list[Authenticator] = []
    token = env.get("JOBFLEET_API_TOKEN")
    if token:
        chosen.append(StaticToken(token))
    audience = (env.get("JOBFLEET_API_AUDIENCE") or "").strip()
    principals = _principal_set(env.get("JOBFLEET_API_PRINCIPALS") or "")
    certs_url = (env.get("JOBFLEET_API_CERTS_URL") or "").strip() or None
    if audience:
        if not principals:
            raise ConfigurationError(
                "JOBFLEET_API_AUDIENCE is set but JOBFLEET_API_PRINCIPALS is empty: list "
                "the e-mails allowed to call the API, comma-separated"
            )
        chosen.append(GoogleIdTokens(audience, principals, certs_url=certs_url))
    elif principals or certs_url:
        raise ConfigurationError(
            "JOBFLEET_API_PRINCIPALS or JOBFLEET_API_CERTS_URL is set but "
            "JOBFLEET_API_AUDIENCE is not: set it to the API's URL to accept ID tokens"
        )
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else AnyOf(*chosen)


def is_loopback(host: str) -> bool:
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _import_google() -> None:
    try:
        import google.auth.transport.requests
        import google.oauth2.id_token  # noqa: F401
    except ImportError as missing:
        raise ConfigurationError(
            "checking Google ID tokens needs google-auth and requests: "
            "pip install 'jobfleet[gcp]'"
        ) from missing


class _CachedCertsRequest:
    """A google-auth transport that remembers the certs answer as long as its max-age
    allows: google-auth fetches the certs on every verification, which would put an
    HTTP round trip in front of every API request."""

    def __init__(self, session: requests.Session) -> None:
        from google.auth.transport.requests import Request

        self._transport = Request(session)
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, transport.Response]] = {}

    def __call__(
        self, url: str, method: str = "GET", **kwargs: Any
    ) -> transport.Response:
        if method != "GET":
            passed: transport.Response = self._transport(url, method=method, **kwargs)
            return passed
        kwargs.setdefault("timeout", CERTS_FETCH_TIMEOUT)
        # One lock: concurrent requests after expiry wait for one fetch, not one each.
        with self._lock:
            kept = self._kept.get(url)
            if kept is not None and time.monotonic() < kept[0]:
                return kept[1]
            response: transport.Response = self._transport(url, method="GET", **kwargs)
            ttl = _freshness(response.headers) if response.status == 200 else 0.0
            if ttl > 0:
                self._kept[url] = (time.monotonic() + ttl, response)
            else:
                self._kept.pop(url, None)
            return response


def _freshness(headers: Mapping[str, str]) -> float:
    """How long a response may be reused: max-age less its Age (RFC 9111, section 4.2)."""
    directives: dict[str, str] = {}
    for part in (headers.get("cache-control") or "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" not in directives:
        return DEFAULT_CERTS_TTL
    try:
        return float(int(directives["max-age"]) - int(headers.get("age") or 0))
    except ValueError:
        return 0.0


def _principal_set(principals: Iterable[str]) -> frozenset[str]:
    # A bare string is a comma-separated list, not an iterable of one-letter e-mails.
    items = principals.split(",") if isinstance(principals, str) else principals
    return frozenset(p.strip().lower() for p in items if p.strip())


def _as_bytes(token: str) -> bytes:
    # compare_digest refuses non-ASCII str; environment values may hold lone surrogates.
    return token.encode("utf-8", "surrogatepass")
