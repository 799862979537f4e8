"""uvicorn's access log, with the values of credential-like query parameters redacted:
a client that puts its token in the URL (`?access_token=...`) must not leave it in a
log that more people read than hold the token."""

from __future__ import annotations

import copy
import logging
from typing import Any
from urllib.parse import unquote_plus

from jobfleet.log_lines import JSON, TEXT, LineFormatter, context

SECRET_PARAMETERS = frozenset({
    "access_token", "id_token", "token", "auth", "authorization", "bearer", "jwt",
    "api_key", "apikey", "key", "password", "secret",
})
REDACTED = "REDACTED"


def redact(path: str) -> str:
    """`path` with the value of every secret-looking query parameter replaced."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            part = f"{name}={REDACTED}" if eq else part
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


class RedactQuerySecrets(logging.Filter):
    """For uvicorn.access, whose records carry (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def log_config(fmt: str = TEXT) -> dict[str, Any]:
    """uvicorn's own logging configuration, its access logger filtered; in the JSON
    format (log_lines.py), every line is a Cloud Logging record, the API's own too."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query_secrets"] = {"()": RedactQuerySecrets}
    config["loggers"]["uvicorn.access"]["filters"] = ["redact_query_secrets"]
    if fmt == JSON:
        context.source = "api"
        for name in ("default", "access"):
            config["formatters"][name] = {"()": LineFormatter, "fmt": JSON}
        config["loggers"][""] = {"handlers": ["default"], "level": "INFO"}
    return config
