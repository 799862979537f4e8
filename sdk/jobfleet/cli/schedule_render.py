"""How the schedule commands show things: aligned text for people, or stable JSON.

Times in JSON are Unix seconds, with an RFC 3339 UTC twin where a person reads them
(`scheduled_time`, `utc`) and the schedule's wall clock (`local`) for fire times.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from jobfleet.cli.render import _when
from jobfleet.core.cron import iso
from jobfleet.core.models import JsonObject
from jobfleet.core.schedules import Fire, Schedule
from jobfleet.scheduling import SyncPlan


def _console() -> Console:
    # Never cut a value, whatever the terminal's width: output is for reading and grep.
    return Console(width=10_000, highlight=False, soft_wrap=True)


def schedule_json(s: Schedule) -> JsonObject:
    data = s.to_json()
    upcoming = s.timing.next_times(time.time(), 1)
    data["next_fire_at"] = upcoming[0] if upcoming and not s.paused else None
    return data


def fire_time_json(s: Schedule, at: float) -> JsonObject:
    local = datetime.fromtimestamp(at, ZoneInfo(s.timezone)).isoformat()
    return {"at": at, "utc": iso(at), "local": local}


def fire_json(fire: Fire, statuses: dict[str, str]) -> JsonObject:
    data = fire.to_json()
    data["scheduled_time"] = iso(fire.scheduled_at)
    data["run_status"] = statuses.get(fire.orchestration_id or "")
    return data


def schedule(s: Schedule, as_json: bool) -> None:
    if as_json:
        print(json.dumps(schedule_json(s)))
        return
    for label, value in _definition(s):
        print(f"{label:<13}{value}")


def _definition(s: Schedule) -> list[tuple[str, str]]:
    params = (f"provider {s.params_provider} (called at every fire)" if s.params_provider
              else f"{len(s.params or [])} fixed parameter set(s)")
    options = ", ".join(f"{k} {v}" for k, v in (("parallelism", s.parallelism),
                                                 ("retries", s.retries),
                                                 ("timeout", s.timeout)) if v is not None)
    rows = [
        ("schedule", s.name + ("  (paused)" if s.paused else "")),
        ("job", s.job_name),
        ("cron", f"{s.cron}  in {s.timezone}"),
        ("params", params),
        ("overlap", s.overlap.value),
        ("catch-up", s.catch_up.value),
        ("origin", "declared in code" if s.origin.value == "code" else "created at run time"),
    ]
    if options:
        rows.append(("options", options))
    if s.tags:
        rows.append(("tags", " ".join(f"{k}={v}" for k, v in s.tags.items())))
    if s.description:
        rows.append(("description", s.description))
    rows.append(("created", f"{_when(s.created_at)}   updated {_when(s.updated_at)}"))
    return rows


def schedule_list(schedules: list[Schedule], as_json: bool) -> None:
    if as_json:
        print(json.dumps([schedule_json(s) for s in schedules]))
        return
    if not schedules:
        print("no schedules yet: `jobfleet schedule create` or `jobfleet schedules sync`")
        return
    table = Table("NAME", "JOB", "CRON", "ZONE", "STATE", "NEXT (UTC)", "ORIGIN",
                  box=None, pad_edge=False)
    for s in schedules:
        upcoming = schedule_json(s)["next_fire_at"]
        table.add_row(s.name, s.job_name, s.cron, s.timezone,
                      "paused" if s.paused else "active", _when(upcoming), s.origin.value)
    _console().print(table)


def fire_times(s: Schedule, times: list[float], as_json: bool) -> None:
    if as_json:
        print(json.dumps([fire_time_json(s, t) for t in times]))
        return
    for t in times:
        shown = fire_time_json(s, t)
        print(f"{shown['local']}  ({shown['utc']})")


def fires(history: list[Fire], statuses: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps([fire_json(f, statuses) for f in history]))
        return
    if not history:
        print("no fires yet")
        return
    _console().print(_fire_table(history, statuses))


def _fire_table(history: list[Fire], statuses: dict[str, str]) -> Table:
    table = Table("SCHEDULED (UTC)", "TRIGGER", "FIRE", "RUN", "RUN STATUS", "NOTE",
                  box=None, pad_edge=False)
    for f in history:
        table.add_row(iso(f.scheduled_at), f.trigger.value, f.state.value,
                      f.orchestration_id or "-", statuses.get(f.orchestration_id or "", "-"),
                      f.reason)
    return table


def show(s: Schedule, upcoming: list[float], history: list[Fire],
         statuses: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "schedule": schedule_json(s),
            "next": [fire_time_json(s, t) for t in upcoming],
            "fires": [fire_json(f, statuses) for f in history],
        }))
        return
    schedule(s, as_json=False)
    print(f"\nnext fires ({s.timezone}, then UTC){'; paused' if s.paused else ''}:")
    fire_times(s, upcoming, as_json=False)
    print("\nrecent fires:")
    fires(history, statuses, as_json=False)


def triggered(fire: Fire, as_json: bool) -> None:
    if as_json:
        print(json.dumps(fire_json(fire, {})))
        return
    if fire.orchestration_id:
        print(fire.orchestration_id)
    else:
        print(f"jobfleet: schedule {fire.schedule} started nothing: {fire.reason}",
              file=sys.stderr)


def deleted(name: str, as_json: bool) -> None:
    print(json.dumps({"deleted": name}) if as_json else f"deleted schedule {name}")


def plan(p: SyncPlan, *, dry_run: bool, as_json: bool) -> None:
    names: dict[str, list[str]] = {
        "create": [s.name for s in p.create], "update": [s.name for s in p.update],
        "delete": list(p.delete), "unchanged": list(p.unchanged), "kept": list(p.kept),
    }
    if as_json:
        out: dict[str, Any] = {**names, "dry_run": dry_run}
        print(json.dumps(out))
        return
    print("plan" + (" (dry run: nothing changes)" if dry_run else "") + ":")
    labels = {"create": "create", "update": "update", "delete": "delete",
              "unchanged": "unchanged", "kept": "kept (declared no more; --prune deletes it)"}
    if not any(names.values()):
        print("  nothing declared and nothing deployed from code")
    for action, listed in names.items():
        for name in listed:
            print(f"  {labels[action]:<10} {name}")
