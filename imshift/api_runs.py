"""The HTTP API's migration runs (`/api/runs`): listed newest first, one
run with each stage as a job, its id map streamed, and pause, resume and
cancel. Every query and change is jobs/run_control.py's, as the CLI's
`imshift status|pause|resume|cancel R<n>` and `imshift idmap` call them."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Callable, Iterator, Optional

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from imshift.jobs import control, run_control
from imshift.jobs.exports import csv_record
from imshift.jobs.progress import Progress
from imshift.jobs.run_control import RunProgress, name
from imshift.models.tables import JobStatus

from .api_live import Kept, json_body, json_response
from .api_models import (ERRORS, MAX_ID, ExportFormat, RunControlOut, RunOut, RunRef, RunsPage)
from .context import Context

IDMAP_FIELDS = ["kind", "source_id", "target_id"]


def _number(ref: str) -> int:
    """A run's number from `R<n>` or `n` (the path says which run; a bare
    number cannot mean a job here)."""
    try:
        _, number = run_control.parse_ref(ref)
    except control.JobError as exc:
        raise HTTPException(404, str(exc)) from exc
    if number > MAX_ID:
        raise HTTPException(404, f"no run {name(number)}")
    return number


def run_router(ctx: Context, job_out: Callable[[Progress], dict[str, Any]],
               runnable: Callable[[Progress], None], kept: Kept) -> APIRouter:
    """The routes; `job_out` is how a job (here a stage) is shown,
    `runnable` what is checked before work is queued for one. The run list
    and a run are answered from `kept`, which every change here forgets."""
    router = APIRouter()

    def run_out(p: RunProgress) -> dict[str, Any]:
        current = p.current
        return dict(id=p.run_id, name=name(p.run_id), source_app=p.source_app, app=p.app,
                    status=p.status, created_at=p.created_at, finished_at=p.finished_at,
                    current_stage=current[0] if current else None,
                    stages=[{**job_out(sp), "stage": stage} for stage, sp in p.stages])

    def run_or_404(ref: str) -> RunProgress:
        number = _number(ref)
        p = run_control.run_progress(ctx.engine, number)
        if p is None:
            raise HTTPException(404, f"no run {name(number)}")
        return p

    def runs_page(before: Optional[int], limit: int) -> bytes:
        ids = run_control.run_ids(ctx.engine, before, limit)
        listed = [p for p in (run_control.run_progress(ctx.engine, i) for i in ids) if p is not None]
        return json_body(RunsPage, {"runs": [run_out(p) for p in listed],
                                    "next_before": ids[-1] if len(ids) == limit else None})

    @router.get("/api/runs", response_model=RunsPage, responses=ERRORS,
                summary="Migration runs, newest first")
    async def list_runs(before: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
                        limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
        return json_response(await kept.get(("runs", before, limit), lambda: runs_page(before, limit)))

    def one_run(number: int) -> bytes | None:
        p = run_control.run_progress(ctx.engine, number)
        return None if p is None else json_body(RunOut, run_out(p))

    @router.get("/api/runs/{run_id}", response_model=RunOut, responses=ERRORS,
                summary="One run: its status and each stage's progress")
    async def get_run(run_id: RunRef) -> Response:
        number = _number(run_id)
        body = await kept.get(("run", number), lambda: one_run(number))
        if body is None:
            raise HTTPException(404, f"no run {name(number)}")
        return json_response(body)

    @router.get("/api/runs/{run_id}/idmap", responses={
                    **ERRORS, 200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                                    "description": "kind, source_id, target_id: users, then groups"}},
                response_class=StreamingResponse, summary="The run's source id -> target id map")
    def idmap(run_id: RunRef, format: ExportFormat = ExportFormat.csv) -> StreamingResponse:
        """As `imshift idmap R<n> --format csv|jsonl`: the ids the target
        answered, streamed."""
        p = run_or_404(run_id)
        rows = run_control.id_map_rows(ctx.engine, p.run_id)
        media = "text/csv; charset=utf-8" if format is ExportFormat.csv else "application/x-ndjson"
        filename = f"run-{name(p.run_id)}-idmap.{format.value}"
        return StreamingResponse(_idmap(rows, format), media_type=media,
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    def change(p: RunProgress, act: Callable[[], tuple[Optional[str], int, str]]) -> RunControlOut:
        try:
            stage, changed, message = act()
        except control.JobError as exc:
            raise HTTPException(409, str(exc)) from exc
        finally:
            kept.forget()  # what was read before it (or while it changed) is not shown again
        after = run_control.run_progress(ctx.engine, p.run_id)  # None: a cancel removed it
        status = after.status if after else JobStatus.CANCELLED.value
        return RunControlOut(id=p.run_id, name=name(p.run_id), status=status, stage=stage,
                             changed=changed, message=message)

    @router.post("/api/runs/{run_id}/pause", response_model=RunControlOut, responses=ERRORS,
                 summary="Pause the run's running stage")
    def pause(run_id: RunRef) -> RunControlOut:
        p = run_or_404(run_id)

        def act():
            stage = run_control.pause(ctx.engine, p.run_id)
            return stage, 0, f"run {name(p.run_id)} paused at its {stage} stage"
        return change(p, act)

    @router.post("/api/runs/{run_id}/cancel", response_model=RunControlOut, responses=ERRORS,
                 summary="Stop every stage not yet finished, for good")
    def cancel(run_id: RunRef) -> RunControlOut:
        p = run_or_404(run_id)

        def act():
            closed = run_control.cancel(ctx.engine, p.run_id)
            return None, closed, f"run {name(p.run_id)} cancelled ({closed:,} items closed)"
        return change(p, act)

    @router.post("/api/runs/{run_id}/resume", response_model=RunControlOut, responses=ERRORS,
                 summary="Carry on a paused or stopped run (or start a planned one)")
    def resume(run_id: RunRef) -> RunControlOut:
        p = run_or_404(run_id)
        for _, sp in p.stages:  # what will run: the stage it stands at and those after it
            if sp.status not in (JobStatus.FINISHED.value, JobStatus.CANCELLED.value):
                runnable(sp)

        def act():
            stage = _queued(ctx, p.run_id, lambda: run_control.resume(ctx.engine, ctx.broker, p.run_id))
            verb = "started" if p.status == JobStatus.PLANNED.value else "resumed"
            return stage, 0, f"run {name(p.run_id)} {verb} at its {stage} stage"
        return change(p, act)

    return router


def _queued(ctx: Context, run_id: int, change):
    """As the CLI: if queuing fails half-way (Redis), the stage it was
    queued for is paused, so nothing runs it later by surprise."""
    import dramatiq
    import redis

    try:
        return change()
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        now = run_control.run_progress(ctx.engine, run_id)
        current = now.current if now else None
        held = control.hold_after_failed_queue(ctx.engine, current[1].job_id, exc) if current else str(exc)
        raise HTTPException(503, f"{held}; `POST /api/runs/{name(run_id)}/resume` carries it on "
                                 "once Redis works") from exc


def _idmap(rows: Iterator[Any], format: ExportFormat) -> Iterator[str]:
    """The id map in pieces of a few thousand rows: memory stays flat."""
    buffer = io.StringIO()
    writer = csv.writer(buffer) if format is ExportFormat.csv else None
    if writer:
        writer.writerow(IDMAP_FIELDS)
    for n, (kind, source_id, target_id) in enumerate(rows, 1):
        if writer:  # ids are other people's text: a cell is never a formula
            writer.writerow(csv_record({"k": kind, "s": source_id, "t": target_id}).values())
        else:
            buffer.write(json.dumps({"kind": kind, "source_id": source_id, "target_id": target_id},
                                    ensure_ascii=False) + "\n")
        if n % 2000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
