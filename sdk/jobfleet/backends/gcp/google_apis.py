"""How the adapters call Google's admin APIs (Cloud Run, Cloud Scheduler): where a
client points, and which failures a call retries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import (
    BadGateway,
    GatewayTimeout,
    InternalServerError,
    ServiceUnavailable,
    TooManyRequests,
)
from google.api_core.retry import Retry, if_exception_type
from google.auth.credentials import AnonymousCredentials

CALL_TIMEOUT_SECONDS = 30.0

# Quota (429) and server-side hiccups (500, 502, 503, 504 and its gRPC twin
# DEADLINE_EXCEEDED, a dropped connection) pass; anything else is a mistake to report.
TRANSIENT_ERRORS = (
    TooManyRequests,
    InternalServerError,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
    requests.exceptions.ConnectionError,
)
ADMIN_API_RETRY = Retry(
    predicate=if_exception_type(*TRANSIENT_ERRORS),
    initial=0.25,
    maximum=8.0,
    multiplier=2.0,
    timeout=60.0,
)


def client_arguments(endpoint: str | None) -> dict[str, Any]:
    """A client's constructor arguments for an endpoint override: the REST transport
    goes there, anonymously over plain http (a local stand-in). Without an override,
    none: the production client's defaults."""
    if not endpoint:
        return {}
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return {
        "transport": "rest",
        "client_options": ClientOptions(api_endpoint=f"{parts.scheme}://{parts.netloc}"),
        "credentials": anonymous if parts.scheme == "http" else None,
    }
