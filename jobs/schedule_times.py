"""When schedules fire: times read in a zone, cron expressions, and
recipient-local time (`--local-time`: a wall time or a cron expression read
on each recipient zone's own clock; jobs/schedules.py fires them).

Cron expressions are read on the zone's wall clock (croniter over naive
local times, turned into instants with zoneinfo), by Vixie/ISC cron's rule
for the days the clocks change. An entry at a fixed hour fires once in a
repeated (autumn) hour, the first time, and at a time the clocks skip
(02:30 on a spring-forward day) it fires at the instant they skip over it
(03:30 new time); so does `--at`. An entry with a wildcard hour (`*`,
`*/2`) keeps its interval on the new time: it fires in the repeated hour
again, and not at the times that do not exist.

A local-time schedule's fires are the union of its zones' fires: zones
whose wall clocks give the same instant share one fire, each other instant
is a fire of its own (its own fire row, exactly once like any).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .inputs import InputError

_SECOND = timedelta(seconds=1)
_NEAR = 3 * 3600  # seconds: more than any zone's clock change


class ScheduleError(ValueError):
    """A schedule that cannot be made or changed; the message says why."""


# -- time ---------------------------------------------------------------------------------------

def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"--tz {tz!r} is not a time zone (use an IANA name such as "
                            "Asia/Shanghai or UTC)") from None


def _instant(naive: datetime, z: ZoneInfo) -> float:
    return naive.replace(tzinfo=z).timestamp()  # fold=0: a skipped time maps past the gap


def _exists(naive: datetime, z: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=z)
    back = datetime.fromtimestamp(aware.timestamp(), z).replace(tzinfo=None)
    return back == naive


def parse_at(text: str, tz: str) -> float:
    """An ISO 8601 local time (seconds allowed) read in `tz`, as epoch seconds."""
    z = zone(tz)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"--at {text!r} is not an ISO 8601 time such as "
                            "'2026-12-24 09:00' or '2026-12-24T09:00:30'") from None
    if when.tzinfo is not None:
        return when.timestamp()
    return _instant(when, z)  # a time the clocks skip: the instant they skip over it, as cron


def parse_local_at(text: str) -> str:
    """--at for --local-time: a wall time, not yet an instant (each zone reads
    it on its own clock). A time of day alone means its next coming in each zone."""
    from datetime import time as clock

    try:
        return datetime.fromisoformat(text).replace(tzinfo=None).isoformat(" ")
    except ValueError:
        pass
    try:
        return clock.fromisoformat(text).replace(tzinfo=None).isoformat()
    except ValueError:
        raise ScheduleError(f"--at {text!r} is not an ISO 8601 time such as '09:00' or "
                            "'2026-12-24 09:00'") from None


def cron_fields(expr: str) -> tuple[str, bool]:
    """The expression and whether it has seconds (six fields, seconds first)."""
    parts = expr.split()
    if len(parts) not in (5, 6) or not croniter.is_valid(expr, second_at_beginning=len(parts) == 6):
        raise ScheduleError(f"--cron {expr!r} is not a cron expression of five fields "
                            "(minute hour day month weekday) or six (seconds first)")
    return " ".join(parts), len(parts) == 6


def _iter(expr: str, start: datetime, backwards: bool = False) -> croniter:
    expr, seconds = cron_fields(expr)
    return croniter(expr, start, is_prev=backwards, second_at_beginning=seconds)


def _wildcard_hour(expr: str) -> bool:
    parts = cron_fields(expr)[0].split()
    return "*" in parts[2 if len(parts) == 6 else 1]


def _fires_at(naive: datetime, z: ZoneInfo, wildcard: bool) -> set[float]:
    """The instants a matching wall time fires at. A fixed-hour entry: the
    first of a repeated time, the skipped-over instant of a missing one. A
    wildcard hour: both of a repeated time, none of a missing one."""
    if not wildcard:
        return {_instant(naive, z)}
    if not _exists(naive, z):
        return set()
    return {_instant(naive, z), naive.replace(tzinfo=z, fold=1).timestamp()}


def _jump(z: ZoneInfo, t: float) -> float:
    """How far the zone's clock moves within _NEAR of instant t (0 on most
    days): how far out of order wall times and instants can be there."""
    offsets = [datetime.fromtimestamp(t + d, z).utcoffset() or timedelta() for d in (-_NEAR, 0, _NEAR)]
    return (max(offsets) - min(offsets)).total_seconds()


def next_fire(expr: str, tz: str, after: float) -> float:
    """The first fire of `expr` in `tz` strictly after `after`."""
    z, wildcard = zone(tz), _wildcard_hour(expr)
    # Near a clock change wall times and instants are out of order by the
    # change (01:00 EST comes after 01:40 EDT): look that far around.
    start = datetime.fromtimestamp(after, z).replace(tzinfo=None)
    it = _iter(expr, start - timedelta(seconds=_jump(z, after)))
    best = None
    while True:
        naive = it.get_next(datetime)
        if best is not None and _instant(naive, z) > best + _jump(z, best):
            return best
        for t in _fires_at(naive, z, wildcard):
            if t > after and (best is None or t < best):
                best = t


def last_fire(expr: str, tz: str, upto: float) -> float:
    """The last fire of `expr` in `tz` at or before `upto`."""
    z, wildcard = zone(tz), _wildcard_hour(expr)
    start = datetime.fromtimestamp(upto, z).replace(tzinfo=None)
    it = _iter(expr, start.replace(microsecond=0) + _SECOND + timedelta(seconds=_jump(z, upto)),
               backwards=True)
    best = None
    while True:
        naive = it.get_prev(datetime)
        if best is not None and _instant(naive, z) < best - _jump(z, best):
            return best
        for t in _fires_at(naive, z, wildcard):
            if t <= upto and (best is None or t > best):
                best = t


def local(t: float | None, tz: str) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, zone(tz)).isoformat(" ", "seconds")


def zones_of(path: str, column: str, fallback: str) -> dict[str, Any]:
    """The zones the recipient file names in `column` (read at `add`, so
    each gets its fire), and how many rows fall back to the schedule's zone."""
    from .inputs import read_rows

    zones, fallbacks, seen_column = set(), 0, False
    try:
        for row in read_rows(path):
            seen_column = seen_column or column in row.fields
            name = row.fields.get(column, "")
            if known_zone(name):
                zones.add(name)
            else:
                fallbacks += 1
    except InputError as exc:
        raise ScheduleError(str(exc)) from None
    if not seen_column:
        raise ScheduleError(f"{path}: no {column!r} column for --tz-column")
    return {"zones": sorted(zones | {fallback}), "fallback_rows": fallbacks}


def known_zone(name: str) -> bool:
    try:
        return bool(name) and ZoneInfo(name) is not None
    except (ZoneInfoNotFoundError, ValueError):
        return False


def local_instants(params: dict[str, Any], fallback: str) -> dict[float, list[str]]:
    """A local-time schedule's fire instants: `local_at` on each zone's
    wall clock, with the zones that share each instant."""
    from datetime import time as clock

    text: str = params["local_at"]
    out: dict[float, list[str]] = {}
    for name in params.get("zones", [fallback]):
        z = zone(name)
        if "-" in text:  # a date and a time
            t = _instant(datetime.fromisoformat(text), z)
        else:  # a time of day: its first coming after the schedule was made
            made = datetime.fromtimestamp(params["added_at"], z)
            t = _instant(datetime.combine(made.date(), clock.fromisoformat(text)), z)
            if t <= params["added_at"]:
                t = _instant(datetime.combine(made.date() + timedelta(days=1),
                                              clock.fromisoformat(text)), z)
        out.setdefault(t, []).append(name)
    return out


# -- recipient-local time ------------------------------------------------------------------------

def is_local(params: dict[str, Any]) -> bool:
    """Whether the schedule reads its time on each recipient's clock."""
    return "tz_column" in params


def local_zones(params: dict[str, Any], fallback: str) -> list[str]:
    return params.get("zones", [fallback])


def next_after(params: dict[str, Any], cron: str | None, tz: str, after: float) -> float | None:
    """The schedule's first fire strictly after `after`; None when none is left."""
    if is_local(params):
        if cron is not None:  # the soonest of its zones' next fires
            return min(next_fire(cron, name, after) for name in local_zones(params, tz))
        return min((t for t in local_instants(params, tz) if t > after), default=None)
    return next_fire(cron, tz, after) if cron is not None else None


def latest_fire(params: dict[str, Any], cron: str, tz: str, due: float, upto: float) -> float:
    """The fire a recurring schedule due at `due` makes at `upto`: a zone
    never piles up (only its latest fire at or before `upto` counts, the
    ones before it are skipped), and the zones' latest fires are taken in
    turn, earliest first, so each zone's fire meets the catch-up window on
    its own."""
    lasts = [last_fire(cron, name, upto) for name in local_zones(params, tz)] \
        if is_local(params) else [last_fire(cron, tz, upto)]
    return min((t for t in lasts if t >= due), default=due)


def zones_at(params: dict[str, Any], cron: str | None, tz: str, fire_at: float) -> set[str]:
    """The zones whose clock reads the local time at instant `fire_at`."""
    if cron is not None:
        return {name for name in local_zones(params, tz) if last_fire(cron, name, fire_at) == fire_at}
    return set(local_instants(params, tz).get(fire_at, []))
