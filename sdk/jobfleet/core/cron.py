"""When a schedule fires: a unix-cron expression read in an IANA time zone.

croniter walks the wall clock of the zone; this module turns each wall-clock time into
the instant it names, so that daylight-saving changes neither skip nor double a fire:

- a wall-clock time that does not exist (the hour skipped in spring) fires at the
  instant the clock jumps past it: 02:30 on the spring-forward night fires at 03:30
  local time, once;
- a wall-clock time that happens twice (the hour repeated in autumn) fires at its
  first occurrence only, unless the cron's hour field is a wildcard (`0 * * * *`
  means every hour, and the repeated hour is an hour too).

Instants are seconds since the epoch (UTC), like every other time jobfleet stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from jobfleet.errors import InvalidSchedule

MAX_LOOKAHEAD = 5 * 366  # days: a cron that never fires in five years names no time


@dataclass(frozen=True, slots=True)
class Cron:
    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        check_cron(self.expression, self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def times(self, after: float) -> Iterator[float]:
        """The instants the cron names strictly after `after`, in order; endless."""
        zone = self.zone
        every_hour = "*" in self.expression.split()[1]
        start = datetime.fromtimestamp(after, zone).replace(tzinfo=None, fold=0)
        # Start an hour early: a repeated hour's second occurrence is named by wall-clock
        # times that are before `after`'s own wall-clock reading.
        walls = croniter(self.expression, start - timedelta(hours=1))
        last = after
        limit = after + MAX_LOOKAHEAD * 86400
        while True:
            try:
                wall: datetime = walls.get_next(datetime)
            except CroniterBadDateError:
                return
            for instant in _instants(wall, zone, every_hour):
                if instant > limit:
                    return
                if instant > last:
                    last = instant
                    yield instant

    def next_times(self, after: float, count: int) -> list[float]:
        out: list[float] = []
        for instant in self.times(after):
            if len(out) == count:
                break
            out.append(instant)
        return out

    def between(self, after: float, until: float) -> list[float]:
        """The instants in (after, until]."""
        out: list[float] = []
        for instant in self.times(after):
            if instant > until:
                break
            out.append(instant)
        return out


def _instants(wall: datetime, zone: ZoneInfo, every_hour: bool) -> list[float]:
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.timestamp()]
    # The offsets differ: the wall time is repeated or skipped. A skipped one read with
    # fold=0 (the offset before the change) is the instant just past the jump.
    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != wall:  # skipped in spring
        return [first.timestamp()]
    return [first.timestamp(), second.timestamp()] if every_hour else [first.timestamp()]


def check_cron(expression: str, timezone: str) -> None:
    """InvalidSchedule naming what is wrong with the expression or the zone."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise InvalidSchedule(
            f"cron {expression!r} must have five fields (minute hour day-of-month month "
            "day-of-week), as Cloud Scheduler takes it"
        )
    if not croniter.is_valid(expression):
        raise InvalidSchedule(f"cron {expression!r} is not a valid unix-cron expression")
    if not isinstance(timezone, str) or not timezone:
        raise InvalidSchedule(f"time zone {timezone!r} must be an IANA name such as Europe/Paris")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a path
        raise InvalidSchedule(
            f"unknown time zone {timezone!r}; give an IANA name such as UTC or Europe/Paris"
        ) from None
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidSchedule(f"cron {expression!r} names no date that exists") from None


def iso(instant: float) -> str:
    """RFC 3339 in UTC, as Cloud Scheduler's X-CloudScheduler-ScheduleTime carries it."""
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """An RFC 3339 time (Z or an offset) as seconds since the epoch; ValueError if not."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset")
    return moment.timestamp()
