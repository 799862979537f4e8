"""A bound on request bodies, on every route (those that need no token included), checked
before the body is read: a declared Content-Length over the limit is refused at once, and
a body that arrives in chunks is counted as the app reads it and cut off at the limit.
A route that anyone may call and that reads a small body (the sign-in) has a limit of
its own, so that a caller without a token cannot make the server hold much."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobfleet.api.problems import problem


class BodyTooLarge(Exception):
    """Raised into the app's read of a body that went past the limit."""


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{limit} bytes ({mib:g} MiB)" if mib >= 1 else f"{limit} bytes"


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int, by_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_path = {path: min(limit, max_bytes) for path, limit in (by_path or {}).items()}

    async def refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        if limit < self.max_bytes:
            where = f"the limit of {scope['method']} {scope['path']}, {_size(limit)}"
        else:
            where = f"this server's limit of {_size(limit)}"
        response = problem(
            413, "body_too_large",
            f"the request body is larger than {where}; the server's limit is set by "
            "JOBFLEET_API_MAX_BODY_BYTES",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.refuse(scope, receive, send, limit)
            return
        received = 0
        exceeded = started = False

        async def counting(  # the app's reads of the body
        ) -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app made of the cut-off read, the answer is a 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self.refuse(scope, receive, send, limit)
