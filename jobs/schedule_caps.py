"""`schedule add` refuses a broadcast schedule that would exceed the vendor's
caps over hours and days (RongCloud: 2 broadcasts an hour, 3 a day).

A broadcast fire is one vendor call, so fires are counted in the same fixed
UTC windows the workers' limiter counts calls in (workers/window_caps.py):
the new schedule's fires over the next PERIOD, together with the fires the
app's other active broadcast schedules make in that period (their one-off
times and cron expressions; a handful of rows, so cheap to read). Sends are
not checked: a fire of a send is many calls and no vendor documents a cap on
them. What this cannot see (a broadcast run by hand, a schedule added later
by another command racing this one) the limiter still holds at fire time.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterator, Mapping

from sqlalchemy import select
from sqlalchemy.engine import Engine

from imshift.models.tables import Schedule, ScheduleStatus
from imshift.vendors.vocabulary import PER, WINDOWS, Operation

from .target import Target

PERIOD = 7 * 86400.0  # seconds of fires counted: a week covers every weekday of a cron
schedules = Schedule.__table__

Fires = Callable[[str, str, float], float]  # schedules.next_fire: (cron, tz, after) -> the next


def _times(at: float | None, cron: str | None, tz: str, start: float, end: float,
           next_fire: Fires) -> Iterator[float]:
    if at is not None:
        if start <= at < end:
            yield at
        return
    if cron is None:  # a schedule has one of the two (schedules.add)
        return
    t = next_fire(cron, tz, start - 1e-6)
    while t < end:
        yield t
        t = next_fire(cron, tz, t)


def _first_over(times: Iterator[float], caps: Mapping[str, int]) -> tuple[str, float] | None:
    """The first (window name, window start) where the fires exceed a cap."""
    counts: Counter = Counter()
    for t in times:  # in time order
        for per, calls in caps.items():
            window = (per, int(t // WINDOWS[per]))
            counts[window] += 1
            if counts[window] > calls:
                return per, window[1] * WINDOWS[per]
    return None


def check(engine: Engine, target: Target, operation: Operation, *, at: float | None,
          cron: str | None, tz: str, now: float, next_fire: Fires) -> str | None:
    """Why the schedule would exceed a cap (one line naming the cap and the
    vendor), or None when it fits."""
    caps = target.caps.get(operation.value)
    if operation is not Operation.BROADCAST or not caps:
        return None
    start = now if at is None else min(now, at)
    end = start + PERIOD
    who = target.who or f"{target.app} ({target.vendor})"

    def refusal(per: str, window: float, others: str = "") -> str:
        return (f"{who} allows {caps[per]} broadcast{'s' if caps[per] != 1 else ''} {PER[per]} "
                f"and this schedule{others} would make more in the {per} from "
                f"{datetime.fromtimestamp(window, timezone.utc):%Y-%m-%d %H:%M} UTC: "
                "choose a longer period or another time")

    over = _first_over(_times(at, cron, tz, start, end, next_fire), caps)
    if over is not None:
        return refusal(*over)
    with engine.connect() as conn:
        rows = list(conn.execute(select(schedules.c.id, schedules.c.at, schedules.c.cron,
                                        schedules.c.tz).where(
            schedules.c.app == target.app, schedules.c.command == "broadcast",
            schedules.c.status == ScheduleStatus.ACTIVE.value)))
    if not rows:
        return None
    times = list(_times(at, cron, tz, start, end, next_fire))
    for row in rows:
        times += _times(row.at, row.cron, row.tz, start, end, next_fire)
        if len(times) > 100_000:  # a second-level cron: counted far enough
            break
    over = _first_over(iter(sorted(times)), caps)
    if over is not None:
        ids = ", ".join(str(r.id) for r in rows)
        return refusal(*over, others=f" with the app's other broadcast schedules ({ids})")
    return None
