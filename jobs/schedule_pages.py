"""Schedules and their fires in keyset pages, newest first, as the HTTP API
lists them (imshift/api_schedules.py), each fire with its job's progress.
Keyset pages as for jobs and runs (jobs/progress.py, jobs/run_control.py):
never OFFSET, so a schedule firing every minute for a year pages as fast at
its end as at its start. Making, changing and firing schedules is
jobs/schedules.py's."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from imshift.models.tables import Schedule, ScheduleFire, ScheduleStatus

from .progress import Progress, progress

schedules = Schedule.__table__
fires = ScheduleFire.__table__


def schedule_ids(engine: Engine, before: int | None = None, limit: int = 20,
                 include_removed: bool = False) -> list[int]:
    """Schedule ids, newest first, below `before`; removed ones only when asked."""
    query = select(schedules.c.id)
    if before is not None:
        query = query.where(schedules.c.id < before)
    if not include_removed:
        query = query.where(schedules.c.status != ScheduleStatus.REMOVED.value)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(schedules.c.id.desc()).limit(limit)).scalars())


@dataclass(frozen=True)
class Fire:
    fire_at: float  # when it was due (epoch seconds), unique per schedule: the key of the pages
    state: str  # fired, missed or failed
    job_id: int | None
    note: str | None
    job: Progress | None  # the fired job's progress now (None: no job, or it was removed)


def fires_page(engine: Engine, schedule_id: int, before: float | None = None,
               limit: int = 20) -> list[Fire]:
    """A schedule's fires due before `before`, newest first, each with its
    job's progress (one small read per fire: a page holds at most 100)."""
    query = select(fires.c.fire_at, fires.c.state, fires.c.job_id, fires.c.note).where(
        fires.c.schedule_id == schedule_id)
    if before is not None:
        query = query.where(fires.c.fire_at < before)
    with engine.connect() as conn:
        rows = list(conn.execute(query.order_by(fires.c.fire_at.desc()).limit(limit)))
    return [Fire(r.fire_at, r.state, r.job_id, r.note,
                 progress(engine, r.job_id) if r.job_id is not None else None) for r in rows]
