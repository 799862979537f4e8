"""Fire lag through the Cloud Scheduler stand-in: the Google Cloud path of a schedule.

    python benchmarks/schedules_standin.py [--schedules 5] [--minutes 3]

Starts the dev stack (`jobfleet dev up`, knowing the API's URL) and `jobfleet serve` on
the gcp backend at that URL, then creates --schedules `* * * * *` schedules of the
`noop` job through the SDK, so that `CloudSchedulerTimer` creates their jobs on the
stand-in. For --minutes real minutes the stand-in fires each one at its minute: a POST
with a signed ID token to the fire route, which claims the fire in Firestore and kicks
off on the Cloud Run stand-in. Lag = the run's `created_at` minus its scheduled time,
both on the real clock. Also counted: scheduled times with exactly one run.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from jobfleet import JobFleet
from jobfleet.core.schedules import FireState
from jobfleet.dev import stack
from jobfleet.dev.emulators import free_port

PROJECT = "jobfleet-bench-schedules"
DEMO = ["jobfleet.demo"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=3)
    args = parser.parse_args()

    api_url = f"http://127.0.0.1:{free_port()}"
    os.environ["JOBFLEET_API_URL"] = api_url
    state = Path(tempfile.mkdtemp(prefix="jobfleet-bench-"))
    running = stack.up(state, project=PROJECT, parallelism=2)
    server = None
    try:
        os.environ.update(running.env)
        log = (state / "serve.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "jobfleet", "serve", "--port", api_url.rsplit(":", 1)[1],
             "--jobs-module", "jobfleet.demo"],
            env={**os.environ}, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not healthy(api_url):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"jobfleet serve did not start; see {state / 'serve.log'}")
            time.sleep(0.2)
        with JobFleet(jobs_modules=DEMO) as fleet:
            names = [f"lag-{n}" for n in range(args.schedules)]
            for name in names:
                fleet.schedules.create(name, job="noop", cron="* * * * *", params=[{}],
                                       overlap="allow")
            started = time.time()
            print(f"{len(names)} schedules on the stand-in; measuring for {args.minutes:g} "
                  "min ...", file=sys.stderr, flush=True)
            time.sleep(args.minutes * 60)
            for name in names:
                fleet.schedules.pause(name)
            time.sleep(10)  # fires in flight land
            lags, times, once, doubled = [], 0, 0, 0
            for name in names:
                fires = [f for f in fleet.schedules.history(name, limit=1000)
                         if f.scheduled_at >= started]
                times += len(fires)
                for fire in fires:
                    if fire.state is FireState.STARTED and fire.orchestration_id:
                        created = fleet.orchestration(fire.orchestration_id).status().created_at
                        lags.append(created - fire.scheduled_at)
                per_time = Counter(r.tags["schedule_time"] for r in
                                   fleet.history(limit=1000, tag=("schedule", name))
                                   if r.created_at >= started)
                once += sum(1 for n in per_time.values() if n == 1)
                doubled += sum(1 for n in per_time.values() if n > 1)
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        stack.down(state)
    if not lags:
        raise SystemExit("no fire started a run")
    print(f"fire lag through the Cloud Scheduler stand-in ({len(lags)} fires of "
          f"{args.schedules} schedules): p50 {percentile(lags, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms")
    print(f"scheduled times fired: {times}; with exactly one run: {once}; with more: {doubled}"
          f" (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
