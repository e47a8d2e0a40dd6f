"""Progress and result queries. Progress reads the per-state counts kept as
the work runs (a handful of rows), never the items themselves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

from sqlalchemy import bindparam, literal_column, select, union_all
from sqlalchemy.engine import Engine

from imshift.models.tables import Item, ItemState, Job, JobCount

jobs = Job.__table__
items = Item.__table__
counts_table = JobCount.__table__
OPEN = (ItemState.PENDING.value, ItemState.CLAIMED.value)
FAILED = (ItemState.REJECTED.value, ItemState.FAILED.value, ItemState.UNKNOWN.value)  # shown first


@dataclass
class Progress:
    job_id: int
    kind: str
    app: str
    status: str
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    stop_reason: str | None = None
    operation: str | None = None
    touched_at: float | None = None  # last recorded progress

    @property
    def done(self) -> int:
        """Items no longer open (cancelled ones included)."""
        return sum(n for state, n in self.counts.items() if state not in OPEN)

    @property
    def completed(self) -> int:
        """Items that ended with an outcome: what "done" means to a reader."""
        return self.done - self.counts.get(ItemState.CANCELLED.value, 0)

    def idle_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the job last recorded progress (or started)."""
        last = self.touched_at or self.started_at
        return None if last is None else max(0.0, (now or time.time()) - last)

    @property
    def rate(self) -> float | None:
        """Items finished per second since the job started (average)."""
        if not self.started_at:
            return None
        elapsed = (self.finished_at or time.time()) - self.started_at
        return self.done / elapsed if elapsed > 0 else None

    def eta(self, rate: float | None = None) -> float | None:
        rate = rate or self.rate
        remaining = self.total - self.done
        return remaining / rate if rate and remaining else (0.0 if not remaining else None)


# The job and its counts in one statement (a row per state; one with no
# state when it has no counts yet): one round trip, not two, which on a
# busy machine is most of a progress read's time (bench scale).
_PROGRESS = (select(jobs.c.id, jobs.c.kind, jobs.c.app, jobs.c.status, jobs.c.total,
                    jobs.c.started_at, jobs.c.finished_at, jobs.c.stop_reason, jobs.c.operation,
                    jobs.c.touched_at, counts_table.c.state, counts_table.c.n)
             .select_from(jobs.outerjoin(counts_table, counts_table.c.job_id == jobs.c.id))
             .where(jobs.c.id == bindparam("job_id")))


def progress(engine: Engine, job_id: int) -> Progress | None:
    # One statement, no transaction around it: BEGIN and the ROLLBACK on
    # return to the pool are round trips too (bench scale).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = conn.execute(_PROGRESS, {"job_id": job_id}).all()
    if not rows:
        return None
    job = rows[0]
    return Progress(job.id, job.kind, job.app, job.status, job.total,
                    {r.state: r.n for r in rows if r.state is not None and r.n},
                    job.started_at, job.finished_at, job.stop_reason, job.operation, job.touched_at)


def first_secret(engine: Engine, job_id: int) -> bytes | None:
    """One item's encrypted result secrets, if any item of the job has them."""
    with engine.connect() as conn:
        return conn.execute(select(items.c.secret).where(
            items.c.job_id == job_id, items.c.secret.is_not(None)).limit(1)).scalar()


def recent_jobs(engine: Engine, limit: int = 20) -> list[Progress]:
    return [p for p in (progress(engine, i) for i in job_ids(engine, limit=limit)) if p is not None]


ITEM_COLUMNS = (items.c.seq, items.c.row, items.c.key, items.c.state, items.c.attempts,
                items.c.code, items.c.message, items.c.result, items.c.secret, items.c.updated_at)


# The statements below are built once, their values bound at each call:
# building one is SQLAlchemy work in Python that cost a request more CPU
# than running the query (about 5 ms against 0.1 ms for the first failures
# on SQLite).
_PAGE = (select(*ITEM_COLUMNS)
         .where(items.c.job_id == bindparam("job_id"), items.c.seq > bindparam("after"))
         .order_by(items.c.seq).limit(bindparam("limit")))
_PAGE_IN_STATE = _PAGE.where(items.c.state == bindparam("state"))


def items_page(engine: Engine, job_id: int, state: str | None = None, after: int = -1,
               limit: int = 100) -> Sequence[Any]:
    """One keyset page: the job's items (or those in `state`) with seq > after,
    in input order. An index range scan, however deep the page."""
    values = {"job_id": job_id, "after": after, "limit": limit}
    with engine.connect() as conn:
        if state:
            return conn.execute(_PAGE_IN_STATE, {**values, "state": state}).all()
        return conn.execute(_PAGE, values).all()


FAILURE_COLUMNS = tuple(c for c in ITEM_COLUMNS if c.name != "secret")


def _first_failures_statement():
    """The first :limit items of each failed state (index range scans over
    (job, state, seq)), then the first :limit of those, state by state in
    FAILED's order and each in input order."""
    parts = [select(*FAILURE_COLUMNS, literal_column(str(rank)).label("rank"))
             .where(items.c.job_id == bindparam("job_id"), items.c.state == state)
             .order_by(items.c.seq).limit(bindparam("limit")).subquery()
             for rank, state in enumerate(FAILED)]
    each = union_all(*(select(*part.c) for part in parts)).subquery()
    return select(each).order_by(each.c.rank, each.c.seq).limit(bindparam("limit"))


_FIRST_FAILURES = _first_failures_statement()


def first_failures(engine: Engine, job_id: int, limit: int = 10) -> Sequence[Any]:
    """The job's first `limit` rejected, then failed, then unknown items, in
    input order (no secrets): `imshift status`'s and the API's examples."""
    with engine.connect() as conn:
        return conn.execute(_FIRST_FAILURES, {"job_id": job_id, "limit": limit}).all()


def item(engine: Engine, job_id: int, key: str) -> Any | None:
    """One item by its id in the input (unique per job)."""
    with engine.connect() as conn:
        return conn.execute(select(*ITEM_COLUMNS).where(items.c.job_id == job_id,
                                                        items.c.key == key)).first()


def job_ids(engine: Engine, before: int | None = None, limit: int = 20) -> list[int]:
    """Job ids, newest first, below `before` (keyset paging over the jobs)."""
    query = select(jobs.c.id)
    if before is not None:
        query = query.where(jobs.c.id < before)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(jobs.c.id.desc()).limit(limit)).scalars())


def results(engine: Engine, job_id: int, state: str | None = None,
            batch: int = 2000) -> Generator[Any, None, None]:
    """Every item of a job (or those in `state`) in input order, streamed
    in keyset pages so a million-item export never sits in memory."""
    after = -1
    while True:
        page = items_page(engine, job_id, state, after, batch)
        if not page:
            return
        yield from page
        after = page[-1].seq
