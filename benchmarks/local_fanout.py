"""Fan-out benchmark: jobfleet's local backend beside a Celery chord.

    python benchmarks/local_fanout.py [--jobs 10000] [--repeat 5] [--memory-jobs 100000]
                                      [--celery-repeat 3] [--no-celery]

Measures, for N no-op jobs with parallelism 2, the wall time from the kick-off
call to the JobCompletedEvent in the event log (median of --repeat runs, each in
a fresh JOBFLEET_HOME); the peak memory (max RSS) of a process that kicks off
--memory-jobs parameter sets; and the same fan-out as a Celery group + chord
callback (Redis broker and result backend, 2 prefork workers), which
celery_chord.py installs and starts itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobfleet import JobFleet

HERE = Path(__file__).resolve().parent
DEMO = ["jobfleet.demo"]  # declares the `noop` job

MEMORY_PROBE = """
import json, resource, sys, time
from jobfleet import JobFleet
n = int(sys.argv[1])
with JobFleet(home=sys.argv[2], jobs_modules=["jobfleet.demo"]) as fleet:
    start = time.perf_counter()
    orchestration = fleet.kick_off("noop", [{"i": i} for i in range(n)], parallelism=2)
    kick_off = time.perf_counter() - start
    peak_kick_off = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    orchestration.wait()
    total = time.perf_counter() - start
print(json.dumps({"kick_off_s": kick_off, "total_s": total, "peak_kib": peak_kick_off}))
"""


def jobfleet_run(jobs: int) -> tuple[float, float]:
    """One run in a fresh home: (kick-off seconds, kick-off to completion event seconds)."""
    with tempfile.TemporaryDirectory() as home, JobFleet(home=home, jobs_modules=DEMO) as fleet:
        params = [{"i": i} for i in range(jobs)]
        start = time.perf_counter()
        orchestration = fleet.kick_off("noop", params, parallelism=2)
        kicked = time.perf_counter() - start
        for _, event in fleet.follow_events():
            if event.orchestration_id == orchestration.id:
                break
        elapsed = time.perf_counter() - start
        snap = orchestration.status()
        assert snap.counts.succeeded == jobs, snap
        return kicked, elapsed


def memory_probe(jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(jobs), home],
            check=True, capture_output=True, text=True,
        ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-jobs", type=int, default=100_000)
    parser.add_argument("--celery-repeat", type=int, default=3)
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery peer")
    args = parser.parse_args()

    runs = [jobfleet_run(args.jobs) for _ in range(args.repeat)]
    kick_offs = [k for k, _ in runs]
    walls = [w for _, w in runs]
    wall = statistics.median(walls)
    memory = memory_probe(args.memory_jobs)

    print(f"jobfleet local backend, {args.jobs} no-op jobs, parallelism 2, {args.repeat} runs")
    print(f"  kick-off (median)                 {statistics.median(kick_offs):8.3f} s")
    print(f"  kick-off -> completion event      {wall:8.3f} s  (median; min {min(walls):.3f},"
          f" max {max(walls):.3f})")
    print(f"  throughput                        {args.jobs / wall:8.0f} jobs/s")
    print(f"kick-off of {args.memory_jobs} parameter sets (a list, one process)")
    print(f"  kick-off time                     {memory['kick_off_s']:8.3f} s")
    print(f"  peak memory (max RSS)             {memory['peak_kib'] / 1024:8.1f} MB")
    print(f"  kick-off -> all done              {memory['total_s']:8.3f} s")

    if args.no_celery:
        return
    sys.path.insert(0, str(HERE))
    from celery_chord import ensure_celery, run_celery_chord

    ensure_celery()
    celery_walls = [run_celery_chord(args.jobs, concurrency=2) for _ in range(args.celery_repeat)]
    celery_wall = statistics.median(celery_walls)
    print(f"Celery chord (group + callback), {args.jobs} no-op tasks, Redis, 2 prefork workers,"
          f" {args.celery_repeat} runs")
    print(f"  apply_async -> callback result    {celery_wall:8.3f} s  (median; min"
          f" {min(celery_walls):.3f}, max {max(celery_walls):.3f})")
    print(f"  jobs/s                            {args.jobs / celery_wall:8.0f}")
    print(f"jobfleet is {celery_wall / wall:.1f}x faster than the Celery chord (ratio of medians)")


if __name__ == "__main__":
    main()
