"""Every refusal of the API as JSON: `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def problem(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status, headers=headers or None
    )
