"""The Google Cloud shape on the emulators: what one fan-out costs and how fast it ends.

    python benchmarks/gcp_fanout.py [--jobs 10000] [--parallelism 10] [--no-tally]

Starts the dev stack (`jobfleet dev up`: the Firestore and Pub/Sub emulators, the
Cloud Run Admin API stand-in running real `jobfleet worker` tasks, the completion
function on functions-framework, the trigger relay), kicks off --jobs no-op
parameter sets with the gcp backend, and prints, each against its goal:

- kick-off time (SDK call to return: all instances written, the execution started);
- kick-off to completion event on a Pub/Sub subscription (end to end);
- Admin API calls for the orchestration, beside the one-execution-per-parameter-set
  design (one RunJob per parameter set);
- completion-function invocations (the relay's count of requests the function answered);
- writes to Firestore documents, counted by a write tally on the relay
  (`jobfleet.dev.write_tally`): a trigger on every document that the emulator sends
  each write to, timed by the emulator's commit time. Per kind of document: writes, the
  busiest document's most writes in any 1 s window, and its sustained rate (most writes
  in any 10 s window / 10); store writes per job instance come from the same count;
- completion events that arrived for the orchestration (counted for 5 s after the first);
- the delay from the last instance's terminal write to the JobCompletedEvent arriving.

`--no-tally` leaves the tally out, to see what the emulator's 30,000-odd extra trigger
requests cost the end-to-end time.
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
from jobfleet.dev.relay_http import start_tally, tally_summary

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
    parser.add_argument("--no-tally", action="store_true",
                        help="do not count writes per document")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="jobfleet-bench-"))
    started = time.perf_counter()
    running = stack.up(state, project=PROJECT, parallelism=args.parallelism)
    print(f"dev stack up in {time.perf_counter() - started:.1f} s (state in {state})")
    try:
        os.environ.update(running.env)
        measure(args.jobs, args.parallelism, running.env, tally=not args.no_tally)
    finally:
        stack.down(state)


GOAL_INVOCATIONS = 500  # for 10,000 instances (issue 11)
GOAL_WRITES_PER_S = 1.0
GOAL_END_TO_END = 60.0
LATE_EVENTS = 5.0  # seconds to wait for a second event after the first


def measure(jobs: int, parallelism: int, env: dict[str, str], *, tally: bool) -> None:
    project, topic = env["GOOGLE_CLOUD_PROJECT"], env["JOBFLEET_TOPIC"]
    relay = env["JOBFLEET_TRIGGER_RELAY"]
    subscription = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_subscription(project, topic, subscription)
    arrived: dict[str, list[float]] = {}
    got = threading.Event()

    def on_event(event: JobCompletedEvent) -> None:
        arrived.setdefault(event.orchestration_id, []).append(time.time())
        got.set()

    relay_before = _get_json(f"{relay}/_relay/stats")
    tally_id = start_tally(relay, project) if tally else None
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
        time.sleep(LATE_EVENTS)
    events = arrived.get(orchestration.id, [])
    delay = events[0] - last_terminal_write(project, orchestration.id)
    calls = _get_json(f"{env['JOBFLEET_CLOUD_RUN_ENDPOINT']}/_standin/calls")
    relay_after = _get_json(f"{relay}/_relay/stats")
    invocations = _total(relay_after, "invocations") - _total(relay_before, "invocations")
    writes = tally_summary(relay, tally_id, stop=True) if tally_id else None

    print(f"gcp backend on the emulators, {jobs} no-op jobs, parallelism {parallelism}:"
          f" {snap.status}, {snap.counts.succeeded} succeeded")
    print(f"  kick-off                              {kick_off:8.2f} s   (target < 3 s)")
    print(f"  kick-off -> completion event          {total:8.2f} s   "
          f"(goal <= {GOAL_END_TO_END:.0f} s)")
    print(f"  Admin API RunJob calls                {calls.get('RunJob', 0):8d}     (target <= 2;"
          f" one execution per parameter set: {jobs})")
    print(f"  Admin API calls of any kind           {sum(calls.values()):8d}")
    print(f"  function invocations                  {invocations:8d}     "
          f"(goal <= {GOAL_INVOCATIONS * jobs // 10_000})")
    if writes is not None:
        job_writes = writes["kinds"].get(JOB_KIND, {}).get("writes", 0)
        print(f"  store writes per job instance         {job_writes / jobs:8.2f}     (target <= 3)")
        print(f"  max sustained writes/s, one document  {writes['sustained_per_s']:8.2f}     "
              f"(goal <= {GOAL_WRITES_PER_S:.0f}; most writes to one document in any "
              f"{writes['window']:.0f} s / {writes['window']:.0f})")
        print(f"  max writes in 1 s, one document       {writes['peak_1s']:8d}")
        print("  by kind of document: writes, documents, busiest in 1 s, sustained/s")
        for kind, k in sorted(writes["kinds"].items()):
            print(f"    {kind:42s} {k['writes']:7d} {k['documents']:6d} {k['peak_1s']:4d}"
                  f" {k['sustained_per_s']:6.2f}")
    print(f"  completion events for the run         {len(events):8d}     (goal: exactly 1)")
    print(f"  last terminal write -> event          {delay:8.2f} s   (target < 1 s)")


JOB_KIND = "jobfleet_orchestrations/*/jobs/*"


def _total(stats: Any, counter: str) -> int:
    """Sum a counter over the relay's routes."""
    if isinstance(stats, dict) and counter in stats:
        return int(stats[counter])
    routes = stats.get("routes", stats) if isinstance(stats, dict) else stats
    items = routes.values() if isinstance(routes, dict) else routes
    return sum(int(r.get(counter, 0)) for r in items)


if __name__ == "__main__":
    main()
