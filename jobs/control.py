"""Starting, pausing, resuming, cancelling and retrying jobs.

Each change is a status change in the database plus, where work is to be
done, chunk messages: workers check the job's status before claiming, so a
pause or cancel takes effect at the next chunk without touching the queue.
A status change is one compare-and-set (an UPDATE whose WHERE names the
states it may come from): of two commands racing on one job, one wins and
the other is refused as if it had come second.
"""

from __future__ import annotations

import time

import dramatiq
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from imshift.models import runs, store
from imshift.models.tables import Item, ItemState, Job, JobCount, JobStatus
from imshift.vendors.operations import Step, step
from imshift.vendors.vocabulary import Operation
from imshift.workers.embedded import runner_gone, runner_id
from imshift.workers.enqueue import chunk_ranges, enqueue_ranges, open_ranges

jobs = Job.__table__
items = Item.__table__
job_counts = JobCount.__table__

# Planning stores items batch by batch and writes the job's total last, so a
# `planning` job whose items do not add up to its total was never planned
# whole (its producer died or is still reading): it must never run.
_STORED = (select(func.coalesce(func.sum(job_counts.c.n), 0))
           .where(job_counts.c.job_id == jobs.c.id).scalar_subquery())
_PLANNED_WHOLE = or_(jobs.c.status != JobStatus.PLANNING.value, jobs.c.total == _STORED)


class JobError(ValueError):
    """A request that does not fit the job's state (or an unknown job)."""


def _job(conn, job_id: int):
    job = conn.execute(select(jobs, _STORED.label("stored")).where(jobs.c.id == job_id)).first()
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def _half_planned(job) -> bool:
    return job.status == JobStatus.PLANNING.value and job.total != job.stored


def _refusal(job, allowed: tuple[JobStatus, ...], status: JobStatus) -> str:
    if _half_planned(job):
        return (f"job {job.id} was never planned whole ({job.stored:,} rows stored, then its "
                f"producer stopped or is still reading the input): it cannot run; "
                f"`imshift cancel {job.id}` removes it")
    if job.status == JobStatus.RUNNING.value and job.runner \
            and runner_gone(job.runner, job.runner_seen_at, time.time()):
        return (f"job {job.id} is running, but its runner ({job.runner}) is gone: "
                f"`imshift resume {job.id}` takes it over")
    return (f"job {job.id} is {job.status}; cannot make it {status.value} "
            f"(only from {', '.join(s.value for s in allowed)})")


def _set_status(conn, job_id: int, allowed: tuple[JobStatus, ...], status: JobStatus,
                **values) -> None:
    """Compare-and-set: the change lands only if the job is in `allowed`
    (and, coming from planning, was planned whole) at that moment."""
    changed = conn.execute(update(jobs).where(
        jobs.c.id == job_id, jobs.c.status.in_([s.value for s in allowed]), _PLANNED_WHOLE)
        .values(status=status.value, **values)).rowcount
    if changed != 1:
        raise JobError(_refusal(_job(conn, job_id), allowed, status))


def _runner(broker: dramatiq.Broker, now: float) -> dict:
    """Who runs the job from now: this process in the embedded mode, else the workers."""
    return {"runner": runner_id(broker), "runner_seen_at": now}


def start(engine: Engine, broker: dramatiq.Broker, job_id: int, *, stage_ok: bool = False) -> int:
    """Run a planned job: returns how many chunk messages were sent. A run's
    stage starts only through its run (`stage_ok`), in its turn."""
    now = time.time()
    with engine.begin() as conn:
        if not stage_ok:
            _not_a_stage(conn, job_id)
        _set_status(conn, job_id, (JobStatus.PLANNING, JobStatus.PLANNED), JobStatus.RUNNING,
                    started_at=now, touched_at=now, stop_reason=None, **_runner(broker, now))
        job = _job(conn, job_id)
        finished = store.finish_if_done(conn, job_id)  # every row was invalid
        handed = runs.hand_over(conn, job_id, runner_id(broker), now) if finished else None
    if handed:  # a run's stage with nothing to do: the next one starts
        return enqueue_ranges(broker, handed[0], chunk_ranges(handed[1], handed[2]))
    if finished:
        return 0
    return enqueue_ranges(broker, job_id, chunk_ranges(job.total, job.params["chunk_size"]))


def _not_a_stage(conn, job_id: int) -> None:
    row = conn.execute(select(jobs.c.run_id, jobs.c.stage).where(jobs.c.id == job_id)).first()
    if row is not None and row.run_id is not None:
        raise JobError(f"job {job_id} is the {row.stage} stage of run R{row.run_id}: it starts "
                       f"when the stage before it has finished (`imshift start R{row.run_id}` "
                       "starts a planned run)")


def mark_planned(engine: Engine, job_id: int) -> None:
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.PLANNING,), JobStatus.PLANNED)


def pause(engine: Engine, job_id: int) -> None:
    with engine.begin() as conn:
        _set_status(conn, job_id, (JobStatus.RUNNING,), JobStatus.PAUSED)


def hold_after_failed_queue(engine: Engine, job_id: int, exc: BaseException) -> str:
    """Queuing a job's chunks failed half-way (Redis down): pause it, so
    nothing runs it later by surprise. Returns what went wrong and the
    job's state now, in words for either face."""
    try:
        pause(engine, job_id)
        state = "it is paused, so nothing runs it"
    except JobError as again:
        state = str(again)
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"could not queue job {job_id}: Redis said {reason!r}; {state}"


def resume(engine: Engine, broker: dramatiq.Broker, job_id: int) -> int:
    """Run a paused or stopped job again, or take over a running one whose
    runner is gone (an embedded command that was killed)."""
    now = time.time()
    with engine.begin() as conn:
        job = _job(conn, job_id)
        if job.status == JobStatus.RUNNING.value:
            _take_over(conn, job, broker, now)
        else:
            _set_status(conn, job_id, (JobStatus.PAUSED, JobStatus.STOPPED), JobStatus.RUNNING,
                        touched_at=now, stop_reason=None, **_runner(broker, now))
    return _send_open(engine, broker, job_id)


def _take_over(conn, job, broker: dramatiq.Broker, now: float) -> None:
    if job.runner is None:
        raise JobError(f"job {job.id} is running on the workers; "
                       f"follow it with `imshift status {job.id} --watch`")
    if not runner_gone(job.runner, job.runner_seen_at, now):
        raise JobError(f"job {job.id} is running in {job.runner} (seen "
                       f"{max(0.0, now - job.runner_seen_at):.0f} s ago); "
                       f"`imshift pause {job.id}` stops it there")
    if not store.take_over(conn, job.id, job.runner, job.runner_seen_at, runner_id(broker), now):
        raise JobError(f"job {job.id} was taken over by another command just now")


def cancel(engine: Engine, job_id: int) -> int:
    """Stop a job for good (see `cancel_counts`). Returns how many items were closed."""
    return sum(cancel_counts(engine, job_id).values())


def cancel_counts(engine: Engine, job_id: int) -> dict[str, int]:
    """Stop a job for good: its pending and claimed items end `cancelled`
    (a claimed send whose call was let go ends `unknown`). A job never
    planned whole is removed. Returns how many items ended in each state:
    {"cancelled": n, "unknown": n}, or {"removed": n}."""
    now = time.time()
    try:
        with engine.begin() as conn:
            removed = _remove_half_planned(conn, job_id)
            if removed is not None:
                return {"removed": removed}
            _set_status(conn, job_id, (JobStatus.PLANNING, JobStatus.PLANNED, JobStatus.RUNNING,
                                       JobStatus.PAUSED, JobStatus.STOPPED), JobStatus.CANCELLED,
                        finished_at=now)
            unknown = -store.counts(conn, job_id).get(ItemState.UNKNOWN.value, 0)
            closed = (store.move(conn, job_id, [ItemState.PENDING], ItemState.CANCELLED)
                      + store.close_claimed(conn, job_id, now, unsure=_unsure(conn, job_id)))
            unknown += store.counts(conn, job_id).get(ItemState.UNKNOWN.value, 0)
            return {"cancelled": closed - unknown, "unknown": unknown}
    except IntegrityError as exc:  # its producer stored another batch meanwhile
        raise JobError(f"job {job_id} is still being planned; try `imshift cancel {job_id}` again") from exc


def cancelled_text(counts: dict[str, int]) -> str:
    """What a cancel did, in words: "3,886 items cancelled, 1 unknown (...)"."""
    if "removed" in counts:
        return f"never planned whole: removed with the {counts['removed']:,} rows it had stored"
    text = f"{counts.get('cancelled', 0):,} items cancelled"
    if counts.get("unknown"):
        text += (f", {counts['unknown']:,} unknown (their call was under way: `--outcome "
                 "unknown` in `imshift results` lists them)")
    return text


def _unsure(conn, job_id: int) -> str:
    """What a call of the job's operation cut off may have done, in the operation table's words."""
    operation = conn.execute(select(jobs.c.operation).where(jobs.c.id == job_id)).scalar()
    try:
        return step(Operation(operation)).unsure
    except ValueError:  # not an operation a job step runs: the table's default words
        return Step.unsure


def _remove_half_planned(conn, job_id: int) -> int | None:
    """Delete a job that was never planned whole with its items; None if it
    is not such a job. (A producer still storing rows then fails on its next
    batch: its job is gone.)"""
    claimed = conn.execute(update(jobs).where(
        jobs.c.id == job_id, jobs.c.status == JobStatus.PLANNING.value, ~_PLANNED_WHOLE)
        .values(status=JobStatus.CANCELLED.value)).rowcount
    if not claimed:
        return None
    removed = conn.execute(delete(items).where(items.c.job_id == job_id)).rowcount
    conn.execute(delete(job_counts).where(job_counts.c.job_id == job_id))
    conn.execute(delete(jobs).where(jobs.c.id == job_id))
    return removed


def retry(engine: Engine, broker: dramatiq.Broker, job_id: int, *, include_unknown: bool = False) -> int:
    """Put the items that failed back to work: those that ran out of attempts,
    those the vendor rejected, and (only when asked, since they may have been
    delivered) the unknown sends. Rows that were invalid in the input stay as
    they are: the same input would fail the same way. Returns how many."""
    states = [ItemState.FAILED, ItemState.REJECTED] + ([ItemState.UNKNOWN] if include_unknown else [])
    now = time.time()
    with engine.begin() as conn:
        job = _job(conn, job_id)
        if job.status in (JobStatus.PLANNING.value, JobStatus.PLANNED.value, JobStatus.CANCELLED.value):
            raise JobError(f"job {job_id} is {job.status}: nothing to retry")
        if job.status == JobStatus.PAUSED.value:
            raise JobError(f"job {job_id} is paused: `imshift resume {job_id}` first, then retry")
        moved = store.move(conn, job_id, states, ItemState.PENDING,
                           items.c.code.notin_(["invalid", "duplicate"]) | items.c.code.is_(None),
                           not_before=None, attempts=0)
        if moved:
            if job.status == JobStatus.RUNNING.value:  # its runner carries on
                _set_status(conn, job_id, (JobStatus.RUNNING,), JobStatus.RUNNING, touched_at=now)
            else:
                _set_status(conn, job_id, (JobStatus.STOPPED, JobStatus.FINISHED), JobStatus.RUNNING,
                            finished_at=None, touched_at=now, stop_reason=None,
                            **_runner(broker, now))
    if moved:
        _send_open(engine, broker, job_id)
    return moved


def _send_open(engine: Engine, broker: dramatiq.Broker, job_id: int) -> int:
    with engine.begin() as conn:
        job = _job(conn, job_id)
        ranges = open_ranges(conn, job_id, job.params["chunk_size"])
        handed = runs.hand_over(conn, job_id, runner_id(broker)) \
            if store.finish_if_done(conn, job_id) else None
    if handed:
        return enqueue_ranges(broker, handed[0], chunk_ranges(handed[1], handed[2]))
    return enqueue_ranges(broker, job_id, ranges)
