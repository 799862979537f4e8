"""The benchmark's clients, in a process of their own, as real clients would be: the GET
load generator and the raw SSE clients, each with what it makes of its measurements.

    python benchmarks/api_clients.py get|sse    (the config as JSON on stdin's first line)

benchmarks/api_latency.py starts them; the result is one line of JSON on stdout. The SSE
clients print `ready`, then wait for the orchestration's id on stdin's next line.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

BY_ID = "GET /v1/orchestrations/{id}"
LIST = "GET /v1/orchestrations?limit=50"
LIST_SHARE = 0.5  # of the GET load's requests
ROUTES = {BY_ID: "/v1/orchestrations/{orchestration_id}", LIST: "/v1/orchestrations"}
REQUEST_SECONDS = "jobfleet_http_request_duration_seconds"
TERMINAL = frozenset({"Completed", "Errored", "Cancelled"})
SOLO_WARMUP = 0.2  # seconds of the lone client's requests left out
SSE_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank; `ordered` is sorted."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- GET under load -------------------------------------------------------------------------


async def hammer(config: dict[str, Any]) -> dict[str, Any]:
    """The load generator: first one client alone (the unloaded latency), then `clients`
    keep-alive connections at once, each one request at a time."""
    ids: list[str] = config["ids"]
    headers = {"Authorization": f"Bearer {config['token']}"}
    failures: Counter[str] = Counter()
    connections = [
        httpx.AsyncClient(base_url=config["url"], headers=headers, timeout=30.0,
                          limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        for _ in range(config["clients"])
    ]

    async def one_client(client: httpx.AsyncClient, rng: random.Random, measure_from: float,
                         end: float, latencies: dict[str, list[float]]) -> None:
        while (sent := time.perf_counter()) < end:
            listing = rng.random() < LIST_SHARE
            kind = LIST if listing else BY_ID
            path = "/v1/orchestrations?limit=50" if listing else (
                f"/v1/orchestrations/{rng.choice(ids)}"
            )
            try:
                response = await client.get(path)
                await response.aread()
            except httpx.HTTPError as exc:
                failures[f"{kind}: {type(exc).__name__}"] += 1
                continue
            elapsed = time.perf_counter() - sent
            if sent < measure_from:
                continue
            if response.status_code == 200:
                latencies[kind].append(elapsed)
            else:
                failures[f"{kind}: HTTP {response.status_code}"] += 1

    def summary(latencies: dict[str, list[float]], duration: float) -> dict[str, Any]:
        endpoints = {}
        for kind, values in latencies.items():
            values.sort()
            endpoints[kind] = {"requests": len(values), "rps": len(values) / duration,
                               "p50_ms": 1000 * percentile(values, 0.50),
                               "p99_ms": 1000 * percentile(values, 0.99)}
        return endpoints

    rngs = [random.Random(config["seed"] * 10_000 + n) for n in range(len(connections))]
    try:
        alone: dict[str, list[float]] = {BY_ID: [], LIST: []}
        start = time.perf_counter()
        await one_client(connections[0], random.Random(-1 - config["seed"]),
                         start + SOLO_WARMUP, start + SOLO_WARMUP + config["solo"], alone)

        loaded: dict[str, list[float]] = {BY_ID: [], LIST: []}
        start = time.perf_counter()
        measure_from = start + config["warmup"]
        end = measure_from + config["duration"]
        clients = asyncio.gather(*(one_client(c, r, measure_from, end, loaded)
                                   for c, r in zip(connections, rngs, strict=True)))
        await asyncio.sleep(measure_from - time.perf_counter())
        mine, server = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(config["server_pid"])
        in_app = await in_app_totals(connections[0].base_url, headers)
        await asyncio.sleep(end - time.perf_counter())
        mine_after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = cpu_seconds(config["server_pid"]) - server
        in_app_after = await in_app_totals(connections[0].base_url, headers)
        await clients
    finally:
        for c in connections:
            await c.aclose()
    generator_cpu = (mine_after.ru_utime + mine_after.ru_stime) - (mine.ru_utime + mine.ru_stime)
    duration = config["duration"]
    endpoints = summary(loaded, duration)
    for kind, (seconds, count) in in_app_after.items():
        before_s, before_n = in_app.get(kind, (0.0, 0.0))
        endpoints[kind]["in_app_mean_ms"] = (
            1000 * (seconds - before_s) / (count - before_n) if count > before_n else math.nan
        )
    return {"alone": summary(alone, config["solo"]), "endpoints": endpoints,
            "rps": sum(len(v) for v in loaded.values()) / duration,
            "failures": dict(failures), "server_cpu": server_cpu / duration,
            "generator_cpu": generator_cpu / duration}


async def in_app_totals(url: httpx.URL, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """The server's own request timing (/metrics: from its first middleware to the last
    byte handed to uvicorn) of the two GET routes: (seconds, requests) so far."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as client:
        text = (await client.get("/metrics")).text
    totals: dict[str, list[float]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in (f"{REQUEST_SECONDS}_sum", f"{REQUEST_SECONDS}_count") or (
            'method="GET"' not in rest or 'status="200"' not in rest
        ):
            continue
        for kind, route in ROUTES.items():
            if f'route="{route}"' in rest:
                pair = totals.setdefault(kind, [0.0, 0.0])
                pair[name.endswith("_count")] += float(rest.rpartition(" ")[2])
    return {kind: (pair[0], pair[1]) for kind, pair in totals.items()}


# -- SSE lag --------------------------------------------------------------------------------


class Stream(asyncio.Protocol):
    """One SSE client, as a bare protocol that only stamps bytes as they arrive (through
    httpx, the clients spent about as much CPU per event as the server did). The bytes
    are parsed after the run, so the clients' own work cannot pass for the server's lag."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.arrivals: list[tuple[float, bytes]] = []
        self.ended = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None
        self.connected_at: float | None = None  # when the snapshot came
        self.order: list[tuple[int, str]] = []  # the measured transitions, as they came
        self.gate_transitions = 0
        self.unstamped = 0  # transitions back to Pending (a retry): nothing to measure
        self.events: Counter[str] = Counter()  # by event type
        self.completed = False
        self.error: str | None = None
        self.lags: list[tuple[float, float]] = []  # (stamp, seconds late)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.arrivals.append((time.time(), data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def parse(self, gates: int) -> None:
        raw, body, chunked, head = b"", b"", False, None
        for received, data in self.arrivals:
            raw += data
            if head is None:
                head, sep, rest = raw.partition(b"\r\n\r\n")
                if not sep:
                    head = None
                    continue
                status = head.split(b" ", 2)[1].decode()
                if status != "200":
                    self.error = f"HTTP {status}"
                    return
                chunked, raw = b"transfer-encoding: chunked" in head.lower(), rest
            new, raw = dechunk(raw) if chunked else (raw, b"")
            *whole, body = SSE_EVENT_END.split(body + new)
            for block in whole:
                self._event(block.decode(), received, gates)

    def _event(self, block: str, received: float, gates: int) -> None:
        fields = dict(line.partition(":")[::2] for line in block.splitlines())
        event, data = fields.get("event", "").strip(), fields.get("data", "").removeprefix(" ")
        if not event:
            return  # a ping comment
        self.events[event] += 1
        if event == "snapshot":
            self.connected_at = received
        elif event == "completed":
            self.completed = True
        elif event == "error":
            self.error = data
        elif event == "transition":
            instance = json.loads(data)
            status = instance["status"]
            stamp = instance["finished_at"] if status in TERMINAL else (
                instance["started_at"] if status == "InProgress" else None
            )
            if instance["index"] < gates:
                self.gate_transitions += 1
                return
            self.order.append((instance["index"], status))
            if stamp is None:
                self.unstamped += 1
            else:
                self.lags.append((stamp, received - stamp))


def dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """HTTP/1.1 chunked transfer coding: (the whole chunks' data, what is left over)."""
    out, pos = [], 0
    while (line_end := raw.find(b"\r\n", pos)) >= 0:
        size = int(raw[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if len(raw) < start + size + 2:
            break
        out.append(raw[start:start + size])
        pos = start + size + 2
        if size == 0:
            break
    return b"".join(out), raw[pos:]


async def listen(config: dict[str, Any]) -> dict[str, Any]:
    """The SSE clients: connect once the orchestration's id comes on stdin."""
    print("ready", flush=True)
    oid = sys.stdin.readline().strip()
    if not oid:
        raise SystemExit("no orchestration id on stdin")
    url = urlsplit(config["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (f"GET /v1/orchestrations/{oid}/events HTTP/1.1\r\nHost: {url.netloc}\r\n"
               f"Authorization: Bearer {config['token']}\r\nAccept: text/event-stream\r\n"
               "Connection: close\r\n\r\n").encode()
    began = time.time()
    mine, server = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(config["server_pid"])
    streams = [Stream(request) for _ in range(config["clients"])]
    loop = asyncio.get_running_loop()

    async def one(stream: Stream) -> None:
        try:
            await loop.create_connection(lambda: stream, host, port)
            await asyncio.wait_for(stream.ended, config["timeout"])
        except (OSError, TimeoutError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
        finally:
            if stream.transport is not None:
                stream.transport.close()

    await asyncio.gather(*(one(s) for s in streams))
    wall = time.time() - began
    mine_after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = cpu_seconds(config["server_pid"]) - server
    clients_cpu = (mine_after.ru_utime + mine_after.ru_stime) - (mine.ru_utime + mine.ru_stime)
    for stream in streams:
        stream.parse(config["gates"])

    stamped = sorted(pair for s in streams for pair in s.lags)
    lags = sorted(lag for _, lag in stamped)
    connected = [s.connected_at for s in streams if s.connected_at is not None]
    first_stamp = stamped[0][0] if stamped else math.inf
    fifths = [sorted(lag for _, lag in stamped[i * len(stamped) // 5:(i + 1) * len(stamped) // 5])
              for i in range(5)]
    return {
        "clients": len(streams),
        "lag_samples": len(lags),
        "p50_ms": 1000 * percentile(lags, 0.50),
        "p99_ms": 1000 * percentile(lags, 0.99),
        "max_ms": 1000 * lags[-1] if lags else math.nan,
        "min_ms": 1000 * lags[0] if lags else math.nan,
        "transitions_per_client": {str(k): v for k, v in
                                   Counter(len(s.order) for s in streams).items()},
        "distinct_orders": len({tuple(s.order) for s in streams}),
        "gate_transitions_per_client": {str(k): v for k, v in
                                        Counter(s.gate_transitions for s in streams).items()},
        "p50_ms_by_fifth_of_run": [1000 * percentile(f, 0.50) for f in fifths],
        "events_per_client": {
            kind: {str(k): v for k, v in Counter(s.events[kind] for s in streams).items()}
            for kind in sorted({k for s in streams for k in s.events})
        },
        "server_cpu": server_cpu / wall,
        "clients_cpu": clients_cpu / wall,
        "wall_s": wall,
        "unstamped": sum(s.unstamped for s in streams),
        "completed": sum(s.completed for s in streams),
        "errors": dict(Counter(s.error for s in streams if s.error)),
        "connect_s": max(connected) - began if connected else math.nan,
        "connected_late": sum(1 for s in streams
                              if s.connected_at is None or s.connected_at > first_stamp),
    }


def main() -> None:
    modes = {"get": hammer, "sse": listen}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        raise SystemExit(f"usage: {sys.argv[0]} get|sse  (started by api_latency.py)")
    config = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(modes[sys.argv[1]](config))))


if __name__ == "__main__":
    main()
