"""`GET /api/jobs/N/results`: every item of a job streamed as CSV or JSON
Lines, as `imshift results JOB --format csv|jsonl` writes them
(jobs/exports.py), read in keyset batches (jobs.progress.results) and
written a few hundred rows at a time, so a million-item job never sits in
memory. The tokens and passwords a job obtained appear here, and only
when IMSHIFT_TOKEN_KEY is set, as in the CLI."""

from __future__ import annotations

import csv
import io
from typing import Any, Callable, Iterator, Optional

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from imshift.jobs.exports import RESULT_FIELDS, export_record, token_key_problem, write_record
from imshift.jobs.progress import results as item_results
from imshift.models.tables import ItemState

from .api_models import ERRORS, ExportFormat, JobId
from .context import Context


def export_router(ctx: Context, job_or_404: Callable[[int], Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/api/jobs/{job_id}/results", summary="Every item, streamed",
                responses={**ERRORS, 200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                                           "description": "CSV or JSON Lines, in input order"}},
                response_class=StreamingResponse)
    def export(job_id: JobId, format: ExportFormat = ExportFormat.csv,
               outcome: Optional[ItemState] = None) -> StreamingResponse:
        """As `imshift results JOB --format csv|jsonl`: with the tokens and
        passwords the job obtained when IMSHIFT_TOKEN_KEY is set."""
        job_or_404(job_id)
        headers = {"Content-Disposition": f'attachment; filename="job-{job_id}.{format.value}"'}
        warning = _check_token_key(ctx, job_id)
        if warning:
            headers["X-Imshift-Warning"] = warning
        rows = item_results(ctx.engine, job_id, outcome.value if outcome else None)
        media = "text/csv; charset=utf-8" if format is ExportFormat.csv else "application/x-ndjson"
        return StreamingResponse(_export(rows, ctx.runtime.unseal, format), media_type=media,
                                 headers=headers)

    return router


def _export(rows: Iterator[Any], unseal, format: ExportFormat) -> Iterator[str]:
    """The export written in pieces of a few hundred rows: memory stays flat."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_FIELDS) if format is ExportFormat.csv else None
    if writer:
        writer.writeheader()
    for n, item in enumerate(rows, 1):
        write_record(buffer, writer, export_record(item, unseal))
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _check_token_key(ctx: Context, job_id: int) -> str | None:
    """As the CLI: a warning when the job holds encrypted secrets and no key
    is set; a 409 when the key does not open them."""
    problem = token_key_problem(ctx.engine, ctx.cipher, job_id)
    if problem == "missing":
        return (f"job {job_id} holds encrypted tokens or passwords and IMSHIFT_TOKEN_KEY is not "
                "set: their columns are empty")
    if problem == "wrong":
        raise HTTPException(409, f"IMSHIFT_TOKEN_KEY does not open the tokens of job {job_id}: they "
                                 "were stored with another key")
    return None
