"""Schedules: what runs when, declared in code or created at run time.

A schedule names a job, a cron in a time zone, the parameter sets (fixed, or a params
provider called at fire time) and the kick-off options. Every fire is keyed by
(schedule, scheduled time) in the store (`Fire`), so a duplicate delivery of the same
time creates nothing new. The rules here are pure: the firing itself is
`jobfleet.scheduling`, the timing is Cloud Scheduler or the local scheduler.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from jobfleet.core import params as param_sets
from jobfleet.core.cron import Cron, check_cron
from jobfleet.core.models import JsonObject, RunOptions
from jobfleet.core.options import check_options
from jobfleet.core.registry import DEFAULT_BACKOFF, declared_in, get_job
from jobfleet.errors import InvalidOption, InvalidParams, InvalidSchedule, JobfleetError

SCHEDULE_TAG = "schedule"  # every fire's orchestration carries schedule=<name>
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # fits a Cloud Scheduler job id
MAX_FIXED_PARAMS = 10_000  # a longer list belongs in a params provider
MISSED_AFTER = 60.0  # seconds late past which a fire counts as missed (catch-up applies)
MAX_CATCH_UP = 100  # fires at most, with catch_up="all"


class Overlap(StrEnum):
    """What a fire does while the previous run of its schedule is unfinished."""

    SKIP = "skip"  # start nothing; the fire is recorded as skipped
    ALLOW = "allow"  # start anyway
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the previous run, then start


class CatchUp(StrEnum):
    """What a scheduler that was down does with the fires it missed."""

    LATEST = "latest"  # run the latest missed fire once
    ALL = "all"  # run every missed fire (at most MAX_CATCH_UP)
    NONE = "none"  # run none of them


class Origin(StrEnum):
    CODE = "code"  # declared in a jobs module; `schedules sync` owns it
    RUNTIME = "runtime"  # created from the SDK, the CLI or the API


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    job_name: str
    cron: str
    timezone: str = "UTC"
    params: list[Any] | None = None  # fixed parameter sets
    params_provider: str | None = None  # or the name of a registered provider
    parallelism: int | None = None
    retries: int | None = None
    timeout: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    paused: bool = False
    description: str = ""
    origin: Origin = Origin.RUNTIME
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def timing(self) -> Cron:
        return _timing(self.cron, self.timezone)

    def to_json(self) -> JsonObject:
        data = asdict(self)
        data["overlap"], data["catch_up"] = self.overlap.value, self.catch_up.value
        data["origin"] = self.origin.value
        return data

    @classmethod
    def from_json(cls, data: JsonObject) -> Schedule:
        return cls(
            name=data["name"], job_name=data["job_name"], cron=data["cron"],
            timezone=data.get("timezone") or "UTC", params=data.get("params"),
            params_provider=data.get("params_provider"), parallelism=data.get("parallelism"),
            retries=data.get("retries"), timeout=data.get("timeout"),
            tags=dict(data.get("tags") or {}), overlap=Overlap(data.get("overlap", "skip")),
            catch_up=CatchUp(data.get("catch_up", "latest")), paused=bool(data.get("paused")),
            description=data.get("description") or "",
            origin=Origin(data.get("origin", "runtime")),
            created_at=float(data.get("created_at") or 0.0),
            updated_at=float(data.get("updated_at") or 0.0),
        )

    def same_definition(self, other: Schedule) -> bool:
        """Equal in everything a deploy changes (not the times, not paused)."""
        keep = {"created_at": 0.0, "updated_at": 0.0, "paused": False}
        return replace(self, **keep) == replace(other, **keep)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _timing(expression: str, timezone: str) -> Cron:
    """Checked once per distinct cron and zone: a scheduler asks for it at every fire."""
    return Cron(expression, timezone)


class FireState(StrEnum):
    FIRING = "firing"  # claimed by a delivery that is starting the run
    STARTED = "started"  # the run's orchestration exists
    SKIPPED = "skipped"  # the overlap policy started nothing
    FAILED = "failed"  # the params provider or the kick-off failed; a retry may fire it


class Trigger(StrEnum):
    CRON = "cron"  # the timer, on time
    CATCH_UP = "catch_up"  # a scheduler making up for a missed fire
    MANUAL = "manual"  # `trigger`: a run now, outside the cron


@dataclass(frozen=True, slots=True)
class Fire:
    """One scheduled time of one schedule, and what came of it."""

    schedule: str
    scheduled_at: float
    trigger: Trigger
    state: FireState
    attempt: int  # deliveries that claimed it; a finish must name the attempt it holds
    fired_at: float
    hold_until: float = 0.0  # a FIRING claim lapses then (its holder is presumed dead)
    orchestration_id: str | None = None
    reason: str = ""

    def to_json(self) -> JsonObject:
        data = asdict(self)
        data["trigger"], data["state"] = self.trigger.value, self.state.value
        return data

    @classmethod
    def from_json(cls, data: JsonObject) -> Fire:
        return cls(
            schedule=data["schedule"], scheduled_at=float(data["scheduled_at"]),
            trigger=Trigger(data["trigger"]), state=FireState(data["state"]),
            attempt=int(data["attempt"]), fired_at=float(data["fired_at"]),
            hold_until=float(data.get("hold_until") or 0.0),
            orchestration_id=data.get("orchestration_id"), reason=data.get("reason") or "",
        )


def may_claim(existing: Fire | None, now: float) -> bool:
    """Whether a delivery may (re)claim a fire: the one rule both stores apply inside
    their conditional write. A fire is claimed once; it is claimed again only when it
    failed, or when its claim lapsed with its holder presumed dead."""
    if existing is None:
        return True
    if existing.state is FireState.FAILED:
        return True
    return existing.state is FireState.FIRING and existing.hold_until <= now


def claimed_fire(fire: Fire, existing: Fire | None) -> Fire:
    """The fire as a claim that `may_claim` allowed writes it: firing, one attempt
    past the one before."""
    return replace(fire, state=FireState.FIRING,
                   attempt=1 if existing is None else existing.attempt + 1)


def may_finish(existing: Fire | None, fire: Fire) -> bool:
    """Whether `fire`'s outcome may be recorded: only while the fire is still held by
    the claim of `fire.attempt` (a claimant replaced after its hold lapsed records
    nothing)."""
    return (existing is not None and existing.state is FireState.FIRING
            and existing.attempt == fire.attempt)


# Parameter sets computed at fire time, by name.
ParamsProvider = Callable[[], Iterable[Any]]
_PROVIDERS: dict[str, ParamsProvider] = {}
_DECLARED: dict[str, Schedule] = {}


def params_provider(name: str) -> Callable[[ParamsProvider], ParamsProvider]:
    """Register a function returning parameter sets, for schedules to name at run time."""
    if not isinstance(name, str) or not name:
        raise InvalidSchedule("a params provider needs a non-empty string name")

    def register(fn: ParamsProvider) -> ParamsProvider:
        if not callable(fn):
            raise TypeError("@params_provider decorates a function")
        _PROVIDERS[name] = fn
        return fn

    return register


def get_provider(name: str) -> ParamsProvider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS)) or "none registered"
        raise InvalidSchedule(
            f"unknown params provider {name!r}; known providers: {known}. Import the module "
            "that declares it with JOBFLEET_JOBS or --jobs-module."
        ) from None


def schedule(
    name: str,
    *,
    job: str,
    cron: str,
    timezone: str = "UTC",
    params: list[Any] | ParamsProvider | None = None,
    params_provider: str | None = None,
    parallelism: int | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    tags: dict[str, str] | None = None,
    overlap: Overlap | str = Overlap.SKIP,
    catch_up: CatchUp | str = CatchUp.LATEST,
    description: str = "",
) -> Schedule:
    """Declare a schedule in a jobs module (after its job). `params` is a list of
    parameter sets, or a function called at every fire that returns them: "every
    customer" is computed when the schedule fires, not when it was deployed.

    `jobfleet schedules sync` makes the deployed schedules match these declarations.
    """
    provider = params_provider
    fixed: list[Any] | None = None
    if callable(params):
        provider = _register_declared_provider(params)
    elif params is not None:
        fixed = list(params)
    declared = build(
        name=name, job_name=job, cron=cron, timezone=timezone, params=fixed,
        params_provider=provider, parallelism=parallelism, retries=retries,
        timeout=timeout, tags=tags or {}, overlap=overlap, catch_up=catch_up,
        description=description, origin=Origin.CODE,
    )
    _DECLARED[name] = declared
    return declared


def _register_declared_provider(fn: ParamsProvider) -> str:
    """Register a provider passed to `schedule(params=fn)` under the name of where it is
    declared (`module:function`, or `file.py:function` for a script), refusing a second,
    different function of the same name."""
    source, _ = declared_in(fn)
    name = f"{source or fn.__module__}:{getattr(fn, '__qualname__', repr(fn))}"
    known = _PROVIDERS.get(name)
    if known is not None and known is not fn and _where(known) != _where(fn):
        raise InvalidSchedule(f"two different params providers are named {name!r}")
    _PROVIDERS[name] = fn
    return name


def _where(fn: Any) -> tuple[str, int]:
    code = getattr(fn, "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code else ("", id(fn))


def declared_schedules() -> list[Schedule]:
    return [_DECLARED[n] for n in sorted(_DECLARED)]


def build(**fields: Any) -> Schedule:
    """A checked Schedule from loose fields (the SDK's, the CLI's, the API's)."""
    try:
        overlap = Overlap(fields.pop("overlap", Overlap.SKIP))
    except ValueError:
        raise InvalidSchedule(
            f"overlap must be one of {', '.join(o.value for o in Overlap)}"
        ) from None
    try:
        catch_up = CatchUp(fields.pop("catch_up", CatchUp.LATEST))
    except ValueError:
        raise InvalidSchedule(
            f"catch_up must be one of {', '.join(c.value for c in CatchUp)}"
        ) from None
    made = Schedule(overlap=overlap, catch_up=catch_up, **fields)
    check_schedule(made)
    return made


def check_schedule(s: Schedule) -> None:
    """InvalidSchedule naming the first thing wrong, before anything is created."""
    if not isinstance(s.name, str) or not NAME.fullmatch(s.name):
        raise InvalidSchedule(
            f"schedule name {s.name!r} must be 1-100 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    check_cron(s.cron, s.timezone)
    try:
        definition = get_job(s.job_name)
    except JobfleetError as exc:
        raise InvalidSchedule(f"schedule {s.name!r}: {exc}") from None
    if (s.params is None) == (s.params_provider is None):
        raise InvalidSchedule(
            f"schedule {s.name!r} needs either params (a list of parameter sets) or a "
            "params provider, not both and not neither"
        )
    if s.params is not None:
        if not isinstance(s.params, list) or not s.params:
            raise InvalidSchedule(f"schedule {s.name!r}: params must be a non-empty list")
        if len(s.params) > MAX_FIXED_PARAMS:
            raise InvalidSchedule(
                f"schedule {s.name!r} has {len(s.params)} fixed parameter sets; more than "
                f"{MAX_FIXED_PARAMS} belong in a params provider"
            )
        try:
            for index, one in enumerate(s.params):
                param_sets.check(definition, index, one)
        except InvalidParams as exc:
            raise InvalidSchedule(f"schedule {s.name!r}: {exc}") from None
    if s.params_provider is not None:
        get_provider(s.params_provider)
    if SCHEDULE_TAG in s.tags:
        raise InvalidSchedule(
            f"tag {SCHEDULE_TAG!r} is set by the schedule itself (schedule={s.name})"
        )
    options = RunOptions(
        retries=0 if s.retries is None else s.retries, backoff=DEFAULT_BACKOFF,
        timeout=s.timeout, parallelism=1 if s.parallelism is None else s.parallelism,
    )
    try:
        check_options(options, s.tags)
    except InvalidOption as exc:
        raise InvalidSchedule(f"schedule {s.name!r}: {exc}") from None


def parameter_sets(s: Schedule) -> Iterable[Any]:
    """What a fire kicks off: the fixed list, or what the provider returns now."""
    if s.params is not None:
        return s.params
    assert s.params_provider is not None
    return get_provider(s.params_provider)()


def due_fires(
    s: Schedule, *, after: float, now: float, missed_after: float = MISSED_AFTER
) -> list[tuple[float, Trigger]]:
    """The fires a scheduler owes for (after, now]: on time ones as CRON, and the missed
    ones (late by more than `missed_after`) as its catch-up policy says."""
    times = s.timing.between(after, now)
    on_time = [(t, Trigger.CRON) for t in times if now - t <= missed_after]
    missed = [t for t in times if now - t > missed_after]
    if not missed or s.catch_up is CatchUp.NONE:
        caught: list[tuple[float, Trigger]] = []
    elif s.catch_up is CatchUp.LATEST:
        caught = [] if on_time else [(missed[-1], Trigger.CATCH_UP)]
    else:
        caught = [(t, Trigger.CATCH_UP) for t in missed[-MAX_CATCH_UP:]]
    return caught + on_time
