"""Run one chunk: claim its items, call the vendor, record every outcome.

At least once on the queue, effectively once at the vendor: a chunk message
may arrive twice and a worker may die mid-call, so items are claimed with a
lease (a second delivery finds nothing to claim), outcomes only land for the
claim's holder, and a send whose call may have gone out unrecorded is marked
`unknown` instead of being sent again (unless the vendor deduplicates).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

from sqlalchemy import bindparam, func, select, update

from imshift.models import runs, store
from imshift.models.tables import Item, ItemState, Job, JobStatus
from imshift.vendors.vocabulary import CAP_CODE, PER, Operation, Outcome, Result
from imshift.vendors.client import VendorClient
from imshift.vendors.operations import WorkItem, bind, dedup_key, references, step

from .embedded import runner_id
from .enqueue import chunk_ranges, enqueue_ranges
from .outcomes import decide
from .recovery import look_up
from .runtime import ClaimBudget, Runtime, before_send, slot_taken

log = logging.getLogger("imshift.workers")

jobs = Job.__table__
items = Item.__table__

# Built once, run for every chunk (see models/store.py on why).
_STATUS = select(jobs.c.status).where(jobs.c.id == bindparam("b_job"))
_EARLIEST_PENDING = (select(func.min(func.coalesce(items.c.not_before, 0.0)))
                     .where(items.c.job_id == bindparam("b_job"), items.c.seq >= bindparam("b_start"),
                            items.c.seq < bindparam("b_end"),
                            items.c.state == ItemState.PENDING.value))
_TOUCH = (update(jobs).where(jobs.c.id == bindparam("b_job"),
                             jobs.c.status == JobStatus.RUNNING.value)
          .values(touched_at=bindparam("b_now")))
_STOP = (update(jobs).where(jobs.c.id == bindparam("b_job"),
                            jobs.c.status == JobStatus.RUNNING.value)
         .values(touched_at=bindparam("b_now"), status=JobStatus.STOPPED.value,
                 stop_reason=bindparam("b_reason")))
MIN_UNREACHABLE_CALLS = 3  # failed connections, over `unreachable_after`, before a job is stopped


@dataclass(frozen=True)
class JobView:
    id: int
    operation: Operation
    app: str
    params: dict[str, Any]

    @property
    def run(self) -> int | None:
        """The migration run this job is a stage of."""
        return self.params.get("run")


def load_job(runtime: Runtime, job_id: int) -> JobView | None:
    with runtime.engine.connect() as conn:
        row = conn.execute(select(jobs.c.id, jobs.c.operation, jobs.c.app, jobs.c.params)
                           .where(jobs.c.id == job_id)).first()
    return JobView(row.id, Operation(row.operation), row.app, row.params) if row else None


async def job_view(runtime: Runtime, job_id: int) -> JobView | None:
    """The job's operation, app and params, which never change: read once per
    process. Its status does change, so the claim checks it every time."""
    job = runtime.jobs.get(job_id)
    if job is None:
        job = await asyncio.to_thread(load_job, runtime, job_id)
        if job is not None:
            runtime.remember_job(job_id, job)
    return job


async def run_chunk(runtime: Runtime, job_id: int, start: int, end: int) -> None:
    job = await job_view(runtime, job_id)
    if job is None:
        return
    try:
        client = runtime.client(job.app)
    except ValueError as exc:  # the app's settings cannot work: retrying never helps
        await asyncio.to_thread(_stop_job, runtime, job, f"{exc}; fix the settings, then "
                                                         f"`imshift resume {job.id}`")
        return
    repeat_safe = client.repeat_safe(job.operation)
    due: float | None = None  # when the earliest item left pending may be tried
    for part_start, part_end, operation in sections(job, start, end):
        part = await _run_part(runtime, client, job, part_start, part_end, operation, repeat_safe)
        if part.stop:
            return  # paused, cancelled, stopped: resume re-sends the chunks
        if part.due is not None:
            due = part.due if due is None else min(due, part.due)
    # Items of this chunk waiting out a backoff (ours, or ones another run
    # left) need a later run: the chunk schedules it itself.
    if due is not None:
        delay_ms = max(0, int((due - time.time()) * 1000))
        runtime.broker.actors["run_chunk"].send_with_options(args=(job_id, start, end), delay=delay_ms)


async def _run_part(runtime: Runtime, client: VendorClient, job: JobView, start: int, end: int,
                    operation: Operation, repeat_safe: bool) -> SliceRun:
    """Run the items start <= seq < end, whose calls are all `operation`'s,
    a slice at a time within the process's claim budget for it (verify's
    member and friend checks are reads of their own). Claimed items wait for
    that operation's rate limiter, so the budget is what its quota serves in
    claim_seconds. Slices overlap: the next is claimed as soon as the budget
    has room, which it gets back as calls get their slots, so a chunk keeps
    calls going out while earlier ones wait for a slow vendor's replies.
    No slice starts after one has stopped or failed; the running ones end
    first (their items are claimed: left alone they would wait out a lease)."""
    rate = runtime.limiter.limit(job.app, operation.value)
    if not rate:  # no quota to pace the claims by: one slice, the whole part
        return await _run_slice(runtime, client, job, start, end, repeat_safe)
    batch = max(1, client.rules.batch_size.get(operation, 1))
    size = max(batch, math.ceil(rate * batch * runtime.tuning.claim_seconds))
    budget = runtime.claim_budget(job.app, operation.value, size)
    step = batch * max(1, math.ceil(size / 4 / batch))
    slices: list[asyncio.Task[SliceRun]] = []
    try:
        for lo in range(start, end, step):
            hi = min(lo + step, end)
            await budget.take(hi - lo)
            if any(task.done() and _ended_short(task) for task in slices):
                budget.give(hi - lo)
                break
            share = BudgetShare(budget, hi - lo)
            slices.append(asyncio.create_task(_budgeted_slice(runtime, client, job, lo, hi,
                                                              repeat_safe, share)))
        if slices:
            await asyncio.wait(slices)
    finally:  # cancelled (the worker stops): its slices with it
        for task in slices:
            task.cancel()
    # Once every slice has ended: the first failure, each one retrieved (the
    # others mostly share its cause, say the database down).
    failures = [error for error in (task.exception() for task in slices) if error is not None]
    if failures:
        raise failures[0]
    ran = [task.result() for task in slices]
    dues = [r.due for r in ran if r.due is not None]
    return SliceRun(stop=any(r.stop for r in ran), due=min(dues, default=None))


def _ended_short(task: asyncio.Task[SliceRun]) -> bool:
    """The slice failed, or found the job not running: start no more."""
    return task.cancelled() or task.exception() is not None or task.result().stop


async def _budgeted_slice(runtime: Runtime, client: VendorClient, job: JobView, start: int, end: int,
                          repeat_safe: bool, share: BudgetShare) -> SliceRun:
    try:
        return await _run_slice(runtime, client, job, start, end, repeat_safe, share.went)
    finally:
        share.went(share.left)


def sections(job: JobView, start: int, end: int) -> list[tuple[int, int, Operation]]:
    """The range start <= seq < end cut where the job's params say the
    items' calls change operation (`sections`: [first seq, operation] in
    order; none: the job's own operation throughout)."""
    marks = job.params.get("sections") or [[start, job.operation.value]]
    parts = []
    for i, (first, operation) in enumerate(marks):
        lo = start if i == 0 else max(start, first)
        hi = min(end, marks[i + 1][0]) if i + 1 < len(marks) else end
        if lo < hi:
            parts.append((lo, hi, Operation(operation)))
    return parts


class BudgetShare:
    """A slice's items in the claim budget: given back batch by batch as
    their calls get a slot (runtime.ClaimBudget), the rest when it ends."""

    def __init__(self, budget: ClaimBudget, size: int):
        self.budget, self.left = budget, size

    def went(self, n: int) -> None:
        n = min(n, self.left)
        self.left -= n
        self.budget.give(n)


@dataclass(frozen=True)
class SliceRun:
    stop: bool  # the job is not running (any more): leave the rest
    due: float | None  # the earliest not_before of the slice's items left pending


async def _run_slice(runtime: Runtime, client: VendorClient, job: JobView, start: int, end: int,
                     repeat_safe: bool, went: Callable[[int], None] | None = None) -> SliceRun:
    """Claim, call, record the items start <= seq < end. Where the operation
    table can look up what a cut-off call made, it is looked up first
    (workers/recovery.py)."""
    operation = step(job.operation)
    claimed = await asyncio.to_thread(_claim, runtime, job.id, start, end, repeat_safe,
                                      operation.lookup is not None)
    if claimed is None:
        return SliceRun(stop=True, due=None)
    token, rows, waiting = claimed
    if not rows:
        return SliceRun(stop=False, due=waiting)
    skipped: list[dict[str, Any]] = []
    if job.run is not None:  # a run's stage: ids as the target knows them
        rows, skipped = await asyncio.to_thread(_bind_ids, runtime, job.run, rows)
    keeper = asyncio.create_task(_keep_lease(runtime, job.id, token))
    try:
        looked = await look_up(runtime, client, job, token, rows, operation, repeat_safe)
        rows = looked.to_send
        results = await execute(runtime, client, job, rows, None if repeat_safe else token,
                                went) if rows else []
    finally:
        keeper.cancel()
    now = time.time()
    capped = bool(runtime.limiter.caps(job.app, job.operation.value))
    outcomes = [at_cap(runtime, job, row, result)
                if result.code == CAP_CODE or (capped and result.outcome is Outcome.RATE_LIMITED)
                else decide(runtime, row, result, repeat_safe, now, operation.unsure)
                for row, result in zip(rows, results, strict=True)]
    stop = _stop_reason(runtime, job, looked.results + results, now)
    made = _made_ids(job, looked.rows + rows, [r for r in looked.results if r.succeeded] + results)
    await asyncio.to_thread(_record, runtime, job, token, outcomes + looked.outcomes + skipped, stop, made)
    backoffs = [o["not_before"] for o in outcomes + looked.outcomes if o["not_before"] is not None]
    due = min(backoffs + ([waiting] if waiting is not None else []), default=None)
    return SliceRun(stop=stop is not None, due=due)


def _stop_reason(runtime: Runtime, job: JobView, results: Sequence[Result], now: float) -> str | None:
    """Why the job must stop, for every item alike: the vendor refused our
    credentials, or it could not be reached at all for a while."""
    refused = next((r for r in results if r.outcome is Outcome.AUTH), None)
    if refused is not None:
        return (f"{job.app} refused the credentials: {refused.code} {refused.message}; "
                f"fix them, then `imshift resume {job.id}`")
    down = runtime.unreachable.get(job.app)
    if down and down[1] >= MIN_UNREACHABLE_CALLS and now - down[0] >= runtime.tuning.unreachable_after:
        return (f"{job.app} could not be reached for {now - down[0]:.0f} s ({down[2]}); "
                f"check the network and the app's base URL, then `imshift resume {job.id}`")
    return None


def _note_reachability(runtime: Runtime, app: str, results: Sequence[Result]) -> None:
    """A call that got any answer resets the app's unreachable streak; a
    call that could not connect (code "network") extends it."""
    if any(r.code not in ("network", "invalid") for r in results):
        runtime.unreachable.pop(app, None)
    elif any(r.code == "network" for r in results):
        first, calls, _ = runtime.unreachable.get(app, (time.time(), 0, ""))
        message = next(r.message for r in results if r.code == "network")
        runtime.unreachable[app] = (first, calls + 1, message)


def _claim(runtime: Runtime, job_id: int, start: int, end: int, repeat_safe: bool, looks: bool = False):
    """(token, rows, when the earliest item left pending may be tried), or
    None when the job is not running."""
    with runtime.engine.begin() as conn:
        status = conn.execute(_STATUS, {"b_job": job_id}).scalar()
        if status != JobStatus.RUNNING.value:
            return None
        token, rows = store.claim(conn, job_id, start, end, lease=runtime.tuning.lease_seconds,
                                  resend_expired=repeat_safe, look_up_expired=looks)
        handed = None
        if not rows and store.finish_if_done(conn, job_id):  # the claim closed the last items (as unknown)
            handed = runs.hand_over(conn, job_id, runner_id(runtime.broker))
        # What is still pending in the range waits out a backoff.
        waiting = conn.execute(_EARLIEST_PENDING,
                               {"b_job": job_id, "b_start": start, "b_end": end}).scalar()
    if handed:
        start_stage(runtime, *handed)
    return token, rows, waiting


async def _keep_lease(runtime: Runtime, job_id: int, token: str) -> None:
    """Extend the claim while the chunk runs (rate limits can make it long);
    a worker that dies stops extending, and its items become claimable."""
    while True:
        await asyncio.sleep(runtime.tuning.lease_seconds / 3)

        def extend() -> None:
            with runtime.engine.begin() as conn:
                conn.execute(update(items).where(items.c.job_id == job_id, items.c.claim == token)
                             .values(lease_until=time.time() + runtime.tuning.lease_seconds))

        await asyncio.to_thread(extend)


def _stop_job(runtime: Runtime, job: JobView, reason: str) -> None:
    with runtime.engine.begin() as conn:
        if conn.execute(_STOP, {"b_job": job.id, "b_now": time.time(), "b_reason": reason}).rowcount:
            log.error("job %s stopped: %s", job.id, reason)


class Bound(NamedTuple):
    seq: int
    key: str
    payload: Any
    attempts: int


def _bind_ids(runtime: Runtime, run_id: int, rows: Sequence[Any]) -> tuple[list[Bound], list[dict[str, Any]]]:
    """The claimed rows with their ids translated through the run's id map,
    and a `skipped` outcome for each row whose account or group did not make it."""
    wanted = references(row.payload for row in rows)
    with runtime.engine.connect() as conn:
        found = {kind: runs.target_ids(conn, run_id, kind, ids) for kind, ids in wanted.items()}
        bound, skipped = [], []
        for row in rows:
            item = bind(WorkItem(row.seq, row.key, row.payload), found)
            if isinstance(item, WorkItem):
                bound.append(Bound(row.seq, row.key, item.payload, row.attempts))
            else:
                skipped.append({"seq": row.seq, "state": ItemState.SKIPPED, "code": "skipped",
                                "message": runs.why_missing(conn, run_id, *item), "not_before": None})
    return bound, skipped


def _made_ids(job: JobView, rows: Sequence[Any], results: Sequence[Result]) -> dict[str, str]:
    """What a run's accounts or groups stage made: source id -> target id."""
    kind = job.params.get("makes")
    if job.run is None or kind is None:
        return {}
    field = f"{kind}_id"
    return {row.key: str(result.data.get(field) or row.key)
            for row, result in zip(rows, results, strict=True) if result.succeeded}


def _record(runtime: Runtime, job: JobView, token: str, outcomes: list[dict[str, Any]],
            stop: str | None, made: dict[str, str] | None = None) -> None:
    handed: tuple[int, int, int] | None = None
    with runtime.engine.begin() as conn:
        now = time.time()
        # The job's row first: while this transaction holds it, a cancel
        # waits, so it closes whatever this record leaves pending; a cancel
        # that came first is seen here.
        params = {"b_job": job.id, "b_now": now}
        if stop is None:
            running = conn.execute(_TOUCH, params).rowcount == 1
        else:
            running = conn.execute(_STOP, {**params, "b_reason": stop}).rowcount == 1
            if running:
                log.error("job %s stopped: %s", job.id, stop)
        cancelled = not running and \
            conn.execute(_STATUS, {"b_job": job.id}).scalar() == JobStatus.CANCELLED.value
        store.record(conn, job.id, token, outcomes, now, cancelled=cancelled)
        if made and job.run is not None:  # (_made_ids gives none outside a run)
            runs.remember(conn, job.run, job.params["makes"], made)
        if store.finish_if_done(conn, job.id) and job.run is not None:
            handed = runs.hand_over(conn, job.id, runner_id(runtime.broker), now)
    if handed:
        start_stage(runtime, *handed)


def start_stage(runtime: Runtime, job_id: int, total: int, chunk_size: int) -> None:
    """Queue a run's next stage, started by the hand-over (if queuing fails,
    the sweeper re-sends a running job that makes no progress)."""
    try:
        enqueue_ranges(runtime.broker, job_id, chunk_ranges(total, chunk_size))
    except Exception:
        log.warning("job %s: queuing the run's next stage failed; the sweeper re-sends it",
                    job_id, exc_info=True)


def at_cap(runtime: Runtime, job: JobView, row: Any, result: Result) -> dict[str, Any]:
    """A rate-limited call of an operation with caps over hours or days
    (RongCloud's broadcasts) ends `failed` now, with the cap or the vendor's
    own words: retried, it would go out hours later by surprise."""
    if result.code == CAP_CODE:  # our limiter kept it back: it was never sent
        message = f"rate limited: {result.message}"
    else:
        caps = runtime.limiter.caps(job.app, job.operation.value)
        allowed = " and ".join(f"{n} {PER[per]}" for per, n in caps.items())
        message = (f"rate limited: the vendor answered {result.code} {result.message!r} "
                   f"({job.operation} is capped at {allowed}); not retried later")
    return {"seq": row.seq, "code": result.code, "not_before": None, "state": ItemState.FAILED,
            "message": f"{message}; `imshift retry {job.id}` sends it once the window has opened"}


# -- calling the vendor -----------------------------------------------------------------------

async def execute(runtime: Runtime, client: VendorClient, job: JobView, rows: Sequence[Any],
                  announce: str | None = None,
                  went: Callable[[int], None] | None = None) -> list[Result]:
    """One Result per row, from the vendor's batch calls made concurrently.
    With `announce` (the claim of a call that is not safe to repeat), each
    batch is marked sent once the rate limiter lets its call go; `went` is
    told each batch's size once its (first) call has its slot."""
    size = max(1, client.rules.batch_size.get(job.operation, 1))
    batches = [rows[i:i + size] for i in range(0, len(rows), size)]
    gate = runtime.gate()

    async def one(batch: Sequence[Any]) -> list[Result]:
        if announce is not None:
            before_send.set(_announcer(runtime, job.id, announce, batch[0].seq, batch[-1].seq))
        if went is not None:
            slot_taken.set(_once(partial(went, len(batch))))
        async with gate:
            try:
                results = await call(client, job, batch)
            except Exception as exc:  # a client bug must not lose the batch: retry it
                log.exception("job %s: %s call failed", job.id, job.operation)
                return [Result(Outcome.RETRYABLE, "client-error", f"{type(exc).__name__}")] * len(batch)
        _note_reachability(runtime, job.app, results)
        # Tell the limiter now, not when the chunk ends: a pause reported
        # seconds later starts again after the vendor's block is over.
        limited = [r for r in results if r.outcome is Outcome.RATE_LIMITED and r.code != CAP_CODE]
        if limited:
            await runtime.limiter.slow_down(job.app, job.operation.value,
                                            max((r.retry_after or 0.0) for r in limited) or None)
        return results

    parts = await asyncio.gather(*(one(b) for b in batches))
    return [r for part in parts for r in part]


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """`action` on the first call only (a batch's calls may run side by side)."""
    done = False

    def first() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return first


def _announcer(runtime: Runtime, job_id: int, token: str, first: int, last: int):
    """The batch's before_send: one update marking its items sent, the first
    time the limiter lets one of its calls go (a vendor may split a batch)."""
    done = False

    async def mark() -> None:
        nonlocal done
        if done:
            return
        done = True

        def write() -> None:
            with runtime.engine.begin() as conn:
                store.mark_sent(conn, job_id, token, first, last)

        await asyncio.to_thread(write)

    return mark


async def call(client: VendorClient, job: JobView, batch: Sequence[Any]) -> list[Result]:
    """The operation table runs the batch; the dedup key is the job's and the
    items' (only a call that is not safe to repeat has a use for one)."""
    items = [WorkItem(r.seq, r.key, r.payload) for r in batch]
    table = step(job.operation)
    return await table.run(client, items, job.params,
                           "" if table.idempotent else dedup_key(str(job.id), items))
