"""Jobs the tests kick off. Workers import this module through JOBFLEET_JOBS."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from jobfleet import job, params_provider


class Greeting(BaseModel):
    name: str
    count: int = Field(ge=0)


@job("greet", retries=0)
def greet(params: Greeting) -> dict[str, Any]:
    return {"text": f"hello {params.name}", "count": params.count}


@job("maybe_fail", retries=0)
class MaybeFail:
    def run(self, params: dict[str, Any]) -> int:
        if params.get("fail"):
            raise RuntimeError(f"item {params['n']} failed on purpose")
        return int(params["n"]) * 10


@job("flaky", retries=3, backoff=0.05)
def flaky(params: dict[str, Any]) -> int:
    """Fails its first `fail_times` attempts, counting them in a file."""
    counter = Path(params["dir"]) / f"attempts-{params['n']}"
    made = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(made + 1))
    if made < params["fail_times"]:
        raise ConnectionError(f"transient failure {made + 1}")
    return made + 1


@job("sleepy", retries=0)
def sleepy(params: dict[str, Any]) -> int:
    """Leaves its pid where the test can find it, then sleeps."""
    if "dir" in params:
        (Path(params["dir"]) / f"running-{params['n']}").write_text(str(os.getpid()))
    time.sleep(float(params.get("seconds", 0.1)))
    return int(params["n"])


@job("double_async", retries=0)
async def double_async(params: dict[str, Any]) -> int:
    await asyncio.sleep(0.01)
    return int(params["x"]) * 2


@job("unserialisable", retries=0)
def unserialisable(params: dict[str, Any]) -> object:
    return object()


@job("chatty", retries=0)
def chatty(params: dict[str, Any]) -> int:
    """Prints `chunks` blocks of 100 KB, `pause` seconds apart."""
    for _ in range(int(params["chunks"])):
        print("x" * 100_000, flush=True)
        time.sleep(float(params.get("pause", 0.05)))
    return 0


@job("talkative", retries=1, backoff=0.01)
def talkative(params: dict[str, Any]) -> int:
    """Prints a line to stdout and one to stderr, logs one, and fails when asked to."""
    n = params["n"]
    time.sleep(float(params.get("seconds", 0)))
    print(f"stdout line of item {n}")
    print(f"stderr line of item {n}", file=sys.stderr)
    logging.getLogger("talkative").info("logged line of item %s", n)
    if params.get("fail"):
        raise RuntimeError(f"item {n} failed on purpose")
    return int(n)


@job("hold_the_store_lock", retries=0)
def hold_the_store_lock(params: dict[str, Any]) -> int:
    """Takes the local store's write lock (as a worker stopped inside a write would hold
    it), says so in `dir`, and keeps it."""
    import sqlite3

    db = sqlite3.connect(Path(os.environ["JOBFLEET_HOME"]) / "jobfleet.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    (Path(params["dir"]) / "locked").write_text(str(os.getpid()))
    time.sleep(600)
    return 0


@job("until_fixed", retries=0)
def until_fixed(params: dict[str, Any]) -> int:
    """Fails while the file `broken` names exists: a run whose re-run can succeed."""
    if params.get("broken") and Path(params["broken"]).exists():
        raise RuntimeError(f"item {params['n']} is broken")
    return int(params["n"])


@params_provider("greetings_when_ready")
def greetings_when_ready() -> list[dict[str, Any]]:
    """Fails (as a provider whose source is down would) until the file `provider-ready`
    exists in JOBFLEET_HOME."""
    if not (Path(os.environ["JOBFLEET_HOME"]) / "provider-ready").exists():
        raise ConnectionError("the customer list is unavailable")
    return [{"name": "provided", "count": 1}]


@job("extract", retries=0)
def extract(params: dict[str, Any]) -> list[int]:
    """A source's rows; `fail` makes the source unreadable."""
    if params.get("fail"):
        raise RuntimeError(f"source {params['source']} is unreadable")
    return list(range(params["source"] * 10, params["source"] * 10 + params.get("rows", 3)))


@job("transform", retries=0)
def transform(params: dict[str, Any]) -> int:
    if params.get("row") == params.get("poison", -1):
        raise ValueError(f"row {params['row']} cannot be transformed")
    return int(params["row"]) * 2


@job("load", retries=0)
def load(params: dict[str, Any]) -> int:
    return len(params["values"])


def rows_of(results: Any) -> list[dict[str, Any]]:
    """extract → transform: one parameter set per row extracted."""
    poison = results.stage.tags.get("poison")
    return [{"row": row, "poison": int(poison) if poison else -1}
            for s in results.successes for row in s.result]


def batch_of(results: Any) -> list[dict[str, Any]]:
    """transform → load: one parameter set with every value transformed."""
    return [{"values": [s.result for s in results.successes]}]
