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
it); killed after, a whole fire whose job `recover` starts. When each
fire falls (zones, cron, daylight saving, recipient-local time) is
jobs/schedule_times.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from imshift.models.tables import Job, JobStatus, Schedule, ScheduleFire, ScheduleStatus
from imshift.vendors.vocabulary import Message, Missing, Operation, Unsupported

from . import kinds, schedule_caps
from .fire_claim import claim
from .inputs import InputError
from .plan import discard
from .schedule_times import (  # noqa: F401  (the names callers know this module by)
    ScheduleError, cron_fields, is_local, known_zone, last_fire, latest_fire, local, local_instants,
    next_after, next_fire, parse_at, parse_local_at, zone, zones_at, zones_of)
from .target import Target, missing_text

schedules = Schedule.__table__
fires = ScheduleFire.__table__
jobs = Job.__table__

CATCH_UP = 900.0  # seconds: the default catch-up window
COMMANDS = {"send": Operation.SEND, "send_group": Operation.SEND_GROUP,
            "broadcast": Operation.BROADCAST}
ORPHAN_AFTER = 3600.0  # a planned job with no fire this old is a killed scheduler's (planning is minutes)
ACTIVE = ScheduleStatus.ACTIVE.value
MIN_WAIT = 0.01  # seconds: the shortest sleep between a scheduler's looks


# -- making and changing schedules --------------------------------------------------------------

def add(engine: Engine, target: Target, *, command: str, params: dict[str, Any],
        at: float | None = None, cron: str | None = None, tz: str = "UTC",
        catch_up: float = CATCH_UP, now: float | None = None) -> int:
    """Store a schedule; everything that can be checked now is: the zone, the
    time or expression, the vendor's support and caps, the recipient file."""
    now = time.time() if now is None else now
    zone(tz)
    if is_local(params):  # a fire per recipient zone's instant
        if command != "send" or not params.get("to") or (params.get("local_at") is None) == (cron is None):
            raise ScheduleError("--local-time goes with --to (recipients with a zone column) and "
                                "one of --at or --cron")
        params = {**params, **zones_of(params["to"], params["tz_column"], tz), "added_at": now}
        if cron is None:  # `at` is the first of its zones' instants
            at = min(local_instants(params, tz))
    if (at is None) == (cron is None):
        raise ScheduleError("give exactly one of --at or --cron")
    if catch_up < 0:
        raise ScheduleError("--catch-up must be 0 or more seconds")
    try:
        target.require(COMMANDS[command], params)
    except Missing as exc:
        raise ScheduleError(missing_text(exc)) from None
    try:  # the run is checked now; the ids are mapped at each fire
        kinds.via_run(engine, params.get("via"), target.app)
    except kinds.ViaError as exc:
        raise ScheduleError(str(exc)) from None
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
    next_at = at if at is not None else next_after(params, cron, tz, now)
    with engine.begin() as conn:
        return conn.execute(insert(schedules).values(
            command=command, app=target.app, params=params, at=at, cron=cron, tz=tz,
            catch_up=catch_up, status=ACTIVE, next_at=next_at, created_at=now)
            .returning(schedules.c.id)).scalar_one()


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
    values = {"next_at": next_after(row.params, row.cron, row.tz, now)} if row.cron else {}
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
    start: Callable[[int], object]  # starts the fired job (its result is not used)
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
    via = p.get("via")  # mapped now, so accounts a delta run migrated since are found
    target = firing.target(row.app)
    if row.command == "broadcast":
        planned = kinds.plan_broadcast(firing.engine, target, sender=p.get("sender", ""),
                                       message=message, chunk_size=firing.chunk_size, extra=tag,
                                       via=via)
    elif row.command == "send_group":
        planned = kinds.plan_group_send(firing.engine, target, p["to_groups"], sender=p["sender"],
                                        message=message, chunk_size=firing.chunk_size, extra=tag,
                                        via=via)
    elif is_local(p):  # this fire's recipients: those whose zone's local time it is
        zones = zones_at(p, row.cron, row.tz, fire_at)
        column = p["tz_column"]

        def here(r) -> bool:
            name = r.fields.get(column, "")
            return (name if known_zone(name) else row.tz) in zones

        planned = kinds.plan_send(firing.engine, target, p["to"], sender=p["sender"],
                                  message=message, chunk_size=firing.chunk_size,
                                  extra={**tag, "zones": sorted(zones)}, keep=here, via=via)
    else:
        planned = kinds.plan_send(firing.engine, target, p["to"], sender=p["sender"],
                                  message=message, chunk_size=firing.chunk_size, extra=tag, via=via)
    return planned.report.job_id


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
    latest = latest_fire(row.params, row.cron, row.tz, due, now) if row.cron else due
    rows: list[dict[str, Any]] = []
    if latest > due:  # a recurring schedule never piles up: only the latest can fire
        rows.append({"fire_at": due, "state": "missed",
                     "note": f"the fires due from {local(due, row.tz)} to before "
                             f"{local(latest, row.tz)} were skipped: no scheduler ran"})
    following = next_after(row.params, row.cron, row.tz, latest)
    late = now - latest
    if late > row.catch_up:
        rows.append({"fire_at": latest, "state": "missed",
                     "note": f"no scheduler ran within the catch-up window "
                             f"({row.catch_up:g} s; it was {late:,.0f} s late)"})
        ok = _commit(firing, row, rows, following)
        return Fired(row.id, latest, "missed" if ok else "elsewhere")
    with claim(firing.engine, row.id) as mine:
        if not mine:  # another scheduler is planning this fire now
            return Fired(row.id, latest, "elsewhere")
        return _fire(firing, row, latest, rows, following)


def _fire(firing: Firing, row, latest: float, rows: list[dict[str, Any]],
          following: float | None) -> Fired:
    """Plan the fire's job and commit the fire, unless another scheduler did."""
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
