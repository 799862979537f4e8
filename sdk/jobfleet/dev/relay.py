"""The trigger relay for dev and tests: the Firestore emulator's events as Eventarc sends them.

In the cloud, Eventarc turns each update of a shard counter document
(`jobfleet_orchestrations/{id}/shards/{shard}`) into a
`google.cloud.firestore.document.v1.updated` CloudEvent and POSTs it to the completion
function. The Firestore emulator, started with `--functions_emulator=ADDRESS`,
POSTs one request per write that matches a registered trigger to ADDRESS, with the old
and new documents, whatever the number of documents in the database. This relay listens
on ADDRESS, turns each request into the one Eventarc sends (see `jobfleet.dev.eventarc`)
and POSTs it to the function of the trigger's route: at least once and, if asked, in
several copies out of order, as Eventarc may.

An emulator sends to one relay address, so a route added to any other relay never
fires: other processes add routes to the running relay over HTTP (`POST /_relay/routes`,
`add_route`); `GET /_relay/stats` has each route's counters. A write tally
(`jobfleet.dev.write_tally`, `POST /_relay/tallies`) counts every write to every document
of a project instead of relaying it: how benchmarks measure writes per document per
second. That HTTP surface and its client are in `jobfleet.dev.relay_http`.

Run it with `python -m jobfleet.dev.relay --port PORT --firestore HOST:PORT`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
import logging
import math
import os
import queue
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from jobfleet.dev.eventarc import (
    DEFAULT_LOCATION,
    EVERY_DOCUMENT,
    WRITTEN,
    FirestoreEvent,
    FunctionEndpoint,
    as_eventarc_sends,
    register_trigger,
    retire_trigger,
)
from jobfleet.dev.relay_http import RelayServer
from jobfleet.dev.write_tally import WriteTally
from jobfleet.errors import ConfigurationError

log = logging.getLogger(__name__)

THREAD_PREFIX = "jobfleet-relay"  # every thread the relay starts is named so
CONCURRENCY = 16
MAX_PENDING = 100_000
RETRIES = 4
RETRY_PAUSE = 0.05  # doubled on each retry
SHUFFLE_WINDOW = 0.05  # seconds over which the copies of a change are spread when shuffling



@dataclass(eq=False)
class Route:
    """An emulator trigger on one project's shard counters (updates), relayed to one
    function: each counted event is one invocation, as on Google Cloud.

    `deliveries=3, shuffle=True` sends every event three times (same `ce-id`), the
    copies spread over the relay's shuffle window so that they interleave with other
    events' copies: Eventarc's at-least-once, out-of-order delivery, on purpose.
    The counters are the relay's to update, under its lock.
    """

    trigger_id: str
    project: str
    function_url: str
    deliveries: int = 1
    shuffle: bool = False
    changes: int = field(default=0, init=False)  # events the emulator sent for the trigger
    delivered: int = field(default=0, init=False)  # requests answered with 2xx
    invocations: int = field(default=0, init=False)  # requests answered at all (retries too)
    failed: int = field(default=0, init=False)  # given up: a 4xx, or no 2xx after the retries
    pending: int = field(default=0, init=False)  # deliveries queued or in flight
    idle: list[FunctionEndpoint] = field(default_factory=list, init=False, repr=False)
    closed: bool = field(default=False, init=False)  # unregistered: connections not kept

    def stats(self) -> dict[str, object]:
        return {
            "trigger_id": self.trigger_id, "project": self.project,
            "function_url": self.function_url, "deliveries": self.deliveries,
            "shuffle": self.shuffle, "changes": self.changes, "delivered": self.delivered,
            "invocations": self.invocations, "failed": self.failed, "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One CloudEvent for a route; its copies (deliveries > 1) share it, id included."""

    route: Route
    event: FirestoreEvent


class TriggerRelay:
    """Receives the Firestore emulator's trigger requests and delivers them to functions.

    The emulator sends one request at a time and waits for the answer, so a request is
    only converted and queued before it is answered. A pool of `concurrency` workers
    posts the queue to the functions in parallel; a delivery answered with a 5xx, or
    not answered, is retried `RETRIES` times with a growing pause.
    """

    def __init__(
        self,
        firestore_host: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        concurrency: int = CONCURRENCY,
        max_pending: int = MAX_PENDING,
        shuffle_window: float = SHUFFLE_WINDOW,
        location: str = DEFAULT_LOCATION,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        self.firestore_host = firestore_host
        self.concurrency = concurrency
        self.shuffle_window = shuffle_window
        self.location = location
        self._bind = (host, port)
        self._routes: dict[str, Route] = {}
        self._every_route: list[Route] = []  # removed ones too, for the totals
        self._tallies: dict[str, WriteTally] = {}
        self._queue: queue.PriorityQueue[tuple[float, int, Delivery | None]] = (
            queue.PriorityQueue(max_pending)
        )
        self._order = itertools.count()
        self._pending = 0
        self.unrouted = 0  # requests for a trigger that has no route here
        self.thread_prefix = THREAD_PREFIX  # "jobfleet-relay:PORT/" once started
        self._lock = threading.Condition()
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._server: RelayServer | None = None
        self._serving: threading.Thread | None = None

    @property
    def address(self) -> str:
        """host:port, as the emulator's `--functions_emulator` takes it."""
        if self._server is None:
            raise RuntimeError("the relay is not started")
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> TriggerRelay:
        self._stopping = False
        self._server = RelayServer(self._bind, self)
        self.thread_prefix = f"{THREAD_PREFIX}:{self._server.server_address[1]}/"
        self._workers = [
            threading.Thread(target=self._post_loop, name=f"{self.thread_prefix}post-{n}",
                             daemon=True)
            for n in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()
        self._serving = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"{self.thread_prefix}http", daemon=True,
        )
        self._serving.start()
        return self

    def register(
        self, project: str, function_url: str, deliveries: int = 1, shuffle: bool = False
    ) -> Route:
        """Relay every update of the project's shard counters to the function, from now on."""
        if deliveries < 1:
            raise ConfigurationError("deliveries must be at least 1")
        if not project:
            raise ConfigurationError("a route needs a project")
        FunctionEndpoint(function_url)  # refuse a bad URL now, not in every worker
        route = Route(f"jobfleet-{uuid.uuid4().hex[:16]}", project, function_url, deliveries,
                      shuffle)
        with self._lock:
            self._routes[route.trigger_id] = route
            self._every_route.append(route)
        try:
            register_trigger(self.firestore_host, project, route.trigger_id)
        except BaseException:
            with self._lock:
                del self._routes[route.trigger_id]
                self._every_route.remove(route)
            raise
        log.info("route %s: project %s -> %s", route.trigger_id, project, function_url)
        return route

    def unregister(self, route: Route, timeout: float = 30.0) -> None:
        """Stop relaying the route's events; deliver what is queued for it first."""
        with self._lock:
            self._routes.pop(route.trigger_id, None)
        try:
            retire_trigger(self.firestore_host, route.project, route.trigger_id)
        except ConfigurationError as exc:  # the emulator is gone: so are its triggers
            log.info("route %s: %s", route.trigger_id, exc)
        self.wait_idle(route, timeout)
        with self._lock:
            route.closed = True
            idle, route.idle = route.idle, []
        for endpoint in idle:
            endpoint.close()
        log.info("route %s removed: %d changes, %d delivered, %d failed",
                 route.trigger_id, route.changes, route.delivered, route.failed)

    def start_tally(self, project: str, documents: str = EVERY_DOCUMENT) -> WriteTally:
        """Count every write to the project's documents that match `documents` (a path
        pattern; by default every document), from now on."""
        if not project:
            raise ConfigurationError("a tally needs a project")
        tally = WriteTally(f"jobfleet-tally-{uuid.uuid4().hex[:16]}", project, documents)
        with self._lock:
            self._tallies[tally.trigger_id] = tally
        try:
            register_trigger(self.firestore_host, project, tally.trigger_id, documents, WRITTEN)
        except BaseException:
            with self._lock:
                del self._tallies[tally.trigger_id]
            raise
        return tally

    def tally(self, trigger_id: str) -> WriteTally | None:
        with self._lock:
            return self._tallies.get(trigger_id)

    def stop_tally(self, tally: WriteTally) -> None:
        """Stop counting; what was counted stays readable from `tally`."""
        with self._lock:
            self._tallies.pop(tally.trigger_id, None)
        try:
            retire_trigger(self.firestore_host, tally.project, tally.trigger_id)
        except ConfigurationError as exc:
            log.info("tally %s: %s", tally.trigger_id, exc)

    def route(self, trigger_id: str) -> Route | None:
        with self._lock:
            return self._routes.get(trigger_id)

    def stats(self) -> dict[str, Any]:
        """The current routes' counters, and totals over every route there has been."""
        with self._lock:
            routes = {tid: route.stats() for tid, route in self._routes.items()}
            totals = {
                counter: sum(getattr(route, counter) for route in self._every_route)
                for counter in ("changes", "delivered", "invocations", "failed")
            }
            unrouted = self.unrouted
        return {"firestore": self.firestore_host, "unrouted": unrouted, "totals": totals,
                "routes": routes}

    def wait_idle(self, route: Route | None = None, timeout: float = 30.0) -> bool:
        """Wait until every event received so far (for the route, or any) is delivered."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while route.pending if route is not None else self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop receiving; deliver what is queued (unless `drain=False`); end the workers."""
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()  # joins the connection threads
            self._server = None
        if self._serving is not None:
            self._serving.join(timeout)
            self._serving = None
        if drain:
            self.wait_idle(timeout=timeout)
        self._stopping = True
        for _ in self._workers:
            self._queue.put((math.inf, next(self._order), None))
        for worker in self._workers:
            worker.join(timeout)
        self._workers = []
        with self._lock:
            routes = list(self._routes.values())
        for route in routes:
            for endpoint in route.idle:
                endpoint.close()
            route.idle = []

    def __enter__(self) -> TriggerRelay:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def receive(self, project: str, trigger_id: str, event_id: str, body: bytes) -> int:
        """One trigger request from the emulator, queued; the HTTP status to answer with."""
        received = dt.datetime.now(dt.UTC)
        tally = self.tally(trigger_id)
        if tally is not None and tally.project == project:
            try:
                tally.add(body)
            except ValueError as exc:
                log.warning("could not read the emulator's event %s: %s", event_id, exc)
                return 400
            return 200
        route = self.route(trigger_id)
        if route is None or route.project != project:
            with self._lock:
                self.unrouted += 1
            return 404  # a removed route's event still on its way
        try:
            event = as_eventarc_sends(project, event_id, body, received, self.location)
        except ValueError as exc:
            log.warning("could not read the emulator's event %s: %s", event_id, exc)
            return 400
        delivery = Delivery(route, event)
        with self._lock:
            route.changes += 1
            route.pending += route.deliveries
            self._pending += route.deliveries
        now = time.monotonic()
        for _ in range(route.deliveries):
            due = now + random.uniform(0, self.shuffle_window) if route.shuffle else 0.0
            self._queue.put((due, next(self._order), delivery))
        return 200

    def _post_loop(self) -> None:
        while True:
            due, _, delivery = self._queue.get()
            if delivery is None:
                return
            if not self._stopping:
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self._deliver(delivery)
            route = delivery.route
            with self._lock:
                route.pending -= 1
                self._pending -= 1
                if not route.pending or not self._pending:
                    self._lock.notify_all()

    def _deliver(self, delivery: Delivery) -> None:
        route = delivery.route
        with self._lock:
            endpoint = route.idle.pop() if route.idle else FunctionEndpoint(route.function_url)
        try:
            problem = self._post(endpoint, delivery)
        finally:
            with self._lock:
                if route.closed:
                    endpoint.close()
                else:
                    route.idle.append(endpoint)
        if problem:
            with self._lock:
                route.failed += 1
            log.warning("gave up delivering the change of %s: %s", delivery.event.document,
                        problem)

    def _post(self, endpoint: FunctionEndpoint, delivery: Delivery) -> str:
        """Deliver with retries; "" once delivered, else what went wrong."""
        route = delivery.route
        problem = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            try:
                status = endpoint.post(delivery.event)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            with self._lock:
                route.invocations += 1
                if 200 <= status < 300:
                    route.delivered += 1
                    return ""
            problem = f"HTTP {status}"
            if status < 500:
                break  # the function refused the event; sending it again will not help
        return problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobfleet.dev.relay",
        description="Receive the Firestore emulator's trigger events (its --functions_emulator "
        "address) and POST each to a function as the CloudEvent Eventarc would send.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (logged)")
    parser.add_argument("--firestore", default=os.environ.get("FIRESTORE_EMULATOR_HOST"),
                        help="the emulator's host:port (default: FIRESTORE_EMULATOR_HOST)")
    parser.add_argument("--project", help="with --function-url: a first route")
    parser.add_argument("--function-url")
    parser.add_argument("--deliveries", type=int, default=1, help="copies of every event")
    parser.add_argument("--shuffle", action="store_true", help="deliver out of order")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    if not args.firestore:
        parser.error("--firestore is required (or set FIRESTORE_EMULATOR_HOST)")
    if args.function_url and not args.project:
        args.project = os.environ.get("GOOGLE_CLOUD_PROJECT")
        if not args.project:
            parser.error("--function-url needs --project (or GOOGLE_CLOUD_PROJECT)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    finished = threading.Event()

    def finish(signum: int, frame: FrameType | None) -> None:
        finished.set()

    signal.signal(signal.SIGINT, finish)
    signal.signal(signal.SIGTERM, finish)
    try:
        relay = TriggerRelay(
            args.firestore, host=args.host, port=args.port, concurrency=args.concurrency
        ).start()
    except (ConfigurationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.function_url:
            relay.register(args.project, args.function_url, args.deliveries, args.shuffle)
    except ConfigurationError as exc:
        relay.stop(drain=False)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("relaying trigger events on %s for the Firestore emulator at %s",
             relay.url, args.firestore)
    finished.wait()
    relay.stop()
    totals = relay.stats()["totals"]
    log.info("stopped: %d changes, %d delivered, %d failed",
             totals["changes"], totals["delivered"], totals["failed"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
