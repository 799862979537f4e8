"""The Google Cloud shape on the emulators: what one fan-out costs and how fast it ends.

    python benchmarks/gcp_fanout.py [--jobs 10000] [--parallelism 10]

Starts the dev stack (`jobfleet dev up`: the Firestore and Pub/Sub emulators, the
Cloud Run Admin API stand-in running real `jobfleet worker` tasks, the completion
function on functions-framework, the trigger relay), kicks off --jobs no-op
parameter sets with the gcp backend, and prints:

- kick-off time (SDK call to return: all instances written, the execution started);
- Admin API calls for the orchestration, beside the one-execution-per-parameter-set
  design (one RunJob per parameter set);
- store writes per job instance (every job-document write reaches the relay);
- function invocations;
- the delay from the last instance's terminal write to the JobCompletedEvent arriving
  on a Pub/Sub subscription.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from google.cloud import firestore

from jobfleet import JobCompletedEvent, JobFleet
from jobfleet.backends.gcp.pubsub import EventSubscriber, ensure_subscription
from jobfleet.dev import stack

PROJECT = "jobfleet-bench"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def last_terminal_write(project: str, orchestration_id: str) -> float:
    """The latest `finished_at` among the instances: when the last one was written."""
    client = firestore.Client(project=project)
    jobs = client.collection("jobfleet_orchestrations").document(orchestration_id)
    latest = (
        jobs.collection("jobs")
        .order_by("finished_at", direction=firestore.Query.DESCENDING)
        .limit(1)
        .get()
    )
    return float(latest[0].get("finished_at"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=10)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="jobfleet-bench-"))
    started = time.perf_counter()
    running = stack.up(state, project=PROJECT, parallelism=args.parallelism)
    print(f"dev stack up in {time.perf_counter() - started:.1f} s (state in {state})")
    try:
        os.environ.update(running.env)
        measure(args.jobs, args.parallelism, running.env)
    finally:
        stack.down(state)


def measure(jobs: int, parallelism: int, env: dict[str, str]) -> None:
    project, topic = env["GOOGLE_CLOUD_PROJECT"], env["JOBFLEET_TOPIC"]
    subscription = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_subscription(project, topic, subscription)
    arrived: dict[str, float] = {}
    got = threading.Event()

    def on_event(event: JobCompletedEvent) -> None:
        arrived.setdefault(event.orchestration_id, time.time())
        got.set()

    relay_before = _get_json(f"{env['JOBFLEET_TRIGGER_RELAY']}/_relay/stats")
    with EventSubscriber(project, subscription, on_event), JobFleet(
        backend="gcp", jobs_modules=["jobfleet.demo"]
    ) as fleet:
        params = [{"i": i} for i in range(jobs)]
        start = time.perf_counter()
        orchestration = fleet.kick_off("noop", params, parallelism=parallelism)
        kick_off = time.perf_counter() - start
        orchestration.wait(timeout=1800)
        got.wait(timeout=120)
        total = time.perf_counter() - start
        snap = orchestration.status()
    delay = arrived[orchestration.id] - last_terminal_write(project, orchestration.id)
    calls = _get_json(f"{env['JOBFLEET_CLOUD_RUN_ENDPOINT']}/_standin/calls")
    relay_after = _get_json(f"{env['JOBFLEET_TRIGGER_RELAY']}/_relay/stats")
    changes = _total(relay_after, "changes") - _total(relay_before, "changes")
    invocations = _total(relay_after, "invocations") - _total(relay_before, "invocations")

    print(f"gcp backend on the emulators, {jobs} no-op jobs, parallelism {parallelism}:"
          f" {snap.status}, {snap.counts.succeeded} succeeded")
    print(f"  kick-off                              {kick_off:8.2f} s   (target < 3 s)")
    print(f"  kick-off -> completion event          {total:8.2f} s")
    print(f"  Admin API RunJob calls                {calls.get('RunJob', 0):8d}     (target <= 2;"
          f" one execution per parameter set: {jobs})")
    print(f"  Admin API calls of any kind           {sum(calls.values()):8d}")
    print(f"  store writes per job instance         {changes / jobs:8.2f}     (target <= 3)")
    print(f"  function invocations                  {invocations:8d}")
    print(f"  last terminal write -> event          {delay:8.2f} s   (target < 1 s)")


def _total(stats: Any, counter: str) -> int:
    """Sum a counter over the relay's routes."""
    if isinstance(stats, dict) and counter in stats:
        return int(stats[counter])
    routes = stats.get("routes", stats) if isinstance(stats, dict) else stats
    items = routes.values() if isinstance(routes, dict) else routes
    return sum(int(r.get(counter, 0)) for r in items)


if __name__ == "__main__":
    main()
