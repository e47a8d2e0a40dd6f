"""Starting, pausing, resuming, cancelling and retrying jobs.

Each change is a status change in the database plus, where work is to be
done, chunk messages: workers check the job's status before claiming, so a
pause or cancel takes effect at the next chunk without touching the queue.
"""

from __future__ import annotations

import time

import dramatiq
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from imshift.models import store
from imshift.models.tables import Item, ItemState, Job, JobStatus
from imshift.workers.enqueue import chunk_ranges, enqueue_ranges, open_ranges

jobs = Job.__table__
items = Item.__table__


class JobError(Exception):
    """A request that does not fit the job's state (or an unknown job)."""


def _job(conn, job_id: int):
    job = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def _set_status(conn, job_id: int, allowed: tuple[JobStatus, ...], status: JobStatus, **values) -> None:
    job = _job(conn, job_id)
    if job.status not in {s.value for s in allowed}:
        raise JobError(f"job {job_id} is {job.status}; cannot make it {status.value} "
                       f"(only from {', '.join(s.value for s in allowed)})")
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status.value, **values))


def start(engine: Engine, broker: dramatiq.Broker, job_id: int) -> int:
    """Run a planned job: returns how many chunk messages were sent."""
    now = time.time()
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.PLANNING, JobStatus.PLANNED), JobStatus.RUNNING,
                    started_at=now, touched_at=now, stop_reason=None)
        job = _job(conn, job_id)
        finished = store.finish_if_done(conn, job_id)  # every row was invalid
    if finished:
        return 0
    return enqueue_ranges(broker, job_id, chunk_ranges(job.total, job.params["chunk_size"]))


def mark_planned(engine: Engine, job_id: int) -> None:
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.PLANNING,), JobStatus.PLANNED)


def pause(engine: Engine, job_id: int) -> None:
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.RUNNING,), JobStatus.PAUSED)


def resume(engine: Engine, broker: dramatiq.Broker, job_id: int) -> int:
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.PAUSED, JobStatus.STOPPED), JobStatus.RUNNING,
                    touched_at=time.time(), stop_reason=None)
    return _send_open(engine, broker, job_id)


def cancel(engine: Engine, job_id: int) -> int:
    """Stop a job for good; its pending items end `cancelled`. Returns how many."""
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.PLANNED, JobStatus.RUNNING, JobStatus.PAUSED,
                                   JobStatus.STOPPED), JobStatus.CANCELLED, finished_at=time.time())
        return store.move(conn, job_id, [ItemState.PENDING], ItemState.CANCELLED)


def retry(engine: Engine, broker: dramatiq.Broker, job_id: int, *, include_unknown: bool = False) -> int:
    """Put the items that failed back to work: those that ran out of attempts,
    those the vendor rejected, and (only when asked, since they may have been
    delivered) the unknown sends. Rows that were invalid in the input stay as
    they are: the same input would fail the same way. Returns how many."""
    states = [ItemState.FAILED, ItemState.REJECTED] + ([ItemState.UNKNOWN] if include_unknown else [])
    with engine.begin() as conn:
        job = _job(conn, job_id)
        if job.status in (JobStatus.PLANNING.value, JobStatus.PLANNED.value, JobStatus.CANCELLED.value):
            raise JobError(f"job {job_id} is {job.status}: nothing to retry")
        moved = store.move(conn, job_id, states, ItemState.PENDING,
                           items.c.code.notin_(["invalid", "duplicate"]) | items.c.code.is_(None),
                           not_before=None, attempts=0)
        if moved:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status=JobStatus.RUNNING.value, finished_at=None, touched_at=time.time()))
    if moved and job.status != JobStatus.PAUSED.value:
        _send_open(engine, broker, job_id)
    return moved


def _send_open(engine: Engine, broker: dramatiq.Broker, job_id: int) -> int:
    with engine.begin() as conn:
        job = _job(conn, job_id)
        ranges = open_ranges(conn, job_id, job.params["chunk_size"])
        store.finish_if_done(conn, job_id)
    return enqueue_ranges(broker, job_id, ranges)
