"""The Google Cloud shape on the emulators: what one fan-out costs and how fast it ends.

    python benchmarks/gcp_fanout.py [--jobs 10000] [--parallelism 10] [--quick]
                                    [--warm-up 2000]

Starts the dev stack (`jobfleet dev up`: the Firestore and Pub/Sub emulators, the
Cloud Run Admin API stand-in running real `jobfleet worker` tasks, the completion
function on functions-framework, the trigger relay), kicks off --jobs no-op
parameter sets with the gcp backend (after an untimed warm-up orchestration: the
emulator is a JVM, and a cold one is slower than Firestore ever is), and prints, each
against its goal:

- kick-off time (SDK call to return: all instances written, the execution started);
- kick-off to completion event on a Pub/Sub subscription (end to end);
- Admin API calls for the orchestration, beside the one-execution-per-parameter-set
  design (one RunJob per parameter set);
- completion-function invocations (the relay's count of requests the function answered);
- completion events that arrived for the orchestration (counted for 5 s after the first);
- the delay from the last instance's terminal write to the JobCompletedEvent arriving;
- writes to Firestore documents, counted by write tallies on the relay
  (`jobfleet.dev.write_tally`): triggers that the emulator sends each write to, timed
  by the emulator's commit time. Per kind of document: writes, documents, the most
  writes to one document in any 1 s, and the most sustained (in any 10 s, / 10).

The timed run tallies the documents written more than a few times (orchestration,
shard counters, leases). The emulator sends all trigger requests through one queue, so
tallying the 30,000 job-document writes would hold the completion function's requests
back: a second run (unless --quick) tallies every document, job documents included, for
store writes per instance and the job documents' rates; its times are not the figures.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud import firestore

from jobfleet import JobCompletedEvent, JobFleet
from jobfleet.backends.gcp.pubsub import EventSubscriber, ensure_subscription
from jobfleet.core.models import OrchestrationSnapshot
from jobfleet.dev import stack
from jobfleet.dev.eventarc import EVERY_DOCUMENT
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
    parser.add_argument("--quick", action="store_true",
                        help="skip the second run, which tallies the job documents' writes")
    parser.add_argument("--warm-up", type=int, default=2_000, metavar="JOBS",
                        help="no-op jobs run first, untimed (0: none)")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="jobfleet-bench-"))
    started = time.perf_counter()
    running = stack.up(state, project=PROJECT, parallelism=args.parallelism)
    print(f"dev stack up in {time.perf_counter() - started:.1f} s (state in {state})")
    try:
        os.environ.update(running.env)
        measure(args.jobs, args.parallelism, running.env, every_document=not args.quick,
                warm_up=args.warm_up)
    finally:
        stack.down(state)


GOAL_INVOCATIONS = 500  # for 10,000 instances (issue 11)
GOAL_WRITES_PER_S = 1.0
GOAL_END_TO_END = 60.0
LATE_EVENTS = 5.0  # seconds to wait for a second event after the first
# What the timed run tallies: every document written more than a few times in its life.
# The job documents (3 writes each) would add 30,000 trigger requests to the emulator's
# one queue, ahead of the completion function's, so only the second run tallies them.
REWRITTEN = (
    "jobfleet_orchestrations/{o}", "jobfleet_orchestrations/{o}/shards/{s}",
    "jobfleet_leases/{l}",
)
JOB_KIND = "jobfleet_orchestrations/*/jobs/*"


@dataclass
class Run:
    orchestration: str
    snap: OrchestrationSnapshot
    kick_off: float
    end_to_end: float
    events: list[float]
    delay: float
    invocations: int
    run_job_calls: int
    api_calls: int
    writes: dict[str, Any]  # the tallies' kinds, merged


def measure(
    jobs: int, parallelism: int, env: dict[str, str], *, every_document: bool, warm_up: int
) -> None:
    project, topic = env["GOOGLE_CLOUD_PROJECT"], env["JOBFLEET_TOPIC"]
    subscription = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_subscription(project, topic, subscription)
    arrived: dict[str, list[float]] = {}
    got = threading.Condition()

    def on_event(event: JobCompletedEvent) -> None:
        with got:
            arrived.setdefault(event.orchestration_id, []).append(time.time())
            got.notify_all()

    with EventSubscriber(project, subscription, on_event), JobFleet(
        backend="gcp", jobs_modules=["jobfleet.demo"]
    ) as fleet:
        if warm_up:
            cold = run_once(fleet, env, warm_up, parallelism, (), arrived, got)
            print(f"warm-up: {warm_up} no-op jobs, kick-off -> event {cold.end_to_end:.2f} s "
                  f"(the emulator's JVM compiles its hot paths meanwhile)")
        timed = run_once(fleet, env, jobs, parallelism, REWRITTEN, arrived, got)
        report(timed, jobs, parallelism)
        if every_document:
            print("second run, every write to every document tallied (its times include the"
                  " emulator's 30,000 extra trigger requests):")
            full = run_once(fleet, env, jobs, parallelism, (EVERY_DOCUMENT,), arrived, got)
            print(f"  {full.snap.status}, {full.snap.counts.succeeded} succeeded; "
                  f"kick-off -> event {full.end_to_end:.2f} s; "
                  f"{full.invocations} invocations; {len(full.events)} event(s)")
            job_writes = full.writes.get(JOB_KIND, {}).get("writes", 0)
            print(f"  store writes per job instance         {job_writes / jobs:8.2f}     "
                  "(target <= 3)")
            report_writes(full.writes)
            kinds = {**full.writes, **timed.writes}
        else:
            kinds = timed.writes
    sustained = max((k["sustained_per_s"] for k in kinds.values()), default=0.0)
    peak = max((k["peak_1s"] for k in kinds.values()), default=0)
    print(f"max sustained writes/s to one document   {sustained:6.2f}     "
          f"(goal <= {GOAL_WRITES_PER_S:.0f}; the most writes to one document in any 10 s, / 10;"
          f" {'every document' if every_document else 'job documents not tallied'})")
    print(f"max writes in any 1 s to one document    {peak:6d}")


def run_once(
    fleet: JobFleet, env: dict[str, str], jobs: int, parallelism: int,
    documents: tuple[str, ...], arrived: dict[str, list[float]], got: threading.Condition,
) -> Run:
    project, relay = env["GOOGLE_CLOUD_PROJECT"], env["JOBFLEET_TRIGGER_RELAY"]
    calls_url = f"{env['JOBFLEET_CLOUD_RUN_ENDPOINT']}/_standin/calls"
    calls_before = _get_json(calls_url)
    relay_before = _get_json(f"{relay}/_relay/stats")
    tallies = [start_tally(relay, project, pattern) for pattern in documents]
    params = [{"i": i} for i in range(jobs)]
    start = time.perf_counter()
    orchestration = fleet.kick_off("noop", params, parallelism=parallelism)
    kick_off = time.perf_counter() - start
    orchestration.wait(timeout=1800)
    with got:
        got.wait_for(lambda: orchestration.id in arrived, timeout=120)
    total = time.perf_counter() - start
    snap = orchestration.status()
    time.sleep(LATE_EVENTS)
    writes = drained(relay, tallies)
    events = arrived.get(orchestration.id, [])
    calls = _get_json(calls_url)
    relay_after = _get_json(f"{relay}/_relay/stats")
    return Run(
        orchestration=orchestration.id, snap=snap, kick_off=kick_off, end_to_end=total,
        events=events,
        delay=events[0] - last_terminal_write(project, orchestration.id) if events else -1.0,
        invocations=_total(relay_after, "invocations") - _total(relay_before, "invocations"),
        run_job_calls=calls.get("RunJob", 0) - calls_before.get("RunJob", 0),
        api_calls=sum(calls.values()) - sum(calls_before.values()),
        writes=writes,
    )


def drained(relay: str, tallies: list[str]) -> dict[str, Any]:
    """The tallies' kinds, once the emulator has sent every write it owed them (their
    count has not moved for 3 s); then the tallies stop."""
    def count() -> int:
        return sum(int(tally_summary(relay, t)["writes"]) for t in tallies)

    last, steady_since = count(), time.monotonic()
    while time.monotonic() - steady_since < 3.0:
        time.sleep(0.5)
        now = count()
        if now != last:
            last, steady_since = now, time.monotonic()
    kinds: dict[str, Any] = {}
    for tally in tallies:
        kinds.update(tally_summary(relay, tally, stop=True)["kinds"])
    return kinds


def report(run: Run, jobs: int, parallelism: int) -> None:
    print(f"gcp backend on the emulators, {jobs} no-op jobs, parallelism {parallelism}:"
          f" {run.snap.status}, {run.snap.counts.succeeded} succeeded")
    print(f"  kick-off                              {run.kick_off:8.2f} s   (target < 3 s)")
    print(f"  kick-off -> completion event          {run.end_to_end:8.2f} s   "
          f"(goal <= {GOAL_END_TO_END:.0f} s)")
    print(f"  Admin API RunJob calls                {run.run_job_calls:8d}     (target <= 2;"
          f" one execution per parameter set: {jobs})")
    print(f"  Admin API calls of any kind           {run.api_calls:8d}")
    print(f"  function invocations                  {run.invocations:8d}     "
          f"(goal <= {GOAL_INVOCATIONS * jobs // 10_000})")
    print(f"  completion events for the run         {len(run.events):8d}     (goal: exactly 1)")
    print(f"  last terminal write -> event          {run.delay:8.2f} s   (target < 1 s)")
    report_writes(run.writes)


def report_writes(kinds: dict[str, Any]) -> None:
    print("  writes by kind of document: writes, documents, most to one in any 1 s,"
          " most sustained per s (10 s window)")
    for kind, k in sorted(kinds.items()):
        print(f"    {kind:40s} {k['writes']:7d} {k['documents']:6d} {k['peak_1s']:4d}"
              f" {k['sustained_per_s']:6.2f}")


def _total(stats: Any, counter: str) -> int:
    """Sum a counter over the relay's routes."""
    if isinstance(stats, dict) and counter in stats:
        return int(stats[counter])
    routes = stats.get("routes", stats) if isinstance(stats, dict) else stats
    items = routes.values() if isinstance(routes, dict) else routes
    return sum(int(r.get(counter, 0)) for r in items)


if __name__ == "__main__":
    main()
