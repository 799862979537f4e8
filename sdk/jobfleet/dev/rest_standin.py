"""What the local stand-ins of Google's REST APIs (`cloud_run.py`, `cloud_scheduler.py`)
share: Google's JSON error body, a server on 127.0.0.1 that hands each request's
method, path and JSON body to the stand-in from one thread while another drives the
stand-in's own clock, the calls it counts for tests, and a process's main loop."""

from __future__ import annotations

import json
import signal
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Self

Json = dict[str, Any]
Reply = tuple[int, Json]

# google.rpc.Code names as the JSON error body carries them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiError(Exception):
    """Answered as Google's JSON error body: {"error": {"code", "message", "status"}}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def reply(self) -> Reply:
        status = STATUS_NAMES.get(self.code, "UNKNOWN")
        return self.code, {"error": {"code": self.code, "message": str(self), "status": status}}


class RestStandIn(ABC):
    """One API served on 127.0.0.1 from background threads: `handle` answers a request,
    `drive` runs until `_stopped` is set (executions, timers)."""

    name: str  # of its threads
    tick: float  # seconds between the server's shutdown checks

    def __init__(self, port: int) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._stopped = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    @abstractmethod
    def handle(self, method: str, path: str, body: Json) -> Reply: ...

    @abstractmethod
    def drive(self) -> None: ...

    def headers(self, path: str) -> dict[str, str]:
        """Headers of the answer to `path` besides the content's."""
        return {}

    def start(self) -> Self:
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(self.tick,),
                             name=self.name, daemon=True),
            threading.Thread(target=self.drive, name=f"{self.name}-drive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and driving."""
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def calls(self) -> dict[str, int]:
        """Calls received per method, failed ones included."""
        with self._lock:
            return dict(self._calls)


def _handler_for(standin: RestStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PATCH(self) -> None:
            self._answer("PATCH")

        def do_DELETE(self) -> None:
            self._answer("DELETE")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                status, reply = ApiError(400, "the request body is not JSON").reply()
            else:
                status, reply = standin.handle(method, self.path, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            for name, value in standin.headers(self.path).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the call counts say what was called; keep test output clean

    return Handler


def serve_until_signalled(standin: RestStandIn, announce: Sequence[str]) -> int:
    """A started stand-in's process: print `announce` (the settings that point a client
    at it), serve until SIGTERM or SIGINT, then stop it."""
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for line in announce:
        print(line, flush=True)
    done.wait()
    standin.stop()
    return 0
