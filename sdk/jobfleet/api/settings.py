"""The HTTP API's own settings, from the environment (the SDK's are in jobfleet.config)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from jobfleet.errors import ConfigurationError

# Cloud Run's own limit on a request: a bigger body never reaches the service there.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # The names the server answers to (Host), "*.example.com" and "*" allowed; None is
    # loopback names only without a token, and any name with one.
    hosts: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        limit = (env.get("JOBFLEET_API_MAX_BODY_BYTES") or "").strip()
        hosts = (env.get("JOBFLEET_API_HOSTS") or "").strip()
        return cls(
            max_body_bytes=_positive(limit) if limit else DEFAULT_MAX_BODY_BYTES,
            hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) or None,
        )


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(
            f"JOBFLEET_API_MAX_BODY_BYTES={text!r} is not a positive number of bytes "
            f"(the default is {DEFAULT_MAX_BODY_BYTES}, 32 MiB)"
        )
    return value
