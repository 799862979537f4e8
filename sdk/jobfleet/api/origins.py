"""Where a request says it is going (Host) and where it comes from (Origin).

Host: a page on another site can make a browser talk to a tokenless server on loopback
by pointing its own name at 127.0.0.1 (DNS rebinding); its requests then carry that
name, so a server answers only to the names it is configured for.

Origin: the dashboard's session cookie goes with every request the browser makes to
the server, whichever page makes it; SameSite does not tell one localhost port from
another. A state-changing request that a cookie (or, without a token, merely being on
loopback) lets in must come from the server's own pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from jobfleet.api.problems import problem

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A probe may name the server by address; the answer tells a rebound page nothing.
UNCHECKED_PATHS = frozenset({"/healthz"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_name(host: str) -> str:
    """The name in a Host header, without its port or an IPv6 address's brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")


class HostPolicy:
    """The names a server answers to; `*` is any, `*.example.com` its subdomains."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(host_name(p) if p.strip() != "*" else "*" for p in patterns)

    @classmethod
    def default(cls, configured: Iterable[str] | None, *, authenticated: bool) -> HostPolicy:
        if configured is not None:
            return cls(configured)
        return cls(["*"] if authenticated else LOOPBACK_NAMES)

    @property
    def any(self) -> bool:
        return "*" in self.patterns

    def allows(self, host: str | None) -> bool:
        if self.any:
            return True
        name = host_name(host or "")
        return bool(name) and any(
            name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in self.patterns
        )


class HostCheck:
    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket") or self.policy.any
            or scope["path"] in UNCHECKED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        response = problem(
            400, "host_not_allowed",
            f"this server does not answer to the host {(host or '(none)')[:200]!r}; it answers "
            f"to {', '.join(self.policy.patterns)} (set JOBFLEET_API_HOSTS to change that)",
        )
        await response(scope, receive, send)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower().removesuffix("."), port or DEFAULT_PORTS.get(scheme)


def own_origin(scope: Scope, headers: Headers) -> tuple[str, str, int | None] | None:
    scheme = str(scope.get("scheme", "http"))
    host = headers.get("host")
    return _origin(f"{scheme}://{host}") if host else None


class OriginCheck:
    """Refuses a state-changing request from another site's page. Requests with a bearer
    token are left alone: a page cannot make a browser add one. `ambient` is a server
    with no token, which any page could reach through the browser."""

    def __init__(self, app: ASGIApp, *, ambient: bool) -> None:
        self.app = app
        self.ambient = ambient

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        credential = scope.get("state", {}).get("credential")
        if credential == "bearer":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        claimed = headers.get("origin") or headers.get("referer")
        if claimed is None and credential != "cookie":
            await self.app(scope, receive, send)  # not a browser: no page to forge it
            return
        if claimed is not None and _origin(claimed) == own_origin(scope, headers):
            await self.app(scope, receive, send)
            return
        said = "no Origin or Referer" if claimed is None else f"Origin {claimed[:200]!r}"
        response = problem(
            403, "cross_origin",
            f"{scope['method']} {scope['path']} from {said} refused: a request signed in "
            "by the dashboard's cookie (or to a server with no token) must come from this "
            "server's own pages; other clients send Authorization: Bearer",
        )
        await response(scope, receive, send)
