"""`jobfleet`: kick off, follow and collect jobs from a shell.

Exit status: 0 every instance succeeded, 1 some instance errored or was cancelled (or
`cancel` found it already ended), 2 bad usage or bad input (nothing was created), 141
when the reader of standard output went away (`jobfleet results ID | head`), as for a
Unix tool ended by SIGPIPE. `--json` output is stable and documented in docs/local.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jobfleet.cli import function as function_command
from jobfleet.cli import pipelines as pipeline_commands
from jobfleet.cli import render
from jobfleet.cli import schedules as schedule_commands
from jobfleet.cli import webhooks as webhook_commands
from jobfleet.cli import worker_classes as worker_class_commands
from jobfleet.cli.arguments import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code, follow, parse_tags
from jobfleet.cli.params_file import read_params
from jobfleet.core.models import Status
from jobfleet.core.registry import import_jobs
from jobfleet.errors import JobfleetError
from jobfleet.fleet import JobFleet, Orchestration

EXIT_CLOSED_PIPE = 128 + 13  # what a shell reports for a tool ended by SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobfleet", description="Parallel background jobs: fan out, track, collect."
    )
    parser.add_argument("--home", help="local backend state folder (default: JOBFLEET_HOME)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("demo", help="run the demo fan-out on the local backend")

    run = sub.add_parser("run", help="kick off a job over a file of parameter sets")
    run.add_argument("job", help="registered job name")
    run.add_argument("--params", required=True, metavar="FILE|-", help="JSON list or JSON Lines")
    run.add_argument("--jobs-module", action="append", default=[], metavar="M",
                     help="module (or .py file) declaring the job; repeatable")
    run.add_argument("--parallelism", type=int, metavar="N")
    run.add_argument("--tag", action="append", default=[], metavar="K=V",
                     help="a tag KEY=VALUE on the orchestration; repeatable")
    run.add_argument("--retries", type=int, metavar="N")
    run.add_argument("--timeout", type=float, metavar="S", help="seconds per attempt")
    run.add_argument("--webhook", action="append", metavar="URL",
                     help="a URL that receives the signed completion event; repeatable")
    run.add_argument("--no-wait", action="store_true", help="print the id and return at once")
    run.add_argument("--json", action="store_true")

    for name, text in (("status", "an orchestration's state and counts"),
                       ("watch", "follow an orchestration until it ends"),
                       ("cancel", "cancel an orchestration's unfinished instances")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id", metavar="ID")
        cmd.add_argument("--json", action="store_true")

    history = sub.add_parser("list", help="orchestrations, newest first")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--job", help="only this job name")
    history.add_argument("--status", choices=[s.value for s in Status if s is not Status.PENDING])
    history.add_argument("--json", action="store_true")

    results = sub.add_parser("results", help="successes and failures with their params")
    results.add_argument("id", metavar="ID")
    which = results.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true")
    which.add_argument("--succeeded", action="store_true")
    results.add_argument("--json", action="store_true")

    events = sub.add_parser("events", help="JobCompletedEvents, oldest first")
    events.add_argument("--follow", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one event object a line")

    logs = sub.add_parser("logs", help="an orchestration's log lines (locally its log files,"
                          " on Google Cloud its Cloud Logging entries)")
    logs.add_argument("id", metavar="ID")
    logs.add_argument("--job", metavar="JOB_ID", help="only the lines of this job instance")
    logs.add_argument("--follow", action="store_true", help="go on until the orchestration ends")

    sub.add_parser("worker", help="run one task's share (the container entrypoint)")
    function_command.add_parser(sub)

    sweep = sub.add_parser(
        "sweep", help="bring back what faults left behind (run it every minute on Google Cloud)"
    )
    sweep.add_argument("--json", action="store_true")

    serve = sub.add_parser("serve", help="the HTTP API and the dashboard")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but loopback needs a token")
    serve.add_argument("--port", type=int, help="default: PORT, else 8080")
    serve.add_argument("--jobs-module", action="append", default=[], metavar="M",
                       help="module (or .py file) declaring jobs the API may kick off; "
                       "repeatable (e.g. jobfleet.demo)")
    serve.add_argument("--no-scheduler", dest="scheduler", action="store_false",
                       help="do not fire the local home's schedules from this server "
                       "(on Google Cloud, Cloud Scheduler fires them anyway)")

    schedule_commands.add_parsers(sub)
    webhook_commands.add_parsers(sub)
    pipeline_commands.add_parsers(sub, run=run, results=results)
    worker_class_commands.add_parser(sub)

    dev = sub.add_parser("dev", help="the local Google Cloud stack (emulators and all)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="up|down")
    dev_up = dev_sub.add_parser("up", help="start it and print the environment to export")
    dev_up.add_argument("--project", default="jobfleet-dev")
    dev_up.add_argument("--sweep-every", type=float, default=60.0, metavar="S",
                        help="seconds between sweeps (Cloud Scheduler's job in production)")
    dev_up.add_argument("--task-timeout", type=float, default=600.0, metavar="S",
                        help="the Cloud Run job's task timeout (Cloud Run's default: 600)")
    dev_up.add_argument("--scheduler-clock-speed", type=float, default=1.0, metavar="N",
                        help="the Cloud Scheduler stand-in's clock runs N times faster "
                             "(for tests and demos)")
    dev_up.add_argument("--parallelism", type=int, default=10,
                        help="Cloud Run job parallelism (tasks at once)")
    dev_sub.add_parser("down", help="stop everything `dev up` started")
    return parser


def cmd_run(fleet: JobFleet, args: argparse.Namespace) -> int:
    params = read_params(args.params)
    if args.then:
        return pipeline_commands.run_pipeline(fleet, args, params)
    orchestration = fleet.kick_off(
        args.job, params, parallelism=args.parallelism, tags=parse_tags(args.tag),
        retries=args.retries, timeout=args.timeout, webhooks=args.webhook,
    )
    if args.no_wait:
        snap = orchestration.status()
        render.snapshot(snap, args.json)
        return EXIT_OK
    if not args.json:
        print(f"orchestration {orchestration.id}: {args.job} x {len(params)}", file=sys.stderr)
    code = follow(orchestration, quiet=args.json)
    render.snapshot(orchestration.status(), args.json)
    return code


def cmd_demo(fleet: JobFleet, args: argparse.Namespace) -> int:
    from jobfleet.demo import demo_params

    params = demo_params()
    where = (f"the local backend ({fleet.settings.home})" if fleet.settings.backend == "local"
             else f"the {fleet.settings.backend} backend ({fleet.settings.project})")
    print(f"jobfleet demo: process_batch over {len(params)} parameter sets on {where};"
          f" batch {len(params) // 2} is poisoned on purpose")
    orchestration = fleet.kick_off("process_batch", params, tags={"source": "demo"})
    render.progress(orchestration)
    successes, failures = orchestration.results()
    render.snapshot(orchestration.status(), as_json=False)
    print("\nfirst successes, and every failure with its original params:")
    render.results(orchestration.status(), successes[:3], failures, as_json=False, summary=False)
    print(f"\n`jobfleet results {orchestration.id}` lists all; `jobfleet events` shows the"
          " completion event.")
    expected = len(successes) == len(params) - 1 and failures is not None and len(failures) == 1
    print("demo finished as expected: one failure, kept with its params" if expected
          else "demo did NOT finish as expected")
    return EXIT_OK if expected else EXIT_FAILED


def cmd_results(fleet: JobFleet, args: argparse.Namespace) -> int:
    if args.merged:
        return pipeline_commands.merged_results(fleet, args)
    orchestration = fleet.orchestration(args.id)
    snap = orchestration.status()
    if not snap.status.terminal:
        print(f"orchestration {args.id} is {snap.status}; waiting for it", file=sys.stderr)
    successes, failures = orchestration.results()
    snap = orchestration.status()
    render.results(
        snap,
        [] if args.failed else successes,
        None if args.succeeded else failures,
        as_json=args.json,
    )
    return exit_code(snap.status)


def cmd_events(fleet: JobFleet, args: argparse.Namespace) -> int:
    stream = fleet.follow_events() if args.follow else fleet.events()
    for _, event in stream:
        render.event(event, args.json)
        sys.stdout.flush()
    return EXIT_OK


def cmd_logs(fleet: JobFleet, args: argparse.Namespace) -> int:
    shown = 0
    for line in fleet.orchestration(args.id).logs(args.job, follow=args.follow):
        print(line.text, flush=args.follow)
        shown += 1
    if not shown:
        whose = f"job {args.job} of orchestration" if args.job else "orchestration"
        print(f"no log lines for {whose} {args.id}", file=sys.stderr)
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from jobfleet.config import Settings
    from jobfleet.dev import stack

    state = Settings.from_env(home=args.home).home / "dev"
    try:
        if args.dev_command == "down":
            stopped = stack.down(state)
            print("stopped the dev stack" if stopped else "no dev stack was running",
                  file=sys.stderr)
            return EXIT_OK
        print("starting the emulators, the Cloud Run and Cloud Scheduler stand-ins, the function"
              " and the trigger relay ...", file=sys.stderr)
        running = stack.up(state, project=args.project, parallelism=args.parallelism,
                           sweep_every=args.sweep_every, task_timeout=args.task_timeout,
                           scheduler_clock_speed=args.scheduler_clock_speed)
    except JobfleetError as exc:
        print(f"jobfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(stack.exports(running.env))
    print(f"# logs in {state}; stop with: jobfleet dev down", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from jobfleet.api.serve import serve

    if args.home:
        os.environ["JOBFLEET_HOME"] = args.home
    try:
        modules = _jobs_modules(args.jobs_module)
        if modules is not None:  # the app's JobFleet reads them from the environment
            os.environ["JOBFLEET_JOBS"] = ",".join(modules)
            import_jobs(modules)  # a module that does not import stops here, not in the app
        serve(args.host, args.port, scheduler=args.scheduler)
    except JobfleetError as exc:
        print(f"jobfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def dispatch(fleet: JobFleet, args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "run":
        return cmd_run(fleet, args)
    if command == "demo":
        return cmd_demo(fleet, args)
    if command == "results":
        return cmd_results(fleet, args)
    if command == "events":
        return cmd_events(fleet, args)
    if command == "logs":
        return cmd_logs(fleet, args)
    if command in schedule_commands.COMMANDS:
        return schedule_commands.dispatch(fleet, args)
    if command in webhook_commands.COMMANDS:
        return webhook_commands.dispatch(fleet, args)
    if command in pipeline_commands.COMMANDS:
        return pipeline_commands.rerun(fleet, args)
    if command == "sweep":
        done = fleet.sweep()
        render.sweep(done, args.json)
        return EXIT_FAILED if done["failed"] else EXIT_OK
    if command == "list":
        status = Status(args.status) if args.status else None
        render.history(fleet.history(limit=args.limit, job_name=args.job, status=status), args.json)
        return EXIT_OK
    orchestration = fleet.orchestration(args.id)
    if command == "status":
        return pipeline_commands.status(fleet, orchestration.status(), args.json)
    if command == "watch":
        return follow(orchestration, quiet=False) if not args.json else _watch_json(orchestration)
    snap = orchestration.cancel()
    if snap.status is not Status.CANCELLED:  # the API answers 409 for the same
        print(f"jobfleet: orchestration {snap.id} already ended {snap.status}; "
              "nothing to cancel", file=sys.stderr)
        return EXIT_FAILED
    render.snapshot(snap, args.json)
    return EXIT_OK


def _watch_json(orchestration: Orchestration) -> int:
    snap = orchestration.status()
    for snap in orchestration.watch():
        print(json.dumps(snap.to_json()), flush=True)
    return exit_code(snap.status)


def _quiet_on_closed_pipe(run: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
    """A reader that stops early (`| head`) ends the command quietly with status 141, as
    SIGPIPE ends a Unix tool, instead of with a BrokenPipeError traceback."""

    @functools.wraps(run)
    def guarded(argv: Sequence[str] | None = None) -> int:
        try:
            code = run(argv)
            sys.stdout.flush()  # buffered output meets the closed pipe here, not at exit
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)  # so the exit-time flush is silent
            for stream in (sys.stdout, sys.stderr):
                try:
                    os.dup2(devnull, stream.fileno())
                except (OSError, ValueError):
                    pass
            return EXIT_CLOSED_PIPE
        return code

    return guarded


@_quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        from jobfleet.worker import main as worker_main

        return worker_main()
    if args.command == "function":
        try:
            return function_command.run(args)
        except JobfleetError as exc:
            print(f"jobfleet: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "dev":
        return cmd_dev(args)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == worker_class_commands.COMMAND:
        return worker_class_commands.main(args)
    jobs: list[Any] = getattr(args, "jobs_module", [])
    try:
        with JobFleet(home=args.home, jobs_modules=_jobs_modules(jobs)) as fleet:
            return dispatch(fleet, args)
    except JobfleetError as exc:
        print(f"jobfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("jobfleet: interrupted; the orchestration keeps running", file=sys.stderr)
        return 130


def _jobs_modules(extra: list[str]) -> list[str] | None:
    if not extra:
        return None
    from jobfleet.config import Settings

    return [*Settings.from_env().jobs_modules, *extra]
