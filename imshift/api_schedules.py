"""`/api/schedules...`: schedules listed newest first, one schedule, its
fires (each with its job's counts), and pause, resume and remove as POSTs
answering with the new status, or 409 with the CLI's reason when the
schedule's state does not allow it. Changes are jobs/schedules.py's, as
`imshift schedule pause|resume|remove` call them; the pages are
jobs/schedule_pages.py's.

Remove is `POST .../remove`, not DELETE: the schedule and its history stay
(status `removed`), as with `imshift schedule remove`."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

from fastapi import APIRouter, HTTPException, Query

from imshift.jobs import schedules
from imshift.jobs.progress import Progress
from imshift.jobs.schedule_pages import Fire, fires_page, schedule_ids

from .api_models import (ERRORS, MAX_ID, FiresPage, ScheduleControlOut, ScheduleId, ScheduleOut,
                         SchedulesPage)
from .context import Context

LAST_FIRE = 10**12  # the highest ?before= taken: a time far past any fire


def _clock(t: float | None, tz: str) -> str | None:
    return None if t is None else schedules.local(t, tz)


def schedule_router(ctx: Context, job_out: Callable[[Progress], dict[str, Any]]) -> APIRouter:
    """The routes; `job_out` is how a fired job is shown."""
    router = APIRouter()

    def schedule_or_404(schedule_id: int):
        try:
            return schedules.get(ctx.engine, schedule_id)
        except schedules.ScheduleError as exc:  # the only one get() raises: no such schedule
            raise HTTPException(404, str(exc)) from exc

    def fire_out(fire: Fire, tz: str) -> dict[str, Any]:
        return dict(fire_at=fire.fire_at, fire_time=schedules.local(fire.fire_at, tz),
                    state=fire.state, job_id=fire.job_id, note=fire.note,
                    job=job_out(fire.job) if fire.job else None)

    def schedule_out(row) -> dict[str, Any]:
        p = row.params  # the command's parameters: never a secret (jobs/schedules.py)
        last = fires_page(ctx.engine, row.id, limit=1)
        return dict(id=row.id, command=row.command, app=row.app, status=row.status, at=row.at,
                    at_time=_clock(row.at, row.tz), cron=row.cron, tz=row.tz,
                    local_at=p.get("local_at"), zones=p.get("zones"),
                    next_at=row.next_at, next_fire=_clock(row.next_at, row.tz),
                    catch_up_seconds=row.catch_up, created_at=row.created_at,
                    sender=p.get("sender"), recipients=p.get("to") or p.get("to_groups"),
                    message=p.get("message") or {},
                    last_fire=fire_out(last[0], row.tz) if last else None)

    @router.get("/api/schedules", response_model=SchedulesPage, responses=ERRORS,
                summary="Schedules, newest first")
    def list_schedules(before: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       removed: Annotated[bool, Query(description="Removed schedules too (as "
                                                      "`schedule list --all`)")] = False) -> dict:
        ids = schedule_ids(ctx.engine, before, limit, include_removed=removed)
        rows = [schedules.get(ctx.engine, i) for i in ids]  # never deleted: remove keeps them
        return {"schedules": [schedule_out(row) for row in rows],
                "next_before": ids[-1] if len(ids) == limit else None}

    @router.get("/api/schedules/{schedule_id}", response_model=ScheduleOut, responses=ERRORS,
                summary="One schedule: what it sends, when, its status, next and last fire")
    def get_schedule(schedule_id: ScheduleId) -> dict:
        return schedule_out(schedule_or_404(schedule_id))

    @router.get("/api/schedules/{schedule_id}/fires", response_model=FiresPage, responses=ERRORS,
                summary="A schedule's fires, newest first, each with its job's counts")
    def list_fires(schedule_id: ScheduleId,
                   before: Annotated[Optional[float], Query(
                       gt=0, le=LAST_FIRE, allow_inf_nan=False,
                       description="A fire_at: fires due before it")] = None,
                   limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
        """As `imshift schedule history ID`, newest first and in pages."""
        row = schedule_or_404(schedule_id)
        page = fires_page(ctx.engine, schedule_id, before, limit)
        return {"fires": [fire_out(f, row.tz) for f in page],
                "next_before": page[-1].fire_at if len(page) == limit else None}

    def change(schedule_id: int, act: Callable[[], None], done: str) -> ScheduleControlOut:
        schedule_or_404(schedule_id)
        try:
            act()
        except schedules.ScheduleError as exc:  # the state does not allow it: the CLI's words
            raise HTTPException(409, str(exc)) from exc
        row = schedules.get(ctx.engine, schedule_id)
        return ScheduleControlOut(id=row.id, status=row.status, next_at=row.next_at,
                                  next_fire=_clock(row.next_at, row.tz),
                                  message=f"schedule {row.id} {done}; next fire "
                                          f"{schedules.local(row.next_at, row.tz)}")

    @router.post("/api/schedules/{schedule_id}/pause", response_model=ScheduleControlOut,
                 responses=ERRORS, summary="No fires until resumed (a fired job runs on)")
    def pause(schedule_id: ScheduleId) -> ScheduleControlOut:
        return change(schedule_id, lambda: schedules.pause(ctx.engine, schedule_id), "paused")

    @router.post("/api/schedules/{schedule_id}/resume", response_model=ScheduleControlOut,
                 responses=ERRORS, summary="Fire again from now on (fires due while paused "
                                           "are not made up)")
    def resume(schedule_id: ScheduleId) -> ScheduleControlOut:
        return change(schedule_id, lambda: schedules.resume(ctx.engine, schedule_id), "resumed")

    @router.post("/api/schedules/{schedule_id}/remove", response_model=ScheduleControlOut,
                 responses=ERRORS, summary="No more fires; the schedule and its history are kept")
    def remove(schedule_id: ScheduleId) -> ScheduleControlOut:
        return change(schedule_id, lambda: schedules.remove(ctx.engine, schedule_id), "removed")

    return router
