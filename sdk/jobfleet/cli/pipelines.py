"""Pipelines and re-runs from the command line: `run --then`, `rerun`, `results
--merged`, and what `status` says of a run's links.

Bad input exits 2 with one message naming the problem (the `--then` spec, the stage),
and nothing is created: every stage is checked by the kick-off before the first one
starts. `--json` output is stable and documented in docs/local.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from jobfleet.cli import render
from jobfleet.cli.arguments import (
    EXIT_FAILED,
    EXIT_OK,
    add_jobs_module,
    exit_code,
    follow,
    parse_tags,
)
from jobfleet.cli.params_file import read_params
from jobfleet.core.models import OrchestrationSnapshot, Status
from jobfleet.core.pipeline import Stage, When, next_stage_id
from jobfleet.errors import InvalidOption
from jobfleet.fleet import JobFleet, Orchestration
from jobfleet.run_links import RunLinks, links_of, rerun_tree, stage_number

COMMANDS = frozenset({"rerun"})
THEN_FORM = "JOB [from FILE|MODULE:FUNCTION] [always]"


def add_parsers(
    sub: Any, run: argparse.ArgumentParser, results: argparse.ArgumentParser
) -> None:
    """`rerun`, and the pipeline options of `run` and `results`."""
    run.add_argument("--then", action="append", default=[], metavar="SPEC",
                     help=f'a next stage, "{THEN_FORM}": its params from a JSON/JSONL file '
                     "or a function of the previous stage's results; `always` runs it "
                     "whatever the previous stage's end (default: only when it Completed); "
                     "repeatable, in order")
    results.add_argument("--merged", action="store_true",
                         help="the run's and its re-runs' results together: the last outcome "
                         "of each original index")

    rerun = sub.add_parser("rerun", help="re-run the failed (or cancelled) instances of an "
                           "ended orchestration, with their original params and indexes")
    rerun.add_argument("id", metavar="ID")
    rerun.add_argument("--failed", action="store_true", help="the Errored ones (the default)")
    rerun.add_argument("--cancelled", action="store_true", help="the Cancelled ones")
    rerun.add_argument("--parallelism", type=int, metavar="N")
    rerun.add_argument("--no-wait", action="store_true", help="print the new run and return")
    add_jobs_module(rerun)
    rerun.add_argument("--json", action="store_true")


# -- run --then -----------------------------------------------------------------------------


def parse_then(spec: str, position: int) -> Stage:
    """One `--then` spec as a Stage; InvalidOption naming the spec when it is wrong."""
    def wrong(problem: str) -> InvalidOption:
        return InvalidOption(f"--then {spec!r} (stage {position}): {problem}; "
                             f'the form is "{THEN_FORM}"')

    try:
        words = shlex.split(spec)
    except ValueError as exc:
        raise wrong(str(exc)) from None
    if not words:
        raise wrong("it names no job")
    job, rest = words[0], words[1:]
    when = When.COMPLETED
    if rest and rest[-1] == When.ALWAYS.value:
        when, rest = When.ALWAYS, rest[:-1]
    if not rest:
        raise wrong("it says nothing of its params: add `from FILE` or `from MODULE:FUNCTION`")
    if len(rest) != 2 or rest[0] != "from":
        raise wrong(f"cannot read {' '.join(rest)!r}")
    source = rest[1]
    params: list[Any] | str
    if os.path.isfile(source):
        params = read_params(source)
    elif ":" in source:
        where, _, function = source.rpartition(":")
        # A script's function is found by its path in whichever process starts the stage.
        params = f"{os.path.abspath(where)}:{function}" if where.endswith(".py") else source
    else:
        raise wrong(f"{source!r} is neither a params file nor a MODULE:FUNCTION name")
    return Stage(job, params=params, when=when)


def run_pipeline(fleet: JobFleet, args: argparse.Namespace, params: list[Any]) -> int:
    """Kick off the first stage with the rest to follow; wait for the whole pipeline
    unless --no-wait. Exit 0 when every stage ran and every instance succeeded."""
    stages = [parse_then(spec, position) for position, spec in enumerate(args.then, start=2)]
    first = fleet.kick_off(
        args.job, params, parallelism=args.parallelism, tags=parse_tags(args.tag),
        retries=args.retries, timeout=args.timeout, then=stages,
        webhooks=getattr(args, "webhook", None),
    )
    jobs = ", ".join(s.job for s in stages)
    if not args.json:
        print(f"pipeline {first.id}: {args.job} x {len(params)}, then {jobs}", file=sys.stderr)
    if args.no_wait:
        snaps = [first.status()]
    elif args.json:
        snaps = first.wait_pipeline()
    else:
        snaps = _follow_stages(first)
    show_pipeline(first.id, snaps, args.json)
    if args.no_wait:
        return EXIT_OK
    return EXIT_OK if _pipeline_done(snaps) else EXIT_FAILED


def _follow_stages(first: Orchestration) -> list[OrchestrationSnapshot]:
    """Each stage with its own progress, in turn, until the pipeline ends."""
    done: list[OrchestrationSnapshot] = []
    current = first
    while True:
        snap = render.progress(current)
        done.append(snap)
        if not snap.then or snap.next_note:
            return done
        # The next stage starts before the end is recorded as announced, which is
        # what the progress waited for: it exists now.
        current = current.fleet.handle(next_stage_id(snap.id))


def _pipeline_done(snaps: list[OrchestrationSnapshot]) -> bool:
    last = snaps[-1]
    return not last.then and all(s.status is Status.COMPLETED for s in snaps)


def show_pipeline(pipeline: str, snaps: list[OrchestrationSnapshot], as_json: bool) -> None:
    last = snaps[-1]
    total = stage_number(last) + len(last.then or [])
    if as_json:
        print(json.dumps({
            "pipeline": pipeline,
            "complete": not last.then and last.status.terminal,
            "stages": [_stage_json(s) for s in snaps],
        }))
        return
    print(f"pipeline {pipeline}: {len(snaps)} of {total} stage(s) started")
    for s in snaps:
        print(f"  stage {stage_number(s)}  {render.line(s)}")
    if last.next_note:
        print(f"  stopped after stage {stage_number(last)}: {last.next_note}")


def _stage_json(snap: OrchestrationSnapshot) -> dict[str, Any]:
    return {**snap.to_json(), "stage": stage_number(snap), "next_note": snap.next_note or None}


# -- rerun ----------------------------------------------------------------------------------


def rerun(fleet: JobFleet, args: argparse.Namespace) -> int:
    which = [name for name, asked in (("failed", args.failed), ("cancelled", args.cancelled))
             if asked] or ["failed"]
    again = fleet.orchestration(args.id).rerun(which, parallelism=args.parallelism)
    if args.no_wait:
        render.snapshot(again.status(), args.json)
        return EXIT_OK
    snap = again.status()
    if not args.json:
        print(f"orchestration {again.id}: re-run of {args.id}: {snap.job_name} x "
              f"{snap.counts.total} ({' and '.join(which)})", file=sys.stderr)
    code = follow(again, quiet=args.json)
    render.snapshot(again.status(), args.json)
    return code


# -- results --merged -----------------------------------------------------------------------


def merged_results(fleet: JobFleet, args: argparse.Namespace) -> int:
    """Wait for the run and every re-run of it, then their outcomes laid over one another:
    the last of each original index. Exit 0 when that leaves no failure."""
    runs = rerun_tree(fleet, args.id)
    for run in runs:
        if not run.status.terminal:
            print(f"orchestration {run.id} is {run.status}; waiting for it", file=sys.stderr)
            fleet.handle(run.id).wait()
    original = fleet.handle(args.id)
    successes, failures = original.merged_results()
    snap = original.status()
    shown_failures = None if args.succeeded else failures
    shown_successes = [] if args.failed else successes
    if args.json:
        print(json.dumps({
            "orchestration_id": snap.id,
            "status": str(snap.status),
            "merged": [r.id for r in runs],
            "successes": [s.to_json() for s in shown_successes],
            "failures": [f.to_json() for f in shown_failures or []],
        }))
    else:
        render.results(snap, shown_successes, shown_failures, as_json=False)
        print(f"merged from {len(runs)} run(s): {', '.join(r.id for r in runs)}")
    return EXIT_OK if failures is None else EXIT_FAILED


# -- status ---------------------------------------------------------------------------------


def status(fleet: JobFleet, snap: OrchestrationSnapshot, as_json: bool) -> int:
    """The run's state and counts, with its pipeline and its re-runs."""
    links = links_of(fleet, snap)
    if as_json:
        print(json.dumps({**snap.to_json(), "links": links.to_json()}))
    else:
        render.snapshot(snap, as_json=False)
        show_links(links)
    return exit_code(snap.status)


def show_links(links: RunLinks) -> None:
    snap = links.snap
    if links.is_stage:
        print(f"pipeline       {links.pipeline}: stage {links.stage} of {links.stages_total}"
              f" ({len(links.stages)} started so far)")
        for s in links.stages:
            mark = "  <- this one" if s.id == snap.id else ""
            print(f"  stage {stage_number(s)}      {s.id}  {s.job_name}  {s.status}{mark}")
        if snap.parent:
            print(f"parent         {snap.parent}")
        if links.next:
            print(f"next           {links.next}")
        elif snap.next_note:
            print(f"next           not started: {snap.next_note}")
        elif snap.then:
            print("next           not started yet: it starts when this stage ends")
        else:
            print("next           none: the last stage")
    if links.rerun_of:
        print(f"re-run of      {links.rerun_of}")
    if links.reruns:
        print("re-runs        " + " ".join(s.id for s in links.reruns))
