"""How the CLI shows things: a live bar on a terminal, plain lines otherwise, or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from jobfleet.core.models import (
    Failure,
    JobCompletedEvent,
    OrchestrationSnapshot,
    Success,
)
from jobfleet.core.sweep import report
from jobfleet.fleet import Orchestration

PLAIN_EVERY_SECONDS = 1.0


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def line(s: OrchestrationSnapshot) -> str:
    c = s.counts
    return (
        f"{s.id}  {s.job_name}  {s.status}  {c.done}/{c.total} done "
        f"({c.succeeded} succeeded, {c.failed} failed, {c.cancelled} cancelled, "
        f"{c.in_progress} running)"
    )


def progress(orchestration: Orchestration) -> OrchestrationSnapshot:
    """Follow to the end: a rich progress bar on a terminal, throttled lines otherwise."""
    if sys.stderr.isatty():
        return _bar(orchestration)
    snap = orchestration.status()
    last, printed = 0.0, ""
    for snap in orchestration.watch():
        # watch() yields the terminal state twice when the completion event goes out
        # after the last instance ends: the line is the same, so it is printed once.
        text = line(snap)
        due = snap.status.terminal or time.monotonic() - last >= PLAIN_EVERY_SECONDS
        if due and text != printed:
            print(text, file=sys.stderr, flush=True)
            last, printed = time.monotonic(), text
    return snap


def _bar(orchestration: Orchestration) -> OrchestrationSnapshot:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
    )
    snap = orchestration.status()
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(snap.job_name, total=snap.counts.total, detail="")
        for snap in orchestration.watch():
            c = snap.counts
            bar.update(
                task, completed=c.done,
                detail=f"ok {c.succeeded}  failed {c.failed}  running {c.in_progress}",
            )
    print(line(snap), file=sys.stderr)
    return snap


def snapshot(snap: OrchestrationSnapshot, as_json: bool) -> None:
    if as_json:
        print(json.dumps(snap.to_json()))
        return
    c = snap.counts
    print(f"orchestration  {snap.id}")
    print(f"job            {snap.job_name}")
    print(f"status         {snap.status}")
    print(f"instances      {c.total} total: {c.succeeded} succeeded, {c.failed} failed, "
          f"{c.cancelled} cancelled, {c.in_progress} running, {c.pending} pending")
    if snap.tags:
        print("tags           " + " ".join(f"{k}={v}" for k, v in snap.tags.items()))
    print(f"created        {_when(snap.created_at)}   finished {_when(snap.finished_at)}")


def history(snaps: list[OrchestrationSnapshot], as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.to_json() for s in snaps]))
        return
    if not snaps:
        print("no orchestrations yet: try `jobfleet demo`")
    for s in snaps:
        print(f"{_when(s.created_at)}  {line(s)}")


def results(
    snap: OrchestrationSnapshot,
    successes: list[Success],
    failures: list[Failure] | None,
    as_json: bool,
    summary: bool = True,
) -> None:
    if as_json:
        print(json.dumps({
            "orchestration_id": snap.id,
            "status": str(snap.status),
            "successes": [s.to_json() for s in successes],
            "failures": [f.to_json() for f in failures or []],
        }))
        return
    for s in successes:
        print(f"ok      #{s.index:<5} {json.dumps(s.params)} -> {json.dumps(s.result)}")
    for f in failures or []:
        print(f"{f.status.lower():<7} #{f.index:<5} {json.dumps(f.params)} -> "
              f"{f.error.type}: {f.error.message} (attempts: {f.attempts})")
    if summary:
        print(f"{len(successes)} succeeded, {len(failures or [])} failed")


def event(e: JobCompletedEvent, as_json: bool) -> None:
    if as_json:
        print(json.dumps(e.to_json()))
        return
    tags = " ".join(f"{k}={v}" for k, v in e.tags.items())
    print(f"{_when(e.finished_at)}  {e.orchestration_id}  {e.job_name}  {e.status}  "
          f"{e.succeeded}/{e.total} succeeded  {tags}".rstrip())


def sweep(done: Counter[str], as_json: bool) -> None:
    """What a sweep did: how many unsettled orchestrations it looked at, and each action."""
    counts = report(done)
    if as_json:
        print(json.dumps(counts))
        return
    looked_at = counts.pop("looked_at")
    taken = ", ".join(f"{n} {action}" for action, n in counts.items() if n)
    print(f"swept {looked_at} unsettled orchestration(s): {taken or 'nothing to do'}")
