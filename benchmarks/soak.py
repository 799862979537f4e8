"""Soak under chaos: a mixed fan-out while workers are killed and hung, then the invariants.

    python benchmarks/soak.py [--instances 100000] [--orchestrations 4] [--parallelism 4]
                              [--chaos-interval 3] [--stop-fraction 0.3] [--deadline 900]
                              [--json]
    python benchmarks/soak.py --backend gcp [--instances 2000] [--cancel-after 15]
                              [--chaos-duration 60] [--sweep-interval 5]

Kicks off --instances instances of the `soak` job (benchmarks/soak_jobs.py), split over
--orchestrations orchestrations. Most are no-ops or millisecond sleeps, some are slow
(1-3 s), some raise (always, or on their first attempt only) and a few are poison: they
call os._exit(1), crashing their worker on every attempt. While they run, a chaos loop
picks a random live `jobfleet worker` process of this run every --chaos-interval
seconds and SIGKILLs it, or SIGSTOPs it and leaves it stopped (a hung worker the system
has to notice and replace). Right after each signal it reads from the store which
instances that worker held, and from the job's own marker which instance it was running:
that one instance may fairly be charged an attempt for the kill (the "legit" set).

On Google Cloud (`--backend gcp`, the dev stack on the emulators, started here) one
execution is also cancelled from outside jobfleet through the Cloud Run Admin API, and
once the chaos is over `python -m jobfleet sweep` runs every --sweep-interval seconds.

When every orchestration has ended (or --deadline passed) it prints the figures, and
exits 1 if a goal is missed: see benchmarks/README.md, "Soak under chaos". Whatever
happens (Ctrl-C included) every process of the run is SIGKILLed at the end, stopped
workers first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from jobfleet import JobFleet, Orchestration, Status, WaitTimeout  # noqa: E402
from jobfleet.core.models import WORKER_LOST, JobInstance  # noqa: E402
from soak_jobs import HEALTHY_KINDS, KINDS, read_mark  # noqa: E402

JOB = "soak"
JOBS_MODULE = "soak_jobs"
RUN_VARIABLE = "JOBFLEET_SOAK_RUN"  # marks every process this run starts (they inherit it)
SUPERVISOR_MODULE = b"jobfleet.backends.local.supervisor"
GCP_PROJECT = "jobfleet-soak"
PAGE = 1000
PROGRESS_SECONDS = 15.0
SWEEP_TIMEOUT = 120.0


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the plan: which instance does what -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mix:
    fail: float
    flaky: float
    slow: float
    sleep: float
    poison: int

    def kinds(self, n: int, rng: random.Random) -> list[str]:
        poison = set(rng.sample(range(n), min(self.poison, n)))
        kinds = []
        for i in range(n):
            if i in poison:
                kinds.append("poison")
                continue
            x = rng.random()
            for kind, share in (("fail", self.fail), ("flaky", self.flaky),
                                ("slow", self.slow), ("sleep", self.sleep)):
                if x < share:
                    kinds.append(kind)
                    break
                x -= share
            else:
                kinds.append("noop")
        return kinds


def params_of(kind: str, index: int, mark: Path, rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {"n": index, "kind": kind, "mark": str(mark)}
    if kind == "sleep":
        params["seconds"] = round(rng.uniform(0.001, 0.02), 4)
    elif kind == "slow":
        params["seconds"] = round(rng.uniform(1.0, 3.0), 3)
    return params


def split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]


# -- the run's processes, from /proc ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    role: str  # "worker" or "supervisor"
    orchestration_id: str
    shard: int
    execution: str
    state: str  # /proc/<pid>/stat: R, S, D, T (stopped), Z (zombie), ...


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0]


def run_processes(run_id: str) -> list[Proc]:
    """Workers and local supervisors started by this run, zombies left out."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if SUPERVISOR_MODULE in args:
                role = "supervisor"
            elif b"worker" in args and any(b"jobfleet" in a for a in args):
                role = "worker"
            else:
                continue
            env = _environ(pid)
            state = _state(pid)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if env.get(RUN_VARIABLE) != run_id or state in ("Z", "X"):
            continue
        shard = int(env.get("JOBFLEET_SHARD_OFFSET") or 0) + int(
            env.get("CLOUD_RUN_TASK_INDEX") or 0
        )
        found.append(Proc(pid, role, env.get("ORCHESTRATION_ID", ""), shard,
                          env.get("CLOUD_RUN_EXECUTION", ""), state))
    return found


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- which instances a worker holds, read from the store ------------------------------------


class HeldReader(Protocol):
    def held(self, orchestration_id: str, shard: int, pid: int) -> list[int]:
        """Indexes of the instances InProgress whose owner ends with /<pid>."""

    def close(self) -> None: ...


class SqliteHeld:
    """Read-only, on a connection of its own: the SDK does not expose `owner`."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._db: sqlite3.Connection | None = None

    def held(self, orchestration_id: str, shard: int, pid: int) -> list[int]:
        if self._db is None:  # opened in the thread that reads
            self._db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10.0)
        rows = self._db.execute(
            "SELECT idx, owner FROM jobs WHERE orchestration_id = ? AND shard = ?"
            " AND status = 'InProgress'",
            (orchestration_id, shard),
        ).fetchall()
        return sorted(int(i) for i, owner in rows if str(owner or "").endswith(f"/{pid}"))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class FirestoreHeld:
    def __init__(self, project: str) -> None:
        from google.cloud import firestore

        self._client = firestore.Client(project=project)

    def held(self, orchestration_id: str, shard: int, pid: int) -> list[int]:
        from google.cloud.firestore import FieldFilter

        jobs = (
            self._client.collection("jobfleet_orchestrations").document(orchestration_id)
            .collection("jobs")
            .where(filter=FieldFilter("status", "==", Status.IN_PROGRESS.value))
            .where(filter=FieldFilter("shard", "==", shard))
        )
        return sorted(
            int(doc.get("index")) for doc in jobs.stream()
            if str(doc.get("owner") or "").endswith(f"/{pid}")
        )

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


# -- the run's shared state -------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    backend: str
    mark: Path
    rng: random.Random
    started: float  # time.monotonic() at kick-off
    deadline: float  # time.monotonic() when waiting stops
    orchestrations: list[Orchestration] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    stopped: set[int] = field(default_factory=set)  # pids SIGSTOPped by the chaos loop
    legit: Counter[tuple[str, int]] = field(default_factory=Counter)
    actions: list[dict[str, Any]] = field(default_factory=list)
    ended_at: dict[str, float] = field(default_factory=dict)
    wait_errors: dict[str, str] = field(default_factory=dict)
    cancelled_execution: str | None = None
    sweeps: Counter[str] = field(default_factory=Counter)
    sweep_last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ids(self) -> set[str]:
        return {o.id for o in self.orchestrations}

    def chaos_actions(self) -> int:
        """SIGKILLs and SIGSTOPs so far (the external cancellation is not counted)."""
        with self.lock:
            return sum(a["action"] in ("SIGKILL", "SIGSTOP") for a in self.actions)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note_victim(self, proc: Proc, action: str, before: list[int], after: list[int]) -> None:
        """After the signal the process can write nothing more, so what the store says it
        holds then is what it held when it died (`before`, read just ahead of the signal,
        stands in if a replacement already took the instances back). The one instance it
        was running (its marker, if the store shows it held) may be charged; failing
        that, the only instance it held; failing both reads, the marker alone."""
        held = after or before
        mark = read_mark(self.mark, proc.pid)
        charged: int | None = None
        if mark is not None and mark[0] == proc.orchestration_id and (
            mark[1] in held or not held
        ):
            # With nothing read as held, the store was read too early (a claim landed
            # after `before`) and too late (the retried task already took it back):
            # the marker alone says what was running. A charge can only ever land on
            # an instance still InProgress, so this cannot excuse any other instance.
            charged = mark[1]
        elif len(held) == 1:
            charged = held[0]
        with self.lock:
            if charged is not None:
                self.legit[(proc.orchestration_id, charged)] += 1
            self.actions.append({
                "at_s": round(self.elapsed(), 2), "action": action, "pid": proc.pid,
                "orchestration_id": proc.orchestration_id, "shard": proc.shard,
                "held": len(held), "legit_index": charged,
            })


# -- chaos, the external cancellation, the sweep ----------------------------------------------


def chaos_loop(run: Run, reader: HeldReader, interval: float, stop_fraction: float,
               until: float, limit: int) -> None:
    try:
        while not run.done.wait(interval):
            if time.monotonic() >= min(until, run.deadline):
                break
            if limit and run.chaos_actions() >= limit:
                break
            candidates = [
                p for p in run_processes(run.run_id)
                if p.role == "worker" and p.state not in ("T", "t")
                and p.orchestration_id in run.ids and p.pid not in run.stopped
            ]
            if not candidates:
                continue
            victim = run.rng.choice(candidates)
            stop = run.rng.random() < stop_fraction
            before = reader.held(victim.orchestration_id, victim.shard, victim.pid)
            if not kill_quietly(victim.pid, signal.SIGSTOP if stop else signal.SIGKILL):
                continue
            if stop:
                with run.lock:
                    run.stopped.add(victim.pid)
            after = reader.held(victim.orchestration_id, victim.shard, victim.pid)
            action = "SIGSTOP" if stop else "SIGKILL"
            run.note_victim(victim, action, before, after)
            log(f"{action} worker {victim.pid} (orchestration {victim.orchestration_id[:8]},"
                f" shard {victim.shard}, held {len(after or before)})")
    except Exception as exc:  # report it; the run goes on without chaos
        log(f"chaos loop stopped on an error: {exc!r}")
    finally:
        reader.close()


def cancel_from_outside(run: Run, reader: HeldReader, after: float) -> None:
    """Cancel one Cloud Run execution through the Admin API, as an operator might."""
    if run.done.wait(after):
        return
    try:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import run_v2

        target = next((o for o in run.orchestrations
                       if not o.status().status.terminal and o.status().execution), None)
        if target is None:
            log("no execution left to cancel from outside")
            return
        execution = str(target.status().execution).split(",")[0]
        short = execution.rsplit("/", 1)[-1]
        victims = [p for p in run_processes(run.run_id)
                   if p.role == "worker" and p.execution == short]
        before = {p.pid: reader.held(p.orchestration_id, p.shard, p.pid) for p in victims}
        client = run_v2.ExecutionsClient(
            transport="rest",
            client_options=ClientOptions(api_endpoint=os.environ["JOBFLEET_CLOUD_RUN_ENDPOINT"]),
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        )
        client.cancel_execution(name=execution)
        run.cancelled_execution = execution
        for p in victims:
            run.note_victim(p, "cancel", before[p.pid],
                            reader.held(p.orchestration_id, p.shard, p.pid))
        log(f"cancelled execution {short} of orchestration {target.id[:8]} through the"
            f" Cloud Run Admin API ({len(victims)} running tasks)")
    except Exception as exc:
        log(f"the external cancellation failed: {exc!r}")
    finally:
        reader.close()


def sweep_loop(run: Run, start_at: float, interval: float) -> None:
    """`python -m jobfleet sweep`, a one-shot command, every `interval` s after the chaos."""
    while not run.done.wait(max(0.0, start_at - time.monotonic())):
        if time.monotonic() >= run.deadline:
            return
        try:
            done = subprocess.run(
                [sys.executable, "-m", "jobfleet", "sweep"], env=os.environ.copy(),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SWEEP_TIMEOUT,
            )
            last = (done.stderr.strip().splitlines() or [""])[-1]
            outcome, error = ("ok", "") if done.returncode == 0 else (
                "failed", f"exit {done.returncode}: {last[-300:]}")
        except subprocess.TimeoutExpired:
            outcome, error = "failed", f"no answer within {SWEEP_TIMEOUT:.0f} s"
        with run.lock:
            run.sweeps[outcome] += 1
            if error:
                if not run.sweep_last_error:
                    log(f"sweep failed: {error}")
                run.sweep_last_error = error
        start_at = time.monotonic() + interval


# -- waiting -------------------------------------------------------------------------------------


def wait_all(run: Run) -> None:
    def wait_one(orchestration: Orchestration) -> None:
        try:
            orchestration.wait(timeout=max(1.0, run.deadline - time.monotonic()))
            run.ended_at[orchestration.id] = time.monotonic()
        except WaitTimeout:
            pass
        except Exception as exc:
            run.wait_errors[orchestration.id] = repr(exc)

    waiters = [threading.Thread(target=wait_one, args=(o,), daemon=True,
                                name=f"wait-{o.id[:8]}") for o in run.orchestrations]
    for thread in waiters:
        thread.start()
    next_report = time.monotonic() + PROGRESS_SECONDS
    while any(t.is_alive() for t in waiters) and time.monotonic() < run.deadline + 10:
        for thread in waiters:
            thread.join(timeout=0.5)
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + PROGRESS_SECONDS
            with contextlib.suppress(Exception):
                snaps = [o.status() for o in run.orchestrations]
                done = sum(s.counts.done for s in snaps)
                total = sum(s.counts.total for s in snaps)
                log(f"{run.elapsed():6.0f} s: {done}/{total} instances terminal,"
                    f" {len(run.ended_at)}/{len(snaps)} orchestrations ended,"
                    f" {run.chaos_actions()} chaos actions")


# -- the figures -----------------------------------------------------------------------------------


def instances_of(orchestration: Orchestration) -> Iterator[JobInstance]:
    after = -1
    while page := orchestration.instances(after_index=after, limit=PAGE):
        yield from page
        after = page[-1].index


def wrongly_charged(instance: JobInstance, legit: int) -> str | None:
    """Why a healthy instance (one that never fails on its own) counts as charged for
    another's crash, or None. Every attempt past the first is a charge; each chaos action
    that hit this very instance excuses one."""
    if not instance.status.terminal:
        return None  # stuck, counted apart
    if instance.status is Status.COMPLETED:
        return "extra attempts" if instance.attempts - 1 > legit else None
    if instance.error is not None and instance.error.type == WORKER_LOST:
        return None if legit >= max(1, instance.attempts) else "ended WorkerLost"
    return f"ended {instance.status}"


def local_event_counts(fleet: JobFleet, ids: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter({oid: 0 for oid in ids})
    for _, event in fleet.events():
        if event.orchestration_id in ids:
            counts[event.orchestration_id] += 1
    return counts


class RawEvents:
    """A plain Pub/Sub subscription (not the de-duplicating EventSubscriber): counts
    every distinct message published per orchestration, redeliveries aside."""

    def __init__(self, project: str, topic: str) -> None:
        from google.cloud.pubsub_v1 import SubscriberClient

        from jobfleet.backends.gcp.pubsub import ensure_subscription

        self.path = ensure_subscription(project, topic, f"soak-{uuid.uuid4().hex[:8]}")
        self.client = SubscriberClient()
        self.messages: dict[str, set[str]] = {}

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                reply = self.client.pull(
                    request={"subscription": self.path, "max_messages": 100}, timeout=5.0
                )
            except Exception:
                continue
            if not reply.received_messages:
                time.sleep(0.5)
                continue
            for received in reply.received_messages:
                oid = received.message.attributes.get("orchestration_id", "")
                self.messages.setdefault(oid, set()).add(received.message.message_id)
            self.client.acknowledge(request={
                "subscription": self.path,
                "ack_ids": [r.ack_id for r in reply.received_messages],
            })

    def counts(self, ids: set[str]) -> Counter[str]:
        return Counter({oid: len(self.messages.get(oid, ())) for oid in ids})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_subscription(request={"subscription": self.path})
        self.client.close()


def write_lock(database: Path) -> str:
    """Whether the local store's write lock can be taken (then released at once, nothing
    written): a worker SIGSTOPped inside a write transaction holds it for every process."""
    try:
        db = sqlite3.connect(database, timeout=2.0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        return f"held ({exc})"
    return "free"


def figures(run: Run, fleet: JobFleet, events: Counter[str], left: list[Proc],
            completed_s: float | None) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    rerun = stuck = poison_errored = 0
    charged: Counter[str] = Counter()
    charged_examples: list[dict[str, Any]] = []
    failing: Counter[str] = Counter()
    ended: Counter[str] = Counter()
    stuck_orchestrations = []
    for orchestration in run.orchestrations:
        snap = orchestration.status()
        ended[str(snap.status)] += 1
        if not (snap.status.terminal and snap.event_published):
            stuck_orchestrations.append({"id": orchestration.id, "status": str(snap.status),
                                         "unfinished": snap.counts.total - snap.counts.done})
        for instance in instances_of(orchestration):
            kind = str(instance.params.get("kind"))
            kinds[kind] += 1
            if not instance.status.terminal:
                stuck += 1
            if kind in HEALTHY_KINDS:
                rerun += instance.attempts > 1
                why = wrongly_charged(instance, run.legit[(orchestration.id, instance.index)])
                if why is not None:
                    charged[why] += 1
                    if len(charged_examples) < 5:
                        charged_examples.append({
                            "orchestration_id": orchestration.id, "index": instance.index,
                            "kind": kind, "status": str(instance.status),
                            "attempts": instance.attempts,
                            "error": None if instance.error is None else instance.error.type,
                            "why": why,
                        })
            elif kind == "poison":
                poison_errored += instance.status is Status.ERRORED
            elif instance.status.terminal:
                error = instance.error.type if instance.error else "-"
                failing[f"{kind}: {instance.status} ({error})"] += 1
    wrong = sum(charged.values())
    kills = sum(a["action"] == "SIGKILL" for a in run.actions)
    stops = sum(a["action"] == "SIGSTOP" for a in run.actions)
    goals = {
        "completed": completed_s is not None,
        "wrongly_charged_zero": wrong == 0,
        "poison_all_errored": poison_errored == kinds["poison"],
        "stuck_zero": stuck == 0 and not stuck_orchestrations,
        "one_event_per_orchestration": all(events[o] == 1 for o in run.ids),
        "no_process_left": not left,
    }
    return {
        "backend": run.backend,
        "instances": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "orchestrations": sorted(run.ids),
        "orchestrations_by_status": dict(ended),
        "completion_s": None if completed_s is None else round(completed_s, 2),
        "rerun": rerun,
        "wrongly_charged": wrong,
        "wrongly_charged_by_reason": dict(charged),
        "wrongly_charged_examples": charged_examples,
        "poison": {"total": kinds["poison"], "errored": poison_errored},
        "failing_kinds": dict(sorted(failing.items())),
        "stuck": stuck,
        "stuck_orchestrations": stuck_orchestrations,
        "events": {oid: events[oid] for oid in sorted(run.ids)},
        "kills": kills,
        "stops": stops,
        "legit_charges": sum(run.legit.values()),
        "chaos_actions": run.actions,
        "left_behind": len(left),
        "left_behind_detail": [
            {"pid": p.pid, "role": p.role, "state": p.state,
             "stopped_by_chaos": p.pid in run.stopped} for p in left
        ],
        "cancelled_execution": run.cancelled_execution,
        "sweeps": dict(run.sweeps),
        "sweep_last_error": run.sweep_last_error,
        "wait_errors": run.wait_errors,
        "goals": goals,
        "ok": all(goals.values()),
    }


def render(result: dict[str, Any]) -> str:
    def goal(name: str) -> str:
        return "ok  " if result["goals"][name] else "MISS"

    kinds = ", ".join(f"{k} {v}" for k, v in result["kinds"].items())
    wall = result["completion_s"]
    events = Counter(result["events"].values())
    lines = [
        f"soak under chaos, {result['backend']} backend: {result['instances']} instances over"
        f" {len(result['orchestrations'])} orchestrations ({kinds})",
        f"  [{goal('completed')}] wall time to completion     "
        + (f"{wall:10.1f} s" if wall is not None else "   did not complete (deadline)"),
        f"         instances re-run (healthy)     {result['rerun']:10d}",
        f"  [{goal('wrongly_charged_zero')}] wrongly charged (healthy)      "
        f"{result['wrongly_charged']:10d}   (goal 0)"
        + (f" {result['wrongly_charged_by_reason']}" if result["wrongly_charged"] else ""),
        f"  [{goal('poison_all_errored')}] poison instances Errored       "
        f"{result['poison']['errored']:6d} / {result['poison']['total']:<3d}(goal: all, alone)",
        f"  [{goal('stuck_zero')}] stuck instances                {result['stuck']:10d}   (goal 0;"
        f" {len(result['stuck_orchestrations'])} orchestrations not ended)",
        f"  [{goal('one_event_per_orchestration')}] events per orchestration       "
        + ", ".join(f"{n} x {count} event{'s' if count != 1 else ''}"
                    for count, n in sorted(events.items()))
        + "   (goal: every orchestration exactly 1)",
        f"         chaos: SIGKILL {result['kills']}, SIGSTOP {result['stops']},"
        f" instances a kill may charge {result['legit_charges']}",
        f"  [{goal('no_process_left')}] processes left behind          "
        f"{result['left_behind']:10d}   (goal 0)",
    ]
    if result.get("store_write_lock") not in (None, "free"):
        lines.append(f"         local store write lock at the end: {result['store_write_lock']}")
    if result["failing_kinds"]:
        lines.append("         failing kinds ended: " + "; ".join(
            f"{k} x{v}" for k, v in result["failing_kinds"].items()))
    if result["backend"] == "gcp":
        lines.append(f"         cancelled from outside: {result['cancelled_execution'] or 'none'};"
                     f" sweeps {result['sweeps'] or 'none run'}")
        if result["sweep_last_error"]:
            lines.append(f"         last sweep error: {result['sweep_last_error'][:200]}")
    for stuck in result["stuck_orchestrations"]:
        lines.append(f"         not ended: {stuck['id']} {stuck['status']},"
                     f" {stuck['unfinished']} unfinished")
    for example in result["wrongly_charged_examples"]:
        lines.append(f"         e.g. charged: {example}")
    for oid, why in result["wait_errors"].items():
        lines.append(f"         wait() on {oid} raised {why}")
    lines.append("all goals met" if result["ok"] else "GOALS MISSED: " + ", ".join(
        name for name, met in result["goals"].items() if not met))
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------------


def cleanup(run_id: str, stopped: set[int]) -> int:
    """SIGKILL every process of the run: stopped workers first, then workers and
    supervisors (with their process groups: a supervisor leads one). Returns how many."""
    killed = sum(kill_quietly(pid) for pid in sorted(stopped))
    for _ in range(3):
        procs = run_processes(run_id)
        if not procs:
            break
        for proc in procs:
            if proc.role == "supervisor":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            killed += kill_quietly(proc.pid)
        time.sleep(0.2)
    return killed


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("local", "gcp"), default="local")
    parser.add_argument("--instances", type=int, help="default 100000 (gcp: 2000)")
    parser.add_argument("--orchestrations", type=int, help="default 4 (gcp: 2)")
    parser.add_argument("--parallelism", type=int, default=4, help="tasks per orchestration")
    parser.add_argument("--retries", type=int, default=2, help="per instance (kick-off option)")
    parser.add_argument("--fail-fraction", type=float, default=0.01)
    parser.add_argument("--flaky-fraction", type=float, default=0.01)
    parser.add_argument("--slow-fraction", type=float, default=0.002)
    parser.add_argument("--sleep-fraction", type=float, default=0.1)
    parser.add_argument("--poison", type=int, help="poison instances in all (default: 2 per"
                        " orchestration)")
    parser.add_argument("--chaos-interval", type=float, default=3.0)
    parser.add_argument("--stop-fraction", type=float, default=0.3,
                        help="share of chaos actions that SIGSTOP rather than SIGKILL")
    parser.add_argument("--chaos-duration", type=float,
                        help="seconds of chaos after kick-off (default: local until the end,"
                        " gcp 60)")
    parser.add_argument("--chaos-max", type=int, default=0, help="cap on chaos actions (0: none)")
    parser.add_argument("--cancel-after", type=float, default=15.0,
                        help="gcp: seconds after kick-off to cancel one execution from outside")
    parser.add_argument("--sweep-interval", type=float, default=5.0)
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="seconds after kick-off when waiting stops and the rest is stuck")
    parser.add_argument("--task-timeout", type=float, default=60.0, metavar="S",
                        help="gcp: the Cloud Run job's task timeout in the dev stack")
    parser.add_argument("--grace", type=float, default=15.0,
                        help="seconds the run's processes get to exit once all ended")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--home", help="local: JOBFLEET_HOME to use (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp home / mark dir")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    gcp = args.backend == "gcp"
    instances = args.instances or (2_000 if gcp else 100_000)
    orchestration_count = max(1, min(instances, args.orchestrations or (2 if gcp else 4)))
    mix = Mix(args.fail_fraction, args.flaky_fraction, args.slow_fraction,
              args.sleep_fraction,
              2 * orchestration_count if args.poison is None else args.poison)

    run_id = uuid.uuid4().hex
    scratch = Path(tempfile.mkdtemp(prefix="jobfleet-soak-"))
    mark = scratch / "marks"
    mark.mkdir()
    home = Path(args.home) if args.home else scratch / "home"
    os.environ[RUN_VARIABLE] = run_id
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["JOBFLEET_JOBS"] = JOBS_MODULE
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # Explicitly, SIGINT too: a shell starts background jobs with SIGINT ignored.
        signal.signal(signum, _interrupt)

    stack_dir = scratch / "stack"
    run: Run | None = None
    fleet: JobFleet | None = None
    raw_events: RawEvents | None = None
    code = 2
    try:
        if gcp:
            from jobfleet.dev import stack

            started = time.perf_counter()
            # Cloud Run ends a hung task at the job's task timeout; a short one here.
            running = stack.up(stack_dir, project=GCP_PROJECT, parallelism=args.parallelism,
                               task_timeout=args.task_timeout)
            os.environ.update(running.env)
            log(f"dev stack up in {time.perf_counter() - started:.1f} s (state in {stack_dir})")
            raw_events = RawEvents(running.env["GOOGLE_CLOUD_PROJECT"],
                                   running.env["JOBFLEET_TOPIC"])
            fleet = JobFleet(backend="gcp", jobs_modules=[JOBS_MODULE])
        else:
            os.environ["JOBFLEET_HOME"] = str(home)
            fleet = JobFleet(backend="local", home=home, jobs_modules=[JOBS_MODULE])

        rng = random.Random(args.seed)
        kinds = mix.kinds(instances, rng)
        now = time.monotonic()
        run = Run(run_id, args.backend, mark, random.Random(args.seed + 1), now,
                  now + args.deadline)
        log(f"kicking off {instances} instances as {orchestration_count} orchestrations"
            f" (parallelism {args.parallelism}, retries {args.retries}); mix "
            + ", ".join(f"{k} {kinds.count(k)}" for k in KINDS))
        offset = 0
        for size in split(instances, orchestration_count):
            params = [params_of(kinds[offset + i], i, mark, rng) for i in range(size)]
            offset += size
            run.orchestrations.append(fleet.kick_off(
                JOB, params, parallelism=args.parallelism, retries=args.retries))
        log(f"kicked off in {run.elapsed():.1f} s: "
            + ", ".join(o.id for o in run.orchestrations))

        def reader() -> HeldReader:
            if gcp:
                return FirestoreHeld(os.environ["GOOGLE_CLOUD_PROJECT"])
            return SqliteHeld(home / "jobfleet.db")

        chaos_for = args.chaos_duration if args.chaos_duration is not None else (
            60.0 if gcp else float("inf"))
        chaos_until = time.monotonic() + chaos_for
        helpers = [threading.Thread(
            target=chaos_loop, name="chaos", daemon=True,
            args=(run, reader(), args.chaos_interval, args.stop_fraction, chaos_until,
                  args.chaos_max))]
        if gcp:
            helpers.append(threading.Thread(target=cancel_from_outside, name="cancel",
                                            daemon=True,
                                            args=(run, reader(), args.cancel_after)))
            sweep_from = chaos_until if chaos_for != float("inf") else time.monotonic()
            helpers.append(threading.Thread(target=sweep_loop, name="sweep", daemon=True,
                                            args=(run, sweep_from, args.sweep_interval)))
        for helper in helpers:
            helper.start()

        wait_all(run)
        completed_s = None
        if len(run.ended_at) == len(run.orchestrations):
            completed_s = max(run.ended_at.values()) - run.started
        run.done.set()
        for helper in helpers:
            helper.join(timeout=SWEEP_TIMEOUT)
        log("waiting over; " + (f"all ended in {completed_s:.1f} s" if completed_s is not None
                                else f"{len(run.orchestrations) - len(run.ended_at)}"
                                " orchestrations did not end"))

        grace_end = time.monotonic() + args.grace
        while run_processes(run_id) and time.monotonic() < grace_end:
            time.sleep(0.5)
        left = run_processes(run_id)
        if raw_events is not None:
            raw_events.drain(10.0)
            events = raw_events.counts(run.ids)
        else:
            events = local_event_counts(fleet, run.ids)
        result = figures(run, fleet, events, left, completed_s)
        result["home"] = str(home) if not gcp else None
        result["store_write_lock"] = None if gcp else write_lock(home / "jobfleet.db")
        print(json.dumps(result, indent=2) if args.json else render(result), flush=True)
        code = 0 if result["ok"] else 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if run is not None:
            run.done.set()
        killed = cleanup(run_id, set(run.stopped) if run is not None else set())
        if killed:
            log(f"cleanup: SIGKILLed {killed} processes of this run")
        if raw_events is not None:
            raw_events.close()
        if fleet is not None:
            with contextlib.suppress(Exception):
                fleet.close()
        if gcp:
            from jobfleet.dev import stack

            with contextlib.suppress(Exception):
                stack.down(stack_dir)
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
