"""Schedules: a send or broadcast to run at a time or on a cron expression,
and the firing of the ones that are due, exactly once.

A schedule row holds the command's parameters (app, sender, the message,
the recipient file's path: never a secret), its zone and its catch-up
window; `next_at` is its next fire time. Firing a due schedule plans its job
first (the input is read at fire time), then in ONE transaction inserts the
fire row, unique per (schedule, fire time), and moves `next_at` on with a
compare-and-set. Of N schedulers racing, one commits; the others roll back
and discard the job they planned. A scheduler killed before that commit
leaves no fire (only a planned job nobody starts: `sweep_orphans` removes
it); killed after, a whole fire whose job `recover` starts.

Times: cron expressions are read on the zone's wall clock (croniter over
naive local times, turned into instants with zoneinfo, fold=0). A time the
clocks skip (02:30 on a spring-forward day) fires at the instant they skip
over it (03:30 new time); a time the clocks repeat (autumn) fires once, the
first time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from imshift.models.tables import Job, JobStatus, Schedule, ScheduleFire, ScheduleStatus
from imshift.vendors.vocabulary import Message, Operation, Unsupported

from . import kinds, schedule_caps
from .inputs import InputError
from .plan import discard
from .target import Target

schedules = Schedule.__table__
fires = ScheduleFire.__table__
jobs = Job.__table__

CATCH_UP = 900.0  # seconds: the default catch-up window
COMMANDS = {"send": Operation.SEND, "send_group": Operation.SEND_GROUP,
            "broadcast": Operation.BROADCAST}
ORPHAN_AFTER = 3600.0  # a planned job with no fire this old is a killed scheduler's (planning is minutes)
ACTIVE = ScheduleStatus.ACTIVE.value
MIN_WAIT = 0.01  # seconds: the shortest sleep between a scheduler's looks
_SECOND = timedelta(seconds=1)


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
    if not _exists(when, z):
        raise ScheduleError(f"--at {text!r} does not exist in {tz}: the clocks skip it "
                            "(daylight saving); choose another time")
    return _instant(when, z)


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


def next_fire(expr: str, tz: str, after: float) -> float:
    """The first fire of `expr` in `tz` strictly after `after`."""
    z = zone(tz)
    it = _iter(expr, datetime.fromtimestamp(after, z).replace(tzinfo=None, fold=0))
    while True:
        t = _instant(it.get_next(datetime), z)
        if t > after:  # wall times the autumn repeat maps before `after` are skipped
            return t


def last_fire(expr: str, tz: str, upto: float) -> float:
    """The last fire of `expr` in `tz` at or before `upto`."""
    z = zone(tz)
    start = datetime.fromtimestamp(upto, z).replace(tzinfo=None)
    it = _iter(expr, start.replace(microsecond=0) + _SECOND, backwards=True)
    while True:
        t = _instant(it.get_prev(datetime), z)
        if t <= upto:
            return t


def local(t: float | None, tz: str) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, zone(tz)).isoformat(" ", "seconds")


# -- making and changing schedules --------------------------------------------------------------

def add(engine: Engine, target: Target, *, command: str, params: dict[str, Any],
        at: float | None = None, cron: str | None = None, tz: str = "UTC",
        catch_up: float = CATCH_UP, now: float | None = None) -> int:
    """Store a schedule; everything that can be checked now is: the zone, the
    time or expression, the vendor's support and caps, the recipient file."""
    now = time.time() if now is None else now
    zone(tz)
    if params.get("local_at"):  # a fire per recipient zone: `at` is the first of them
        if cron is not None or not params.get("to"):
            raise ScheduleError("--local-time goes with --at and --to (recipients with a zone column)")
        params = {**params, **_zones_of(params["to"], params["tz_column"], tz), "added_at": now}
        at = min(local_instants(params, tz))
    if (at is None) == (cron is None):
        raise ScheduleError("give exactly one of --at or --cron")
    if catch_up < 0:
        raise ScheduleError("--catch-up must be 0 or more seconds")
    try:
        target.require(COMMANDS[command])
    except Unsupported as exc:
        raise ScheduleError(f"{exc}; see `imshift vendors`") from None
    for key in ("to", "to_groups"):
        if params.get(key):
            path = Path(params[key]).resolve()
            if not path.is_file():
                raise ScheduleError(f"{params[key]}: no such file (it is read when the schedule fires)")
            params = {**params, key: str(path)}
    if at is not None and now - at > catch_up:
        raise ScheduleError(f"--at {local(at, tz)} is already past")
    if cron is not None:
        cron = cron_fields(cron)[0]
    over = schedule_caps.check(engine, target, COMMANDS[command], at=at, cron=cron, tz=tz,
                               now=now, next_fire=next_fire)
    if over:
        raise ScheduleError(over)
    next_at = at if at is not None else next_fire(cron, tz, now)
    with engine.begin() as conn:
        return conn.execute(insert(schedules).values(
            command=command, app=target.app, params=params, at=at, cron=cron, tz=tz,
            catch_up=catch_up, status=ACTIVE, next_at=next_at, created_at=now)
            .returning(schedules.c.id)).scalar_one()


def _zones_of(path: str, column: str, fallback: str) -> dict[str, Any]:
    """The zones the recipient file names in `column` (read at `add`, so
    each gets its fire), and how many rows fall back to the schedule's zone."""
    from .inputs import read_rows

    zones, fallbacks, seen_column = set(), 0, False
    try:
        for row in read_rows(path):
            seen_column = seen_column or column in row.fields
            name = row.fields.get(column, "")
            if _known_zone(name):
                zones.add(name)
            else:
                fallbacks += 1
    except InputError as exc:
        raise ScheduleError(str(exc)) from None
    if not seen_column:
        raise ScheduleError(f"{path}: no {column!r} column for --tz-column")
    return {"zones": sorted(zones | {fallback}), "fallback_rows": fallbacks}


def _known_zone(name: str) -> bool:
    try:
        return bool(name) and ZoneInfo(name) is not None
    except (ZoneInfoNotFoundError, ValueError):
        return False


def local_instants(params: dict[str, Any], fallback: str) -> dict[float, list[str]]:
    """A local-time schedule's fire instants: `local_at` on each zone's
    wall clock, with the zones that share each instant."""
    from datetime import time as clock

    text, out = params["local_at"], {}
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


def get(engine: Engine, schedule_id: int):
    with engine.connect() as conn:
        row = conn.execute(select(schedules).where(schedules.c.id == schedule_id)).first()
    if row is None:
        raise ScheduleError(f"no schedule {schedule_id}")
    return row


def listed(engine: Engine, include_removed: bool = False) -> list:
    query = select(schedules).order_by(schedules.c.id)
    if not include_removed:
        query = query.where(schedules.c.status != ScheduleStatus.REMOVED.value)
    with engine.connect() as conn:
        return list(conn.execute(query))


def history(engine: Engine, schedule_id: int) -> list:
    """Each fire of the schedule, oldest first, with its job's status."""
    get(engine, schedule_id)
    with engine.connect() as conn:
        return list(conn.execute(
            select(fires, jobs.c.status.label("job_status"))
            .select_from(fires.outerjoin(jobs, jobs.c.id == fires.c.job_id))
            .where(fires.c.schedule_id == schedule_id).order_by(fires.c.fire_at)))


def _change(engine: Engine, schedule_id: int, allowed: tuple[str, ...], status: str,
            **values: Any) -> None:
    with engine.begin() as conn:
        changed = conn.execute(update(schedules).where(
            schedules.c.id == schedule_id, schedules.c.status.in_(allowed))
            .values(status=status, **values)).rowcount
    if changed != 1:
        row = get(engine, schedule_id)
        raise ScheduleError(f"schedule {schedule_id} is {row.status}; cannot make it {status} "
                            f"(only from {', '.join(allowed)})")


def pause(engine: Engine, schedule_id: int) -> None:
    """No fires until resumed (a job already fired runs on: `imshift pause JOB`)."""
    _change(engine, schedule_id, (ACTIVE,), ScheduleStatus.PAUSED.value)


def resume(engine: Engine, schedule_id: int, now: float | None = None) -> None:
    """Fires again from now: a recurring schedule's fires due while it was
    paused are not made up; a one-off keeps its time (missed if too late)."""
    now = time.time() if now is None else now
    row = get(engine, schedule_id)
    values = {"next_at": next_fire(row.cron, row.tz, now)} if row.cron else {}
    _change(engine, schedule_id, (ScheduleStatus.PAUSED.value,), ACTIVE, **values)


def remove(engine: Engine, schedule_id: int) -> None:
    """No more fires; the schedule and its history are kept."""
    _change(engine, schedule_id, (ACTIVE, ScheduleStatus.PAUSED.value, ScheduleStatus.DONE.value),
            ScheduleStatus.REMOVED.value, next_at=None)


# -- firing -------------------------------------------------------------------------------------

@dataclass
class Firing:
    """What firing needs from its caller: the database, each app's Target,
    how a job is started, and the chunk size of its jobs."""

    engine: Engine
    target: Callable[[str], Target]
    start: Callable[[int], None]
    chunk_size: int = 1000


@dataclass(frozen=True)
class Fired:
    schedule_id: int
    fire_at: float
    state: str  # "fired", "missed", "failed", or "elsewhere" (another scheduler had it)
    job_id: int | None = None
    note: str | None = None


def plan_job(firing: Firing, row, fire_at: float) -> int:
    """The job of one fire of schedule `row`, planned whole (not started)."""
    p = row.params
    message = Message(**p["message"])
    tag = {"schedule_id": row.id, "fire_at": fire_at}
    target = firing.target(row.app)
    if row.command == "broadcast":
        planned = kinds.plan_broadcast(firing.engine, target, sender=p.get("sender", ""),
                                       message=message, chunk_size=firing.chunk_size, extra=tag)
    elif row.command == "send_group":
        planned = kinds.plan_group_send(firing.engine, target, p["to_groups"], sender=p["sender"],
                                        message=message, chunk_size=firing.chunk_size, extra=tag)
    elif p.get("local_at"):  # this fire's recipients: those whose zone's local time it is
        zones = set(local_instants(p, row.tz).get(fire_at, []))
        column = p["tz_column"]

        def here(r) -> bool:
            name = r.fields.get(column, "")
            return (name if _known_zone(name) else row.tz) in zones

        planned = kinds.plan_send(firing.engine, target, p["to"], sender=p["sender"],
                                  message=message, chunk_size=firing.chunk_size,
                                  extra={**tag, "zones": sorted(zones)}, keep=here)
    else:
        planned = kinds.plan_send(firing.engine, target, p["to"], sender=p["sender"],
                                  message=message, chunk_size=firing.chunk_size, extra=tag)
    return planned.report.job_id


def _following(row, fire_at: float) -> float | None:
    if row.params.get("local_at"):  # the next zone's turn
        return min((t for t in local_instants(row.params, row.tz) if t > fire_at), default=None)
    return next_fire(row.cron, row.tz, fire_at) if row.cron else None


def _commit(firing: Firing, row, rows: list[dict[str, Any]], following: float | None) -> bool:
    """Insert the fire rows and move the schedule on, in one transaction;
    False when another scheduler did first (nothing is written)."""
    values: dict[str, Any] = {"next_at": following}
    if following is None:
        values["status"] = ScheduleStatus.DONE.value
    try:
        with firing.engine.begin() as conn:
            moved = conn.execute(update(schedules).where(
                schedules.c.id == row.id, schedules.c.status == ACTIVE,
                schedules.c.next_at == row.next_at).values(**values)).rowcount
            if moved != 1:
                raise _Lost()
            conn.execute(insert(fires), [{"schedule_id": row.id, "created_at": time.time(),
                                          "job_id": None, "note": None, **r} for r in rows])
    except (_Lost, IntegrityError):
        return False
    return True


class _Lost(Exception):
    pass


def fire_one(firing: Firing, row, now: float) -> Fired:
    """Fire (or record as missed) schedule `row`, due at row.next_at."""
    due = row.next_at
    latest = max(due, last_fire(row.cron, row.tz, now)) if row.cron else due
    rows: list[dict[str, Any]] = []
    if latest > due:  # a recurring schedule never piles up: only the latest can fire
        rows.append({"fire_at": due, "state": "missed",
                     "note": f"the fires due from {local(due, row.tz)} to before "
                             f"{local(latest, row.tz)} were skipped: no scheduler ran"})
    following = _following(row, latest)
    late = now - latest
    if late > row.catch_up:
        rows.append({"fire_at": latest, "state": "missed",
                     "note": f"no scheduler ran within the catch-up window "
                             f"({row.catch_up:g} s; it was {late:,.0f} s late)"})
        ok = _commit(firing, row, rows, following)
        return Fired(row.id, latest, "missed" if ok else "elsewhere")
    with firing.engine.connect() as conn:  # another scheduler fired it already: no planning
        if conn.execute(select(fires.c.id).where(fires.c.schedule_id == row.id,
                                                 fires.c.fire_at == latest)).first():
            return Fired(row.id, latest, "elsewhere")
    try:
        job_id = plan_job(firing, row, latest)
    except (InputError, Unsupported, ValueError) as exc:
        note = (f"{exc}; nothing was sent. Fix it, then `imshift schedule show {row.id}` "
                "shows the next fire")
        rows.append({"fire_at": latest, "state": "failed", "note": note})
        ok = _commit(firing, row, rows, following)
        return Fired(row.id, latest, "failed" if ok else "elsewhere", note=note)
    rows.append({"fire_at": latest, "state": "fired", "job_id": job_id})
    if not _commit(firing, row, rows, following):
        discard(firing.engine, job_id)
        return Fired(row.id, latest, "elsewhere")
    _start(firing, job_id)
    return Fired(row.id, latest, "fired", job_id)


def _start(firing: Firing, job_id: int) -> None:
    from .control import JobError

    try:
        firing.start(job_id)
    except JobError:  # another scheduler's `recover` started it first
        pass


def due(engine: Engine, now: float, limit: int = 200) -> list:
    with engine.connect() as conn:
        return list(conn.execute(select(schedules).where(
            schedules.c.status == ACTIVE, schedules.c.next_at <= now)
            .order_by(schedules.c.next_at).limit(limit)))


def wait_seconds(engine: Engine, poll: float, now: float | None = None) -> float:
    """How long a scheduler sleeps before its next look: until the next
    active schedule is due, at most `poll` (so one added meanwhile is seen
    within `poll`). Polling on a fixed period alone fired up to a whole
    period late (bench/schedule.py); MIN_WAIT keeps a loop over a due row
    that cannot move on from spinning."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        soonest = conn.execute(select(func.min(schedules.c.next_at))
                               .where(schedules.c.status == ACTIVE)).scalar()
    if soonest is None:
        return poll
    return min(poll, max(MIN_WAIT, soonest - now))


def fire_due(firing: Firing, now: float | None = None) -> list[Fired]:
    """Fire every schedule due at `now`, then start fired jobs left unstarted."""
    now = time.time() if now is None else now
    done = [fire_one(firing, row, now) for row in due(firing.engine, now)]
    recover(firing)
    return done


def recover(firing: Firing) -> list[int]:
    """Start the jobs of fires whose scheduler stopped between the fire's
    commit and the job's start (they are planned whole, never started)."""
    with firing.engine.connect() as conn:
        waiting = list(conn.execute(select(fires.c.job_id).join(jobs, jobs.c.id == fires.c.job_id)
                                    .where(jobs.c.status == JobStatus.PLANNING.value)).scalars())
    for job_id in waiting:
        _start(firing, job_id)
    return waiting


def sweep_orphans(engine: Engine, now: float | None = None) -> list[int]:
    """Remove jobs a scheduler planned for a fire it never committed (it was
    killed, or lost the race and died before discarding): they never run."""
    now = time.time() if now is None else now
    tagged = jobs.c.params["schedule_id"].as_integer()
    with engine.connect() as conn:
        orphans = list(conn.execute(select(jobs.c.id).where(
            jobs.c.status == JobStatus.PLANNING.value, tagged.is_not(None),
            jobs.c.created_at < now - ORPHAN_AFTER,
            ~select(fires.c.id).where(fires.c.job_id == jobs.c.id).exists())).scalars())
    for job_id in orphans:
        discard(engine, job_id)
    return orphans
