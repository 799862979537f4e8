"""HTTP API benchmark: GET latency under load, and the lag of live events with 200 clients.

    python benchmarks/api_latency.py [--orchestrations 200] [--clients 32] [--duration 10]
                                     [--repeat 3] [--sse-clients 200] [--sse-params 200]
                                     [--gate 3] [--quick] [--json]

Runs against a real `python -m jobfleet serve` on the local backend, in a temporary
JOBFLEET_HOME, with JOBFLEET_API_TOKEN set so that every request is authenticated. The
server first gets --orchestrations small `noop` fan-outs, run to the end. Then, --repeat
times each, with the clients in a second process (benchmarks/api_clients.py):

GET: one client alone for --solo seconds (the unloaded latency), then --clients
keep-alive clients for --duration seconds after a warm-up; each request asks, half and
half at random, for one seeded orchestration by id or for the newest 50. Requests/s and
p50/p99 per endpoint as the clients see them, and the mean time inside the app from the
server's own /metrics histogram (the rest is waiting in uvicorn's event loop or socket).

SSE: --sse-clients event streams on one `process_batch` orchestration (--sse-params
instances of 10-50 ms, parallelism 2). A stream needs the orchestration's id, so it opens
after the kick-off: the first instance of each of the two shards sleeps --gate seconds so
that every client is connected before the measured work starts, and those two are left
out. For every other `transition` a client receives, the lag is the arrival time of its
bytes minus the transition's own stamp (`finished_at` for an ended instance, `started_at`
for InProgress), taken over all clients; the clients only stamp bytes and parse them
after the run. /metrics is scraped meanwhile for jobfleet_sse_upstreams (one per
orchestration followed, however many clients) and jobfleet_sse_clients.

Figures are medians of the runs; on a shared machine read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from api_clients import BY_ID, LIST, TERMINAL

CLIENTS = Path(__file__).resolve().with_name("api_clients.py")
SSE_PARALLELISM = 2  # so two gate instances: instance i is in shard i % 2, claimed by index
SEED_PARAMS = 5  # `noop` instances per seeded orchestration
SEED_IN_FLIGHT = 4  # seeded orchestrations running at once (each is 2 processes)
SCRAPE_SECONDS = 0.25
QUICK = {"orchestrations": 20, "duration": 2.0, "warmup": 0.5, "solo": 1.0, "repeat": 1,
         "sse_clients": 50, "sse_params": 40, "gate": 2.0}


def median(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def finite(value: Any) -> Any:
    """NaN (no sample) as null, so that --json is JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# -- the server ---------------------------------------------------------------------------


class Server:
    """`jobfleet serve` in a temporary home, with a token; on exit, whatever is still
    running is cancelled through the API, the server stopped and the home removed."""

    def __init__(self) -> None:
        self._home = tempfile.TemporaryDirectory(
            prefix="jobfleet-api-bench-", ignore_cleanup_errors=True
        )
        self.home = Path(self._home.name)
        self.token = secrets.token_urlsafe(24)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.home / "serve.log"
        self.unfinished: set[str] = set()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFLEET_")}
        env.update(JOBFLEET_HOME=str(self.home), JOBFLEET_JOBS="jobfleet.demo",
                   JOBFLEET_API_TOKEN=self.token)
        try:
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "jobfleet", "serve", "--port", str(self.port)],
                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches this script only; it stops it
                )
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_healthy(self, patience: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"jobfleet serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"jobfleet serve did not answer /healthz within {patience:.0f} s")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self._cancel_unfinished()
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self._home.cleanup()

    def _cancel_unfinished(self) -> None:
        """An orchestration's supervisor outlives the server: cancelling stops it."""
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=5.0) as client:
            for oid in list(self.unfinished):
                try:
                    if client.get(f"/v1/orchestrations/{oid}").json()["status"] not in TERMINAL:
                        client.post(f"/v1/orchestrations/{oid}/cancel")
                except (httpx.HTTPError, KeyError, ValueError):
                    pass

    def kick_off(self, client: httpx.Client, job: str, params: list[dict[str, Any]],
                 parallelism: int) -> str:
        body = {"job_name": job, "params": params, "parallelism": parallelism}
        response = client.post("/v1/orchestrations", json=body)
        if response.status_code != 202:
            raise SystemExit(f"kick-off answered {response.status_code}: {response.text}")
        oid: str = response.json()["orchestration_id"]
        self.unfinished.add(oid)
        return oid

    def wait_ended(self, client: httpx.Client, oid: str, patience: float = 120.0) -> str:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            status: str = client.get(f"/v1/orchestrations/{oid}").json()["status"]
            if status in TERMINAL:
                self.unfinished.discard(oid)
                return status
            time.sleep(0.05)
        raise SystemExit(f"orchestration {oid} did not end within {patience:.0f} s")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0)


def seed(server: Server, count: int) -> list[str]:
    """`count` small noop fan-outs run to the end, a few at a time."""
    ids: list[str] = []
    numbers = iter(range(count))
    lock = threading.Lock()

    def one_after_another() -> None:
        with server.client() as client:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                params = [{"orchestration": n, "i": i} for i in range(SEED_PARAMS)]
                oid = server.kick_off(client, "noop", params, parallelism=1)
                if server.wait_ended(client, oid) != "Completed":
                    raise SystemExit(f"seeded orchestration {oid} did not complete")
                with lock:
                    ids.append(oid)

    threads = [threading.Thread(target=one_after_another, daemon=True)
               for _ in range(SEED_IN_FLIGHT)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # a join with a timeout lets Ctrl-C through
            t.join(0.2)
    if len(ids) != count:
        raise SystemExit(f"seeded {len(ids)} of {count} orchestrations; see the output above")
    return ids


@contextmanager
def second_process(mode: str, config: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    """The load generator (`get`) or the SSE clients (`sse`): their own interpreter and
    CPU, as real clients would be. They read `config` as the first line of stdin."""
    child = subprocess.Popen(
        [sys.executable, str(CLIENTS), mode], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert child.stdin is not None
        child.stdin.write(json.dumps(config) + "\n")
        child.stdin.flush()
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def finish(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    out = child.stdout.read()
    if child.wait() != 0 or not out.strip():
        raise SystemExit(f"{child.args!r} exited with {child.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- GET under load -------------------------------------------------------------------------


def get_run(server: Server, ids: list[str], args: argparse.Namespace, run: int) -> dict[str, Any]:
    assert server.process is not None
    config = {"url": server.url, "token": server.token, "ids": ids, "clients": args.clients,
              "duration": args.duration, "warmup": args.warmup, "seed": run,
              "solo": args.solo,
              "server_pid": server.process.pid}
    with second_process("get", config) as child:
        return finish(child)


# -- SSE lag --------------------------------------------------------------------------------


class MetricsScraper:
    """Reads the two SSE gauges off /metrics every SCRAPE_SECONDS, in a thread."""

    NAMES = ("jobfleet_sse_clients", "jobfleet_sse_upstreams")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[dict[str, float]] = []
        self.seconds: list[float] = []  # per scrape: it costs the server a look at the store
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MetricsScraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def scrape(self, client: httpx.Client) -> dict[str, float]:
        values = {}
        for line in client.get("/metrics").text.splitlines():
            name, _, value = line.partition(" ")
            if name in self.NAMES:
                values[name] = float(value)
        return values

    def _run(self) -> None:
        with self.server.client() as client:
            while not self._done.is_set():
                began = time.perf_counter()
                try:
                    self.samples.append(self.scrape(client))
                    self.seconds.append(time.perf_counter() - began)
                except httpx.HTTPError:
                    pass
                self._done.wait(SCRAPE_SECONDS)


def sse_run(server: Server, args: argparse.Namespace, run: int) -> dict[str, Any]:
    rng = random.Random(run)
    gates = [{"batch": -1 - g, "seconds": args.gate} for g in range(SSE_PARALLELISM)]
    work = [{"batch": b, "numbers": [b], "seconds": round(rng.uniform(0.01, 0.05), 3)}
            for b in range(args.sse_params)]
    assert server.process is not None
    config = {"url": server.url, "token": server.token, "clients": args.sse_clients,
              "gates": SSE_PARALLELISM, "server_pid": server.process.pid,
              "timeout": args.gate + 60.0 + args.sse_params * 0.1}
    with second_process("sse", config) as child, server.client() as client:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the SSE clients' process did not start")
        with MetricsScraper(server) as scraper:
            oid = server.kick_off(client, "process_batch", gates + work, SSE_PARALLELISM)
            child.stdin.write(oid + "\n")
            result = finish(child)
        ended = server.wait_ended(client, oid)
        time.sleep(2 * SCRAPE_SECONDS)  # the feed ends with its last broadcast
        after = scraper.scrape(client)
    full = [s for s in scraper.samples if s.get("jobfleet_sse_clients") == args.sse_clients]
    result.update(
        status=ended,
        clients_max=max((s.get("jobfleet_sse_clients", 0) for s in scraper.samples), default=0),
        upstreams_max=max(
            (s.get("jobfleet_sse_upstreams", 0) for s in scraper.samples), default=0
        ),
        upstreams_with_all_clients=sorted({s.get("jobfleet_sse_upstreams", -1) for s in full}),
        scrapes=len(scraper.samples),
        scrape_ms=1000 * median(scraper.seconds),
        clients_after=after.get("jobfleet_sse_clients"),
        upstreams_after=after.get("jobfleet_sse_upstreams"),
    )
    return result


# -- the report -----------------------------------------------------------------------------


def summarize(gets: list[dict[str, Any]], sses: list[dict[str, Any]]) -> dict[str, Any]:
    def medians(phase: str) -> dict[str, dict[str, float]]:
        return {kind: {key: median([g[phase][kind][key] for g in gets])
                       for key in gets[0][phase][kind] if key != "requests"}
                for kind in (BY_ID, LIST)}

    return {
        "get": {"endpoints": medians("endpoints"), "alone": medians("alone"),
                "rps": median([g["rps"] for g in gets]),
                "server_cpu": median([g["server_cpu"] for g in gets]),
                "generator_cpu": median([g["generator_cpu"] for g in gets]),
                "failures": sum(sum(g["failures"].values()) for g in gets)},
        "sse": {key: median([s[key] for s in sses])
                for key in ("p50_ms", "p99_ms", "max_ms", "connect_s", "server_cpu",
                            "clients_cpu", "scrape_ms")},
    }


def problems(args: argparse.Namespace, gets: list[dict[str, Any]],
             sses: list[dict[str, Any]]) -> list[str]:
    """What a reader must know before trusting the figures: each is a finding."""
    found = []
    for n, g in enumerate(gets, 1):
        if g["failures"]:
            found.append(f"GET run {n}: failed requests {g['failures']}")
    for n, s in enumerate(sses, 1):
        where = f"SSE run {n}"
        if len(s["transitions_per_client"]) != 1:
            found.append(f"{where}: clients got different transition counts "
                         f"(count: clients) {s['transitions_per_client']}")
        if s["distinct_orders"] > 1 and len(s["transitions_per_client"]) == 1:
            found.append(f"{where}: clients got the same number of transitions but in"
                         f" {s['distinct_orders']} different orders or contents")
        if s["completed"] != s["clients"]:
            found.append(f"{where}: {s['clients'] - s['completed']} of {s['clients']} clients"
                         " got no `completed` event")
        if s["errors"]:
            found.append(f"{where}: stream errors {s['errors']}")
        if s["connected_late"]:
            found.append(f"{where}: {s['connected_late']} clients connected after the measured"
                         " work had started; raise --gate")
        if s["upstreams_with_all_clients"] != [1]:
            found.append(f"{where}: jobfleet_sse_upstreams with all {s['clients']} clients"
                         f" connected was {s['upstreams_with_all_clients']}, not [1]"
                         f" ({s['scrapes']} scrapes; max clients seen {s['clients_max']:g})")
        if s["upstreams_after"] or s["clients_after"]:
            found.append(f"{where}: after the clients left, jobfleet_sse_upstreams ="
                         f" {s['upstreams_after']}, jobfleet_sse_clients = {s['clients_after']}")
        if s["min_ms"] < 0:
            found.append(f"{where}: a transition arrived {-s['min_ms']:.1f} ms before its stamp")
        if s["status"] != "Completed":
            found.append(f"{where}: the orchestration ended {s['status']}")
    return found


def print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    m, sses = report["median"], report["sse_runs"]
    g, s, last = m["get"], m["sse"], sses[-1]
    upstreams = max(r["upstreams_max"] for r in sses)
    print(f"jobfleet HTTP API (`jobfleet serve`, local backend, bearer token checked),"
          f" {report['seeded']} orchestrations; medians of {args.repeat} run(s)")
    print(f"GET, {args.clients} keep-alive clients for {args.duration:g} s (and one alone for"
          f" {args.solo:g} s), by id and list half and half")
    print(f"  {'endpoint':<33}{'alone p50':>10}{'req/s':>7}{'p50':>7}{'p99':>7}"
          f"{'in app':>8}  ms")
    for kind, e in g["endpoints"].items():
        print(f"  {kind:<33}{g['alone'][kind]['p50_ms']:>10.1f}{e['rps']:>7.0f}"
              f"{e['p50_ms']:>7.1f}{e['p99_ms']:>7.1f}{e['in_app_mean_ms']:>8.1f}")
    print(f"  {'both':<33}{'':>10}{g['rps']:>7.0f}   server CPU {100 * g['server_cpu']:.0f} %,"
          f" load generator {100 * g['generator_cpu']:.0f} %; {g['failures']} failed")
    counts = ", ".join(f"{k} x{v}" for k, v in last["transitions_per_client"].items())
    print(f"SSE, {args.sse_clients} clients on one orchestration (process_batch,"
          f" {args.sse_params} instances of 10-50 ms, parallelism 2)")
    print(f"  transition lag p50 / p99 / max   {s['p50_ms']:.1f} / {s['p99_ms']:.1f} /"
          f" {s['max_ms']:.1f} ms (p99 per run: "
          + ", ".join(f"{r['p99_ms']:.0f}" for r in sses) + ")")
    print(f"  transitions per client           {counts} (count x clients, last run) of"
          f" {2 * args.sse_params}; `completed` {last['completed']} of {last['clients']}")
    print(f"  connecting all clients           {s['connect_s']:.2f} s; then server CPU"
          f" {100 * s['server_cpu']:.0f} %, clients {100 * s['clients_cpu']:.0f} %")
    print("  /metrics with all connected      jobfleet_sse_upstreams "
          + " | ".join(",".join(f"{u:g}" for u in r["upstreams_with_all_clients"]) for r in sses)
          + f", jobfleet_sse_clients max {max(r['clients_max'] for r in sses):g}"
          f" (a scrape: {s['scrape_ms']:.0f} ms)")
    for problem in report["problems"]:
        print(f"  ! {problem}")
    by_id, listing = g["endpoints"][BY_ID], g["endpoints"][LIST]
    print(f"summary: {g['rps']:.0f} GET/s with {args.clients} clients, p50/p99 by id"
          f" {by_id['p50_ms']:.0f}/{by_id['p99_ms']:.0f} ms, list {listing['p50_ms']:.0f}/"
          f"{listing['p99_ms']:.0f} ms; SSE lag p50/p99 {s['p50_ms']:.0f}/{s['p99_ms']:.0f} ms"
          f" with {args.sse_clients} clients on {upstreams:g} upstream;"
          f" {len(report['problems'])} problem(s); {report['elapsed_s']:.0f} s")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    with Server() as server:
        with server.client() as client:
            unauthenticated = client.get("/v1/orchestrations?limit=1", headers={
                "Authorization": ""})
            if unauthenticated.status_code != 401:
                raise SystemExit("the server answers without a token: auth is not on the path")
        progress(f"server up on {server.url}; seeding {args.orchestrations} orchestrations")
        ids = seed(server, args.orchestrations)
        gets, sses = [], []
        for run in range(args.repeat):
            progress(f"GET load, run {run + 1} of {args.repeat}")
            gets.append(get_run(server, ids, args, run))
        for run in range(args.repeat):
            progress(f"SSE lag, run {run + 1} of {args.repeat}")
            sses.append(sse_run(server, args, run))
        progress("done; stopping the server")
    return {"config": vars(args),
            "seeded": len(ids), "median": summarize(gets, sses), "get_runs": gets,
            "sse_runs": sses, "problems": problems(args, gets, sses),
            "elapsed_s": time.perf_counter() - began}


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orchestrations", type=int, default=200, help="seeded, noop")
    parser.add_argument("--clients", type=int, default=32, help="GET load connections")
    parser.add_argument("--duration", type=float, default=10.0, help="GET load seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="GET load seconds unmeasured")
    parser.add_argument("--solo", type=float, default=3.0,
                        help="seconds of one client alone before the GET load (unloaded latency)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sse-clients", type=int, default=200)
    parser.add_argument("--sse-params", type=int, default=200, help="instances followed")
    parser.add_argument("--gate", type=float, default=3.0,
                        help="seconds the SSE clients have to connect before the work starts")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: "
                        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(**QUICK)  # what is given explicitly still wins
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    try:
        report = benchmark(args)
    except KeyboardInterrupt:
        print("interrupted: the server is stopped and its folder removed", file=sys.stderr)
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(finite(report), indent=2))
    else:
        print_report(args, report)


if __name__ == "__main__":
    main()
