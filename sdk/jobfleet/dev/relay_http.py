"""The trigger relay's HTTP surface, and its client for other processes.

The relay (`jobfleet.dev.relay.TriggerRelay`) listens on one address for two kinds of
request: the Firestore emulator's trigger requests
(`POST /functions/projects/{project}/triggers/{trigger_id}`), and its own routes
(`POST /_relay/routes`, `DELETE /_relay/routes/{trigger_id}`, `GET /_relay/stats`),
which other processes reach through `add_route` and `remove_route`, and its write tallies
(`POST /_relay/tallies`, `GET` or `DELETE /_relay/tallies/{trigger_id}`: `start_tally`,
`tally_summary`).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from jobfleet.dev.eventarc import EMULATOR_TIMEOUT, EVERY_DOCUMENT, POST_TIMEOUT
from jobfleet.errors import ConfigurationError

if TYPE_CHECKING:
    from jobfleet.dev.relay import TriggerRelay

log = logging.getLogger("jobfleet.dev.relay")

ROUTE_TIMEOUT = EMULATOR_TIMEOUT + 5.0
TALLIES = "/_relay/tallies/"
TRIGGER_PATH = re.compile(r"/functions/projects/([^/]+)/triggers/([^/?]+)")


class RelayServer(ThreadingHTTPServer):
    """One thread per connection (the emulator keeps one open).

    `stop` shuts the open connections down and joins their threads, which are
    therefore not daemons.
    """

    daemon_threads = False

    def __init__(self, address: tuple[str, int], relay: TriggerRelay) -> None:
        super().__init__(address, RelayHandler)
        self.relay = relay
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        threading.current_thread().name = f"{self.relay.thread_prefix}connection"
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the emulator reuses its connection
    server: RelayServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        relay = self.server.relay
        path = urllib.parse.urlsplit(self.path).path
        if trigger := TRIGGER_PATH.fullmatch(path):
            project, trigger_id = (urllib.parse.unquote(part) for part in trigger.groups())
            event_id = self.headers.get("ce-id") or str(uuid.uuid4())
            self._reply(relay.receive(project, trigger_id, event_id, body))
        elif path == "/_relay/routes":
            self._add_route(relay, body)
        elif path == "/_relay/tallies":
            self._start_tally(relay, body)
        else:
            self._reply(404, {"error": f"no {path}"})

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_relay/stats":
            self._reply(200, self.server.relay.stats())
        elif path.startswith(TALLIES):
            tally = self.server.relay.tally(path.removeprefix(TALLIES))
            if tally is None:
                self._reply(404, {"error": f"no tally {path.removeprefix(TALLIES)}"})
            else:
                self._reply(200, tally.summary())
        elif path == "/":
            self._reply(200)
        else:
            self._reply(404, {"error": f"no {path}"})

    def do_DELETE(self) -> None:
        relay = self.server.relay
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(TALLIES):
            tally = relay.tally(path.removeprefix(TALLIES))
            if tally is None:
                self._reply(404, {"error": f"no tally {path.removeprefix(TALLIES)}"})
                return
            relay.stop_tally(tally)
            self._reply(200, tally.summary())
            return
        trigger_id = path.removeprefix("/_relay/routes/")
        route = relay.route(trigger_id)
        if route is None:
            self._reply(404, {"error": f"no route {trigger_id}"})
            return
        relay.unregister(route)
        self._reply(200, route.stats())

    def _add_route(self, relay: TriggerRelay, body: bytes) -> None:
        try:
            asked = json.loads(body or b"{}")
            route = relay.register(
                str(asked["project"]), str(asked["function_url"]),
                int(asked.get("deliveries", 1)), bool(asked.get("shuffle", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, {"error": f"a route is JSON with project and function_url "
                                       f"(and deliveries, shuffle): {exc!r}"})
        except ConfigurationError as exc:
            self._reply(502, {"error": str(exc)})
        else:
            self._reply(201, route.stats())

    def _start_tally(self, relay: TriggerRelay, body: bytes) -> None:
        try:
            asked = json.loads(body or b"{}")
            tally = relay.start_tally(
                str(asked["project"]), str(asked.get("documents", EVERY_DOCUMENT))
            )
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, {"error": f"a tally is JSON with project (and documents, a "
                                       f"path pattern): {exc!r}"})
        except ConfigurationError as exc:
            self._reply(502, {"error": str(exc)})
        else:
            self._reply(201, tally.summary())

    def _reply(self, status: int, payload: object = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        if body:
            self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def add_route(
    relay_url: str, project: str, function_url: str, deliveries: int = 1, shuffle: bool = False
) -> dict[str, Any]:
    """Add a route to a running relay from another process; its stats, trigger id included."""
    payload = {"project": project, "function_url": function_url, "deliveries": deliveries,
               "shuffle": shuffle}
    request = urllib.request.Request(
        f"{relay_url.rstrip('/')}/_relay/routes", data=json.dumps(payload).encode(),
        method="POST", headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=ROUTE_TIMEOUT) as reply:
            stats: dict[str, Any] = json.load(reply)
    except urllib.error.HTTPError as exc:
        raise ConfigurationError(f"the relay at {relay_url} refused the route: "
                                 f"{exc.read().decode(errors='replace')[:500]}") from exc
    except OSError as exc:
        raise ConfigurationError(f"no trigger relay answers at {relay_url}: {exc}") from exc
    return stats


def remove_route(relay_url: str, trigger_id: str) -> None:
    """Remove a route from a running relay, if both are still there."""
    request = urllib.request.Request(
        f"{relay_url.rstrip('/')}/_relay/routes/{trigger_id}", method="DELETE"
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT + 5) as reply:
            reply.read()
    except OSError:
        pass


def start_tally(relay_url: str, project: str, documents: str = EVERY_DOCUMENT) -> str:
    """Start counting every write to the project's documents that match `documents`;
    the tally's id."""
    request = urllib.request.Request(
        f"{relay_url.rstrip('/')}/_relay/tallies",
        data=json.dumps({"project": project, "documents": documents}).encode(),
        method="POST", headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=ROUTE_TIMEOUT) as reply:
            return str(json.load(reply)["trigger_id"])
    except urllib.error.HTTPError as exc:
        raise ConfigurationError(f"the relay at {relay_url} refused the tally: "
                                 f"{exc.read().decode(errors='replace')[:500]}") from exc
    except OSError as exc:
        raise ConfigurationError(f"no trigger relay answers at {relay_url}: {exc}") from exc


def tally_summary(relay_url: str, trigger_id: str, *, stop: bool = False) -> dict[str, Any]:
    """What a tally counted (`WriteTally.summary`); with `stop`, it counts no more."""
    request = urllib.request.Request(
        f"{relay_url.rstrip('/')}{TALLIES}{trigger_id}", method="DELETE" if stop else "GET"
    )
    with urllib.request.urlopen(request, timeout=ROUTE_TIMEOUT) as reply:
        summary: dict[str, Any] = json.load(reply)
    return summary
