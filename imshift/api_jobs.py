"""`/api/jobs...`: jobs listed and paged, one job's progress (`/progress`:
counts and rate only; the job itself adds its first failures), its items by
outcome in keyset pages, one item by its input id, and pause, resume,
cancel and retry as POSTs answering with the new status, or 409 with the
CLI's reason when the job's state does not allow it. Every query and state
change is the one the CLI calls (jobs.progress, jobs.control)."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from imshift.jobs import control
from imshift.jobs.progress import FAILED, Progress, item as find_item, items_page, job_ids, progress
from imshift.models.tables import ItemState, JobStatus
from imshift.vendors.vocabulary import Operation

from .api_live import FirstFailures, Kept, Rates, item_out, job_out, json_body, json_response
from .api_models import (ERRORS, MAX_ID, ControlOut, ItemOut, ItemsPage, JobDetail, JobId,
                         JobProgress, JobsPage)
from .context import Context, SetupError


def job_or_404(ctx: Context, job_id: int) -> Progress:
    p = progress(ctx.engine, job_id)
    if p is None:
        raise HTTPException(404, f"no job {job_id}")
    return p


def job_router(ctx: Context, rates: Rates, failures: FirstFailures, kept: Kept) -> APIRouter:
    """The routes; the job list, a job and its progress are answered from
    `kept` (read at most every imshift.api_live.KEPT_SECONDS), and every
    change here forgets what it holds."""
    router = APIRouter()

    def jobs_page(before: Optional[int], limit: int) -> bytes:
        ids = job_ids(ctx.engine, before, limit)
        jobs = [p for p in (progress(ctx.engine, i) for i in ids) if p is not None]
        return json_body(JobsPage, {"jobs": [job_out(p, rates) for p in jobs],
                                    "next_before": ids[-1] if len(ids) == limit else None})

    @router.get("/api/jobs", response_model=JobsPage, responses=ERRORS, summary="Jobs, newest first")
    async def list_jobs(before: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
                        limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
        return json_response(await kept.get(("jobs", before, limit), lambda: jobs_page(before, limit)))

    def job_detail(job_id: int) -> bytes | None:
        p = progress(ctx.engine, job_id)
        return None if p is None else json_body(JobDetail, {
            **job_out(p, rates), "history": rates.history(job_id), "failures": failures.get(ctx.engine, p)})

    @router.get("/api/jobs/{job_id}", response_model=JobDetail, responses=ERRORS,
                summary="One job's progress, its recent rate and first failures")
    async def get_job(job_id: JobId) -> Response:
        return json_response(_found(await kept.get(("job", job_id), lambda: job_detail(job_id)), job_id))

    def job_progress(job_id: int) -> bytes | None:
        p = progress(ctx.engine, job_id)
        return None if p is None else json_body(JobProgress, {**job_out(p, rates),
                                                              "history": rates.history(job_id)})

    @router.get("/api/jobs/{job_id}/progress", response_model=JobProgress, responses=ERRORS,
                summary="One job's progress and recent rate, without its failures")
    async def get_progress(job_id: JobId) -> Response:
        """What the page polls every second: the job detail without the
        failed items, so it reads the job's counts and never its items."""
        return json_response(_found(await kept.get(("progress", job_id), lambda: job_progress(job_id)),
                                    job_id))

    @router.get("/api/jobs/{job_id}/items", response_model=ItemsPage, responses=ERRORS,
                summary="A job's items in input order, in keyset pages")
    def list_items(job_id: JobId, outcome: Optional[ItemState] = None,
                   after: Annotated[int, Query(ge=-1, le=MAX_ID, description="The last seq seen")] = -1,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        job_or_404(ctx, job_id)
        page = items_page(ctx.engine, job_id, outcome.value if outcome else None, after, limit)
        return {"items": [item_out(r) for r in page],
                "next_after": page[-1].seq if len(page) == limit else None}

    @router.get("/api/jobs/{job_id}/items/{key:path}", response_model=ItemOut, responses=ERRORS,
                summary="One item by its id in the input")
    def get_item(job_id: JobId, key: str) -> ItemOut:
        job_or_404(ctx, job_id)
        row = find_item(ctx.engine, job_id, key) if "\x00" not in key else None
        if row is None:
            raise HTTPException(404, f"job {job_id} has no item {key!r}")
        return item_out(row)

    def change(job_id: int, action) -> ControlOut:
        job_or_404(ctx, job_id)
        try:
            changed, message = action()
        except control.JobError as exc:
            raise HTTPException(409, str(exc)) from exc
        finally:
            kept.forget()  # what was read before it (or while it changed) is not shown again
        p = progress(ctx.engine, job_id)
        return ControlOut(id=job_id, status=p.status if p else "removed", changed=changed,
                          message=message)

    @router.post("/api/jobs/{job_id}/pause", response_model=ControlOut, responses=ERRORS,
                 summary="Pause a running job")
    def pause(job_id: JobId) -> ControlOut:
        def act():
            control.pause(ctx.engine, job_id)
            return 0, f"job {job_id} paused"
        return change(job_id, act)

    @router.post("/api/jobs/{job_id}/cancel", response_model=ControlOut, responses=ERRORS,
                 summary="Stop a job for good")
    def cancel(job_id: JobId) -> ControlOut:
        def act():
            closed = control.cancel(ctx.engine, job_id)
            return closed, f"job {job_id} cancelled"
        return change(job_id, act)

    @router.post("/api/jobs/{job_id}/resume", response_model=ControlOut, responses=ERRORS,
                 summary="Resume a paused or stopped job")
    def resume(job_id: JobId) -> ControlOut:
        p = job_or_404(ctx, job_id)
        if p.status == JobStatus.FINISHED.value:
            left = sum(p.counts.get(s, 0) for s in FAILED)
            hint = (f"`imshift retry {job_id}` (POST .../retry) runs its rejected and failed items "
                    "again" if left else "nothing is left to do")
            raise HTTPException(409, f"job {job_id} is finished: {hint}")
        runnable(ctx, p)
        return change(job_id, lambda: (_queue(ctx, job_id, lambda: control.resume(
            ctx.engine, ctx.broker, job_id)), f"job {job_id} resumed"))

    @router.post("/api/jobs/{job_id}/retry", response_model=ControlOut, responses=ERRORS,
                 summary="Run the failed items again")
    def retry(job_id: JobId, unknown: Annotated[bool, Query(
            description="Also re-send items whose send may have been delivered")] = False) -> ControlOut:
        runnable(ctx, job_or_404(ctx, job_id))

        def act():
            moved = _queue(ctx, job_id, lambda: control.retry(ctx.engine, ctx.broker, job_id,
                                                              include_unknown=unknown))
            return moved, f"{moved} items of job {job_id} put back to work"
        return change(job_id, act)

    return router


def _found(body: bytes | None, job_id: int) -> bytes:
    if body is None:
        raise HTTPException(404, f"no job {job_id}")
    return body


def runnable(ctx: Context, p: Progress) -> None:
    """What the CLI checks before a resume or retry: the app's settings, a
    key where results need one, a broker that answers."""
    try:
        ctx.target(p.app)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    if ctx.cipher is None and (p.operation == Operation.ISSUE_TOKEN.value or (
            p.operation == Operation.REGISTER.value and "password" in ctx.register_secrets(p.app))):
        raise HTTPException(409, f"job {p.job_id}'s results are stored only encrypted and "
                                 "IMSHIFT_TOKEN_KEY is not set: set it, then try again")
    try:
        ctx.check_broker()
    except SetupError as exc:
        raise HTTPException(503, f"{exc}. Nothing was queued.") from exc


def _queue(ctx: Context, job_id: int, change):
    """A change that queues work; if queuing fails half-way the job is
    paused, as in the CLI, so nothing runs it later by surprise."""
    import dramatiq
    import redis

    try:
        return change()
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        raise HTTPException(503, f"{control.hold_after_failed_queue(ctx.engine, job_id, exc)}; "
                                 "resume it once Redis works") from exc
