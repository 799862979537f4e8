"""A local stand-in for https://www.googleapis.com/oauth2/v1/certs: the certificates of
keys the tests sign ID tokens with, served with Google's caching headers, so that
google-auth verifies those tokens exactly as it verifies Google's."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KID = "2f8b0c1e"


class CertsServer(ThreadingHTTPServer):
    """Serves `{kid: PEM certificate}` with Google's caching headers, counting fetches."""

    def __init__(self, certs: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), CertsHandler)
        self.certs = certs
        self.status = 200
        self.cache_control = "public, max-age=20105, must-revalidate, no-transform"
        self.age: str | None = None
        self.fetches = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/oauth2/v1/certs"


class CertsHandler(BaseHTTPRequestHandler):
    server: CertsServer

    def do_GET(self) -> None:
        self.server.fetches += 1
        body = json.dumps(self.server.certs).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Cache-Control", self.server.cache_control)
        if self.server.age is not None:
            self.send_header("Age", self.server.age)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""
