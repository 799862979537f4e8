"""Schedules benchmark: the local scheduler's fire lag and idle cost, beside Celery beat.

    python benchmarks/schedules.py [--no-celery] [--schedules 1000] [--seconds 60]
                                   [--lag-seconds 75] [--speed 20] [--lag-schedules 3]
                                   [--real-clock [--real-clock-seconds 150]]
                                   [--beat-minutes 3] [--json]

1. Fire lag of the local scheduler: `LocalScheduler` in its own process on a fresh
   JOBFLEET_HOME, with --lag-schedules `* * * * *` schedules of the `noop` job (one
   parameter set each, overlap "allow"), on a fast clock (--speed 20: a scheduled minute
   every 3 real seconds) for --lag-seconds. Lag = the fire's orchestration `created_at`
   minus the scheduled time mapped back to real time (origin + (t - origin) / speed).
   With --real-clock, the same at the real clock for --real-clock-seconds, with
   --real-clock-schedules schedules (all due at the same instant every minute).
2. Idle cost of one local scheduler holding --schedules schedules, none due during the
   measurement (`0 3 * * *` in various zones): after its first tick and 5 s of settling,
   its CPU time (utime + stime, /proc/<pid>/stat) over --seconds, as % of one core, and
   its memory (VmRSS, VmHWM).
3. The peer, Celery beat (Redis broker, started as celery_chord.py does): the same idle
   measure with the same crontab entries, then the fire lag of one `crontab()` entry over
   --beat-minutes real minutes, from the minute boundary to beat's "Sending due task" log
   line (publish) and to the task's first line in a worker (start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobfleet import JobFleet
from jobfleet.core.cron import Cron
from jobfleet.core.schedules import FireState

HERE = Path(__file__).resolve().parent
DEMO = ["jobfleet.demo"]  # declares the `noop` job
SETTLE_SECONDS = 5.0
READY_TIMEOUT = 120.0
IDLE_CRON = "0 3 * * *"
# Zones for the idle schedules: the ones whose 03:00 is close are left out (see idle_zones).
ZONES = [
    "UTC", "Europe/Paris", "Europe/London", "America/New_York", "America/Los_Angeles",
    "America/Sao_Paulo", "Asia/Tokyo", "Asia/Kolkata", "Asia/Shanghai", "Australia/Sydney",
    "Africa/Johannesburg", "Pacific/Auckland", "America/Chicago", "Europe/Berlin",
    "Asia/Dubai", "America/Denver", "Asia/Singapore", "Europe/Moscow", "Pacific/Honolulu",
    "America/Halifax", "Asia/Kathmandu", "Australia/Adelaide", "America/St_Johns",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the scheduler process -------------------------------------------------------------

def scheduler_child(home: str, speed: float, origin: float, profile: str | None) -> None:
    """Run a LocalScheduler until SIGTERM; print "ready" once its first tick is done."""
    from jobfleet.local_scheduler import LocalScheduler, fast_clock

    class Observed(LocalScheduler):
        ticks = 0

        def tick(self, now: float, submit: Any) -> float:
            wake = super().tick(now, submit)
            Observed.ticks += 1
            if Observed.ticks == 1:
                print("ready", flush=True)
            return wake

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    clock = fast_clock(speed, origin) if speed != 1 else time.time
    import cProfile

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    with JobFleet(home=home, jobs_modules=DEMO) as fleet:
        Observed(fleet, clock=clock, speed=speed).run(stop)
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)


@contextlib.contextmanager
def scheduler_process(
    home: str, *, speed: float = 1.0, origin: float = 0.0, profile: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    cmd = [sys.executable, __file__, "--child", home, repr(speed), repr(origin)]
    if profile:
        cmd.append(profile)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the first tick (or the child's death)
        if line.strip() != "ready":
            raise RuntimeError(f"scheduler process did not start (exit {proc.wait()})")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- /proc readings --------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def memory_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def idle_cost(pid: int, seconds: float) -> dict[str, float]:
    """Settle, then CPU % of one core over `seconds` and the memory at the end."""
    time.sleep(SETTLE_SECONDS)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
            "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), **memory_mb(pid)}


# -- figures ---------------------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of fewer than 100 values is their max)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lag_figures(lags: list[float]) -> dict[str, float]:
    if not lags:
        return {"count": 0}
    return {"count": len(lags), "p50": quantile(lags, 0.5), "p99": quantile(lags, 0.99),
            "max": max(lags), "min": min(lags)}


# -- 1. fire lag -----------------------------------------------------------------------

def local_fire_lag(schedules: int, seconds: float, speed: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sched-bench-") as home, \
            JobFleet(home=home, jobs_modules=DEMO) as fleet:
        names = [f"lag-{i}" for i in range(schedules)]
        for name in names:
            fleet.schedules.create(name, job="noop", cron="* * * * *", params=[{"i": 0}],
                                   overlap="allow")
        origin = time.time()  # after the schedules' creation: nothing owed from before
        with scheduler_process(home, speed=speed, origin=origin):
            time.sleep(seconds)
            end = time.time()
        clock_end = origin + (end - origin) * speed
        lags: list[float] = []
        states: dict[str, int] = {}
        triggers: dict[str, int] = {}
        expected = 0
        for name in names:
            expected += len(Cron("* * * * *").between(origin, clock_end))
            for fire in fleet.schedules.history(name, limit=10_000):
                states[fire.state.value] = states.get(fire.state.value, 0) + 1
                triggers[fire.trigger.value] = triggers.get(fire.trigger.value, 0) + 1
                if fire.state is FireState.STARTED and fire.orchestration_id:
                    run = fleet.handle(fire.orchestration_id)
                    real_scheduled = origin + (fire.scheduled_at - origin) / speed
                    lags.append(run.status().created_at - real_scheduled)
        for run_snap in fleet.history(limit=10_000):  # let the workers end before cleanup
            with contextlib.suppress(Exception):
                fleet.handle(run_snap.id).wait(timeout=30)
    return {"speed": speed, "seconds": seconds, "schedules": schedules,
            "scheduled_times": expected, "fires": sum(states.values()), "states": states,
            "triggers": triggers, "lag_s": lag_figures(lags), "lags": sorted(lags)}


# -- 2. idle cost ----------------------------------------------------------------------

def idle_zones(horizon: float) -> list[str]:
    """Zones whose next 03:00 is more than `horizon` seconds away."""
    now = time.time()
    return [z for z in ZONES if Cron(IDLE_CRON, z).next_times(now, 1)[0] > now + horizon]


def local_idle(count: int, seconds: float, profile: str | None = None) -> dict[str, Any]:
    zones = idle_zones(horizon=seconds + 600)
    with tempfile.TemporaryDirectory(prefix="sched-bench-") as home:
        with JobFleet(home=home, jobs_modules=DEMO) as fleet:
            start = time.perf_counter()
            for i in range(count):
                fleet.schedules.create(f"idle-{i:05d}", job="noop", cron=IDLE_CRON,
                                       timezone=zones[i % len(zones)], params=[{"i": i}])
            created = time.perf_counter() - start
        spawned = time.monotonic()
        with scheduler_process(home, profile=profile) as proc:
            ready = time.monotonic() - spawned
            startup_cpu = cpu_seconds(proc.pid)
            figures = idle_cost(proc.pid, seconds)
    return {"schedules": count, "zones": len(zones), "create_s": created,
            "first_tick_s": ready, "startup_cpu_s": startup_cpu, **figures}


# -- 3. Celery beat --------------------------------------------------------------------

def beat_entries(count: int, horizon: float) -> list[tuple[str, int, int]]:
    """The idle schedules' firing instants as UTC crontab entries (minute, hour): beat has
    one zone per app, so 03:00 in each zone is given as today's UTC time of it."""
    now = time.time()
    zones = idle_zones(horizon)
    out = []
    for i in range(count):
        first = Cron(IDLE_CRON, zones[i % len(zones)]).next_times(now, 1)[0]
        utc = datetime.fromtimestamp(first, UTC)
        out.append((f"idle-{i:05d}", utc.minute, utc.hour))
    return out


def _log_time(line: str) -> float | None:
    """The time of a celery log line: "[2025-01-01 12:00:00,123: INFO/MainProcess] ..."."""
    try:
        stamp = line[1:line.index(": ")]
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def celery_beat(count: int, seconds: float, minutes: float) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import redis

    from celery_chord import (
        ENV_VAR,
        _free_port,
        _process_group,
        _sigterm_as_exit,
        _wait_until,
        ensure_celery,
    )

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the figures (--json)
        ensure_celery()
    import celery

    out: dict[str, Any] = {"celery": celery.__version__}
    entries = beat_entries(count, horizon=seconds + minutes * 60 + 900)
    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="beat-bench-") as tmp:
        tmpdir = Path(tmp)
        port = _free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        redis_cmd += ["--save", "", "--appendonly", "no", "--dir", tmp]
        with _process_group(redis_cmd, tmpdir / "redis.log") as redis_proc:
            client = redis.Redis(host="127.0.0.1", port=port)
            _wait_until(client.ping, redis_proc, tmpdir / "redis.log", "redis-server")
            env = {**os.environ, ENV_VAR: redis_url, "CELERY_BEAT_IDLE": json.dumps(entries)}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))

            def beat_cmd(name: str) -> list[str]:
                return [sys.executable, "-m", "celery", "-A", "celery_beat_app", "beat",
                        "--loglevel=info", f"--schedule={tmpdir / name}",
                        f"--pidfile={tmpdir / (name + '.pid')}"]

            # Idle: the same crontab entries, none due.
            log = tmpdir / "beat-idle.log"
            with _process_group(beat_cmd("idle-schedule"), log, cwd=HERE, env=env) as beat:
                spawned = time.monotonic()
                _wait_until(lambda: "beat: Starting" in log.read_text(), beat, log, "beat")
                out["idle"] = {"schedules": len(entries),
                               "first_tick_s": time.monotonic() - spawned,
                               "startup_cpu_s": cpu_seconds(beat.pid),
                               **idle_cost(beat.pid, seconds)}
            # Fire lag: the same entries plus one every minute, and a worker to run it.
            env["CELERY_BEAT_EVERY_MINUTE"] = "1"
            worker_cmd = [sys.executable, "-m", "celery", "-A", "celery_beat_app", "worker",
                          "--concurrency=1", "--pool=prefork", "--loglevel=warning"]
            worker_log, log = tmpdir / "worker.log", tmpdir / "beat-lag.log"
            with _process_group(worker_cmd, worker_log, cwd=HERE, env=env) as worker:
                os.environ[ENV_VAR] = redis_url  # read by celery_beat_app at import
                import celery_beat_app

                app = celery_beat_app.app
                try:
                    _wait_until(lambda: app.control.ping(timeout=0.5), worker, worker_log,
                                "celery worker")
                finally:
                    app.close()
                with _process_group(beat_cmd("lag-schedule"), log, cwd=HERE, env=env) as beat:
                    _wait_until(lambda: "beat: Starting" in log.read_text(), beat, log, "beat")
                    time.sleep(minutes * 60)
                    time.sleep(2)  # let the last task land
                started = sorted(float(s) for s in client.lrange(celery_beat_app.STAMPS, 0, -1))
            client.close()
            sent = [
                t for line in log.read_text().splitlines()
                if "Sending due task " + celery_beat_app.EVERY_MINUTE in line
                and (t := _log_time(line)) is not None
            ]
            out["lag"] = {
                "minutes": minutes,
                "publish_s": lag_figures([t - 60 * math.floor(t / 60) for t in sent]),
                "start_s": lag_figures([t - 60 * math.floor(t / 60) for t in started]),
            }
    return out


# -- output ----------------------------------------------------------------------------

def _lag_line(label: str, figures: dict[str, float]) -> str:
    if not figures.get("count"):
        return f"  {label:44} no fires measured"
    return (f"  {label:44} p50 {figures['p50'] * 1000:7.1f} ms  p99 {figures['p99'] * 1000:7.1f}"
            f" ms  max {figures['max'] * 1000:7.1f} ms  (n={figures['count']:.0f})")


def _idle_lines(figures: dict[str, Any]) -> list[str]:
    return [
        f"  first tick / ready after                     {figures['first_tick_s']:7.2f} s"
        f"  (CPU {figures['startup_cpu_s']:.2f} s)",
        f"  idle CPU over {figures['wall_s']:.0f} s                           "
        f"{figures['cpu_percent']:7.3f} % of one core  ({figures['cpu_s']:.2f} CPU s;"
        f" resolution {100 / CLK_TCK / figures['wall_s']:.3f} %)",
        f"  VmRSS / VmHWM                                {figures['VmRSS']:7.1f} /"
        f" {figures['VmHWM']:.1f} MB",
    ]


def report(results: dict[str, Any]) -> str:
    lines = [f"machine: {os.cpu_count()} cores, load average {results['load']}"]
    for key, title in (("local_lag", "fast clock"), ("local_lag_real", "real clock")):
        lag = results.get(key)
        if not lag:
            continue
        lines.append(f"jobfleet local scheduler, fire lag ({title}, speed {lag['speed']:g}, "
                     f"{lag['schedules']} '* * * * *' schedules of noop, {lag['seconds']:.0f}"
                     " real s)")
        lines.append(f"  scheduled times {lag['scheduled_times']}, fires {lag['fires']}, "
                     f"states {lag['states']}, triggers {lag['triggers']}")
        lines.append(_lag_line("scheduled time -> orchestration created_at", lag["lag_s"]))
        missing = lag["scheduled_times"] - lag["fires"]
        if missing > 0:
            lines.append(f"  {missing} scheduled times have no fire at all (the lags above are"
                         " of the fires that happened)")
    idle = results["local_idle"]
    lines.append(f"jobfleet local scheduler holding {idle['schedules']} schedules "
                 f"('{IDLE_CRON}' in {idle['zones']} zones; created in {idle['create_s']:.1f} s)")
    lines += _idle_lines(idle)
    beat = results.get("celery_beat")
    if beat:
        lines.append(f"Celery beat {beat['celery']} (Redis broker), the same "
                     f"{beat['idle']['schedules']} crontab entries (UTC minute/hour)")
        lines += _idle_lines(beat["idle"])
        lag = beat["lag"]
        lines.append(f"  fire lag of one crontab() entry over {lag['minutes']:g} real minutes:")
        lines.append(_lag_line("minute -> beat's 'Sending due task' log line", lag["publish_s"]))
        lines.append(_lag_line("minute -> task started in a worker", lag["start_s"]))
        jf, cb = idle["cpu_percent"], beat["idle"]["cpu_percent"]
        lines.append(f"idle CPU, jobfleet / beat: {jf:.3f} % / {cb:.3f} %; "
                     f"RSS {idle['VmRSS']:.0f} / {beat['idle']['VmRSS']:.0f} MB")
    elif "celery_beat_error" in results:
        lines.append(f"Celery beat: not measured: {results['celery_beat_error']}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, home, speed, origin, *profile = sys.argv
        scheduler_child(home, float(speed), float(origin), profile[0] if profile else None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000, help="idle schedules held")
    parser.add_argument("--seconds", type=float, default=60, help="idle measurement window")
    parser.add_argument("--lag-seconds", type=float, default=75)
    parser.add_argument("--lag-schedules", type=int, default=3)
    parser.add_argument("--speed", type=float, default=20)
    parser.add_argument("--real-clock", action="store_true",
                        help="also measure the fire lag at the real clock")
    parser.add_argument("--real-clock-seconds", type=float, default=150)
    parser.add_argument("--real-clock-schedules", type=int, default=10)
    parser.add_argument("--beat-minutes", type=float, default=3)
    parser.add_argument("--no-celery", action="store_true", help="skip Celery beat")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the idle scheduler process into FILE")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    results: dict[str, Any] = {}
    progress = sys.stderr
    print("fire lag, fast clock...", file=progress, flush=True)
    results["local_lag"] = local_fire_lag(args.lag_schedules, args.lag_seconds, args.speed)
    if args.real_clock:
        print("fire lag, real clock...", file=progress, flush=True)
        results["local_lag_real"] = local_fire_lag(args.real_clock_schedules,
                                                   args.real_clock_seconds, 1.0)
    print("idle local scheduler...", file=progress, flush=True)
    results["local_idle"] = local_idle(args.schedules, args.seconds, args.profile)
    if not args.no_celery:
        print("Celery beat...", file=progress, flush=True)
        try:
            results["celery_beat"] = celery_beat(args.schedules, args.seconds,
                                                 args.beat_minutes)
        except Exception as exc:  # say what could not be measured rather than fake it
            results["celery_beat_error"] = f"{type(exc).__name__}: {exc}"
    results["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(report(results))


if __name__ == "__main__":
    main()
