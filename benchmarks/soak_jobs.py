"""The job the soak benchmark (soak.py) kicks off. Workers import it through
JOBFLEET_JOBS=soak_jobs with benchmarks/ on PYTHONPATH (soak.py sets both).

One job, `soak`, whose params choose what an attempt does:

    noop    return at once                            (healthy)
    sleep   sleep `seconds` (a few milliseconds)      (healthy)
    slow    sleep `seconds` (1-3 s)                   (healthy)
    fail    raise on every attempt                    (ends Errored after its retries)
    flaky   raise on the first attempt, then succeed  (a file under `mark` counts attempts)
    poison  os._exit(1) on every attempt: the worker process dies under it

Every attempt first writes "<orchestration id> <index>" to `<mark>/pid-<pid>`, so that
the chaos loop can tell, after it has killed or stopped a worker, which instance that
process was running at that moment (the one instance a kill may fairly be charged to).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobfleet import job

HEALTHY_KINDS = frozenset({"noop", "sleep", "slow"})
KINDS = (*sorted(HEALTHY_KINDS), "fail", "flaky", "poison")
MARK_WIDTH = 96  # fixed-width record, rewritten in place with one pwrite per attempt

_mark_fds: dict[tuple[int, str], int] = {}


def mark_path(mark_dir: str | Path, pid: int) -> Path:
    return Path(mark_dir) / f"pid-{pid}"


def read_mark(mark_dir: str | Path, pid: int) -> tuple[str, int] | None:
    """(orchestration id, index) of the attempt `pid` started last, if it left one."""
    try:
        text = mark_path(mark_dir, pid).read_text().strip()
        oid, index = text.split()
        return oid, int(index)
    except (OSError, ValueError):
        return None


def _mark(mark_dir: str, index: int) -> None:
    pid = os.getpid()
    fd = _mark_fds.get((pid, mark_dir))
    if fd is None:
        fd = os.open(mark_path(mark_dir, pid), os.O_WRONLY | os.O_CREAT, 0o644)
        _mark_fds[(pid, mark_dir)] = fd
    record = f"{os.environ.get('ORCHESTRATION_ID', '-')} {index}".ljust(MARK_WIDTH)
    os.pwrite(fd, record.encode()[:MARK_WIDTH], 0)


@job("soak", retries=2, backoff=0.2)
def soak(params: dict[str, Any]) -> Any:
    index = int(params["n"])
    mark_dir = params.get("mark")
    if mark_dir:
        _mark(str(mark_dir), index)
    kind = params["kind"]
    if kind == "noop":
        return index
    if kind in ("sleep", "slow"):
        time.sleep(float(params["seconds"]))
        return index
    if kind == "fail":
        raise RuntimeError(f"soak instance {index} fails on every attempt, on purpose")
    if kind == "flaky":
        counter = Path(str(mark_dir)) / f"flaky-{os.environ.get('ORCHESTRATION_ID')}-{index}"
        made = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(made + 1))
        if made == 0:
            raise ConnectionError(f"soak instance {index}: transient failure, on purpose")
        return index
    if kind == "poison":
        os._exit(1)
    raise ValueError(f"unknown soak kind {kind!r}")
