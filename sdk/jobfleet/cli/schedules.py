"""`jobfleet schedule ...`, `jobfleet schedules sync` and `jobfleet scheduler`.

Bad input exits 2 with one message naming the problem, and nothing is created: a
schedule is checked whole (cron, zone, job, params against the job's schema, options)
before the store is written. `--json` output is stable and documented in docs/local.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from jobfleet.cli import schedule_render as render
from jobfleet.cli.arguments import EXIT_FAILED, EXIT_OK, add_jobs_module, parse_tags
from jobfleet.cli.params_file import read_params
from jobfleet.core.schedules import CatchUp, Fire, FireState, Overlap, declared_schedules
from jobfleet.errors import InvalidSchedule, UnknownOrchestration
from jobfleet.fleet import JobFleet
from jobfleet.local_scheduler import LocalScheduler, fast_clock

COMMANDS = frozenset({"schedule", "schedules", "scheduler"})
HISTORY_SHOWN = 10  # recent fires in `schedule show`


def add_parsers(sub: Any) -> None:
    """Add the three commands to the top-level subparsers."""
    schedule = sub.add_parser("schedule", help="create, inspect and change one schedule")
    verbs = schedule.add_subparsers(dest="schedule_command", required=True, metavar="VERB")

    create = verbs.add_parser("create", help="create a schedule at run time")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--job", required=True, metavar="J", help="registered job name")
    create.add_argument("--cron", required=True, metavar="EXPR",
                        help='unix-cron, five fields, e.g. "0 2 * * *"')
    create.add_argument("--timezone", default="UTC", metavar="Z",
                        help="IANA zone the cron is read in (default UTC)")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--params", metavar="FILE|-",
                        help="fixed parameter sets: JSON list or JSON Lines")
    source.add_argument("--params-provider", metavar="NAME",
                        help="a registered params provider, called at every fire")
    create.add_argument("--parallelism", type=int, metavar="N")
    create.add_argument("--retries", type=int, metavar="N")
    create.add_argument("--timeout", type=float, metavar="S", help="seconds per attempt")
    create.add_argument("--tag", action="append", default=[], metavar="K=V",
                        help="a tag KEY=VALUE on every run; repeatable")
    create.add_argument("--overlap", choices=[o.value for o in Overlap], default="skip",
                        help="when the previous run is unfinished (default skip)")
    create.add_argument("--catch-up", choices=[c.value for c in CatchUp], default="latest",
                        help="what a scheduler that was down does with missed fires "
                        "(default latest)")
    create.add_argument("--description", default="", metavar="T")
    create.add_argument("--paused", action="store_true", help="create it paused")
    add_jobs_module(create, "declaring the job or the params provider")
    create.add_argument("--json", action="store_true")

    verbs.add_parser("list", help="every schedule").add_argument("--json", action="store_true")
    for verb, text in (("show", "a schedule, its next fire times and its recent fires"),
                       ("pause", "stop firing on the cron (trigger still runs it)"),
                       ("resume", "fire on the cron again, from now on"),
                       ("delete", "delete the schedule; its runs and history stay"),
                       ("trigger", "run it now, outside its cron; prints the run id")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("name", metavar="NAME")
        if verb == "trigger":
            add_jobs_module(cmd, "declaring the job or the params provider")
        cmd.add_argument("--json", action="store_true")
    upcoming = verbs.add_parser("next", help="the next fire times")
    upcoming.add_argument("name", metavar="NAME")
    upcoming.add_argument("--count", type=int, default=5, metavar="N")
    upcoming.add_argument("--json", action="store_true")
    history = verbs.add_parser("history", help="the fires, newest first, with their runs")
    history.add_argument("name", metavar="NAME")
    history.add_argument("--limit", type=int, default=20, metavar="N")
    history.add_argument("--json", action="store_true")

    schedules = sub.add_parser("schedules", help="schedules as code")
    schedules_verbs = schedules.add_subparsers(dest="schedules_command", required=True,
                                               metavar="sync")
    sync = schedules_verbs.add_parser(
        "sync", help="make the deployed schedules match those declared in the jobs modules")
    add_jobs_module(sync, "declaring schedules with jobfleet.schedule(...)")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.add_argument("--prune", action="store_true",
                      help="delete schedules declared in code that are declared no more")
    sync.add_argument("--json", action="store_true")

    scheduler = sub.add_parser(
        "scheduler", help="fire the schedules on time, locally, until SIGINT or SIGTERM")
    add_jobs_module(scheduler, "declaring the scheduled jobs and params providers")
    scheduler.add_argument("--clock-speed", type=float, metavar="N",
                           help="for tests and demos: run the clock N times faster")
    scheduler.add_argument("--clock-origin", type=float, metavar="EPOCH",
                           help="for tests and demos: the instant (Unix seconds) from which "
                           "the fast clock runs; schedulers given the same one agree")


def dispatch(fleet: JobFleet, args: argparse.Namespace) -> int:
    if args.command == "scheduler":
        return run_scheduler(fleet, args)
    if args.command == "schedules":
        return sync(fleet, args)
    verb: str = args.schedule_command
    if verb == "create":
        return create(fleet, args)
    if verb == "list":
        render.schedule_list(fleet.schedules.list(), args.json)
        return EXIT_OK
    if verb == "show":
        return show(fleet, args)
    if verb == "next":
        if args.count < 1:
            raise InvalidSchedule(f"--count must be 1 or more, got {args.count}")
        s = fleet.schedules.get(args.name)
        render.fire_times(s, fleet.schedules.next(args.name, args.count), args.json)
        return EXIT_OK
    if verb == "history":
        fires = fleet.schedules.history(args.name, limit=args.limit)
        render.fires(fires, _run_statuses(fleet, fires), args.json)
        return EXIT_OK
    if verb == "trigger":
        return trigger(fleet, args)
    if verb == "delete":
        fleet.schedules.delete(args.name)
        render.deleted(args.name, args.json)
        return EXIT_OK
    changed = (fleet.schedules.pause if verb == "pause" else fleet.schedules.resume)(args.name)
    render.schedule(changed, args.json)
    return EXIT_OK


def create(fleet: JobFleet, args: argparse.Namespace) -> int:
    made = fleet.schedules.create(
        args.name, job=args.job, cron=args.cron, paused=args.paused, timezone=args.timezone,
        params=None if args.params is None else read_params(args.params),
        params_provider=args.params_provider, parallelism=args.parallelism,
        retries=args.retries, timeout=args.timeout, tags=parse_tags(args.tag),
        overlap=args.overlap, catch_up=args.catch_up, description=args.description,
    )
    render.schedule(made, args.json)
    return EXIT_OK


def show(fleet: JobFleet, args: argparse.Namespace) -> int:
    s = fleet.schedules.get(args.name)
    fires = fleet.schedules.history(args.name, limit=HISTORY_SHOWN)
    upcoming = fleet.schedules.next(args.name, 5)
    render.show(s, upcoming, fires, _run_statuses(fleet, fires), args.json)
    return EXIT_OK


def trigger(fleet: JobFleet, args: argparse.Namespace) -> int:
    """Exit 0 with the run id, or 1 when the overlap policy started nothing."""
    result = fleet.schedules.trigger(args.name)
    render.triggered(result.fire, args.json)
    return EXIT_OK if result.fire.state is FireState.STARTED else EXIT_FAILED


def sync(fleet: JobFleet, args: argparse.Namespace) -> int:
    if args.prune and not declared_schedules():
        raise InvalidSchedule(
            "no schedule is declared in the imported jobs modules (JOBFLEET_JOBS, "
            "--jobs-module), so --prune would delete every schedule declared in code; name "
            "the modules, or delete schedules one by one with `jobfleet schedule delete`"
        )
    plan = fleet.schedules.plan(prune=args.prune)
    render.plan(plan, dry_run=args.dry_run, as_json=args.json)
    if not args.dry_run:
        fleet.schedules.sync(prune=args.prune)
        if not args.json:
            print(f"applied: {len(plan.create)} created, {len(plan.update)} updated, "
                  f"{len(plan.delete)} deleted")
    return EXIT_OK


def run_scheduler(fleet: JobFleet, args: argparse.Namespace) -> int:
    if (args.clock_speed is None) != (args.clock_origin is None):
        raise InvalidSchedule("--clock-speed and --clock-origin go together")
    if args.clock_speed is not None and args.clock_speed <= 0:
        raise InvalidSchedule(f"--clock-speed must be above 0, got {args.clock_speed}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    log = logging.getLogger("jobfleet.local_scheduler")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    clock = time.time
    stop = threading.Event()
    speed = 1.0
    if args.clock_speed is not None:
        clock, speed = fast_clock(args.clock_speed, args.clock_origin), args.clock_speed

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping)
    names = ", ".join(s.name for s in fleet.schedules.list()) or "none yet"
    where = fleet.settings.home if fleet.settings.backend == "local" else fleet.settings.backend

    def ready() -> None:
        print(f"jobfleet scheduler: firing the schedules of {where} ({names}); "
              "stop with Ctrl-C", file=sys.stderr, flush=True)

    LocalScheduler(fleet, clock=clock, speed=speed).run(stop, on_ready=ready)
    print("jobfleet scheduler: stopped", file=sys.stderr)
    return EXIT_OK


def _run_statuses(fleet: JobFleet, fires: list[Fire]) -> dict[str, str]:
    """The current status of each fire's run (absent when the run is gone)."""
    statuses = {}
    for fire in fires:
        if fire.orchestration_id:
            try:
                snap = fleet.handle(fire.orchestration_id).status()
            except UnknownOrchestration:
                continue
            statuses[fire.orchestration_id] = str(snap.status)
    return statuses

