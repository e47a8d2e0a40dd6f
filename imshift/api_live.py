"""What the API shows of a job while it runs (imshift/api.py,
imshift/api_runs.py): its rate over the last minutes, kept in memory
since the database keeps counts and not their history; its first failures,
read at most once a second; the answers of the routes viewers poll, kept
a quarter of a second and shared (Kept); and the job and item as the
response models (imshift/api_models.py) hold them."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, Callable, Hashable, TypeVar

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from imshift.jobs.progress import FAILED, Progress, first_failures, job_ids, progress
from imshift.models.tables import ItemState, JobStatus

from .api_models import ItemOut

log = logging.getLogger("imshift.api")
# How old a polled answer may be (the API's description says so): read again
# once half this old, given out until this old, or while that read is under
# way (on a busy server a worker thread's read waits for the GIL many times:
# 2 queries took 40 ms with 1,000 requests/s going on), until KEPT_AT_MOST.
KEPT_SECONDS, KEPT_AT_MOST = 0.25, 1.0
T = TypeVar("T")


class Kept:
    """Answers read from the database, kept `ttl` seconds and shared by every
    request that asks meanwhile: N viewers polling a job cost the database
    one read each `ttl`, not N, and a request served from here makes no
    thread hop and no serialisation (bench api --concurrent). An answer is
    computed in a worker thread, once for all the requests that wait for it;
    one past half its `ttl` is read again ahead while it is still given out
    (until `ttl`, or `limit` while that read is under way), so while viewers
    poll none waits for the database. `forget` drops everything, so a change
    made through the API shows in the very next answer; a change made
    elsewhere (workers, the CLI) shows within `ttl` (`limit` when busy)."""

    def __init__(self, ttl: float = KEPT_SECONDS, limit: float = KEPT_AT_MOST, keep: int = 1000):
        self.ttl, self.limit, self.keep = ttl, limit, keep
        self._kept: dict[Hashable, tuple[float, Any]] = {}
        self._computing: dict[Hashable, asyncio.Task] = {}
        self._generation = 0
        self._lock = threading.Lock()  # forget() is called from the routes' worker threads

    async def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        kept = self._kept.get(key)
        if kept is not None:
            age = time.monotonic() - kept[0]
            if age < self.ttl / 2:
                return kept[1]
            if age < self.ttl or (age < self.limit and key in self._computing):
                self._start(key, compute)  # read ahead: while viewers poll, none waits for a read
                return kept[1]
        return await asyncio.shield(self._start(key, compute))  # one cut off leaves it to the others

    def _start(self, key: Hashable, compute: Callable[[], T]) -> asyncio.Task:
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._computing.get(key)
            if task is None or task.get_loop() is not loop:  # tests run each request in a new loop
                task = loop.create_task(self._compute(key, compute))
                task.add_done_callback(_retrieved)
                self._computing[key] = task
            return task

    async def _compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            generation, started = self._generation, time.monotonic()
        try:
            value = await run_in_threadpool(compute)
        finally:
            with self._lock:
                if self._computing.get(key) is asyncio.current_task():
                    del self._computing[key]
        with self._lock:
            if generation == self._generation:  # not read before a change that forget() saw
                if len(self._kept) >= self.keep:
                    self._kept = {k: v for k, v in self._kept.items() if started - v[0] < self.limit}
                self._kept[key] = (started, value)
        return value

    def forget(self) -> None:
        """Drop every answer kept or being computed (from any thread)."""
        with self._lock:
            self._generation += 1
            self._kept, self._computing = {}, {}


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # every waiter may have gone: not "never retrieved"


def json_body(model: type[BaseModel], value: dict[str, Any]) -> bytes:
    """`value` checked by its response model and serialised, as FastAPI
    would at each request: done once for every request that shares it."""
    return model.model_validate(value).model_dump_json().encode()


def json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


class Rates:
    """Samples of each job's done count, at most one a second, kept ten
    minutes: the current rate and the page's chart. The database keeps
    counts, not their history."""

    def __init__(self, window: float = 60.0, keep: float = 600.0):
        self.window, self.keep = window, keep
        self._samples: dict[int, collections.deque] = {}
        self._lock = threading.Lock()

    def observe(self, p: Progress, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._lock:
            samples = self._samples.setdefault(p.job_id, collections.deque())
            settled = p.status != JobStatus.RUNNING.value
            if not samples or now - samples[-1][0] >= 1.0 or (settled and samples[-1][1] != p.done):
                samples.append((now, p.done))  # at most one a second while it runs
            while samples and now - samples[0][0] > self.keep:
                samples.popleft()
            recent = [s for s in samples if now - s[0] <= self.window]
        if p.status != JobStatus.RUNNING.value:
            return p.rate
        # Workers record whole chunks: a rate over a few seconds jumps, one over a minute does not.
        if len(recent) >= 2 and recent[-1][0] - recent[0][0] >= 5:
            return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        return p.rate

    def history(self, job_id: int) -> list[dict[str, float]]:
        """The samples as RatePoint fields: plain dicts, which the response
        model checks in one pass (600 model objects cost 3 ms a request)."""
        with self._lock:
            return [{"t": t, "done": d} for t, d in self._samples.get(job_id, ())]


# -- the first failures, kept a second ------------------------------------------------------

class FirstFailures:
    """Each job's first failed items, read at most once a `ttl` while the
    job runs: a page polling a job every second while workers write would
    otherwise read the items table on every poll (bench/api.py). A job that
    is not running is read again when its status or failed counts moved,
    so a job that has just settled shows its final failures."""

    def __init__(self, ttl: float = 1.0, limit: int = 10):
        self.ttl, self.limit = ttl, limit
        self._kept: dict[int, tuple[float, tuple, list[ItemOut]]] = {}
        self._lock = threading.Lock()

    def get(self, engine, p: Progress, now: float | None = None) -> list[ItemOut]:
        now = time.monotonic() if now is None else now
        seen = (p.status, tuple(p.counts.get(s, 0) for s in FAILED))
        with self._lock:
            kept = self._kept.get(p.job_id)
        if kept is not None and now - kept[0] < self.ttl and kept[1][0] == p.status and (
                p.status == JobStatus.RUNNING.value or kept[1] == seen):
            return kept[2]
        found = [item_out(r) for r in first_failures(engine, p.job_id, self.limit)] \
            if any(seen[1]) else []
        with self._lock:
            if len(self._kept) > 200:  # forget the jobs no one asked about lately
                self._kept = {j: k for j, k in self._kept.items() if now - k[0] < self.ttl}
            self._kept[p.job_id] = (now, seen, found)
        return found


def job_out(p: Progress, rates: Rates) -> dict[str, Any]:
    rate = rates.observe(p)
    return dict(id=p.job_id, kind=p.kind, operation=p.operation, app=p.app, status=p.status,
                total=p.total, done=p.completed, cancelled=p.counts.get(ItemState.CANCELLED.value, 0),
                counts=p.counts, rate=rate, eta_seconds=p.eta(rate), started_at=p.started_at,
                finished_at=p.finished_at, stop_reason=p.stop_reason,
                idle_seconds=p.idle_seconds() if p.status == JobStatus.RUNNING.value else None)


def item_out(row: Any) -> ItemOut:
    return ItemOut(seq=row.seq, row=row.row, id=row.key, outcome=row.state, attempts=row.attempts,
                   code=row.code, message=row.message, result=row.result, updated_at=row.updated_at)


async def sample_rates(app: FastAPI) -> None:
    """Running jobs' done counts every two seconds: the chart has history
    before the page opens."""
    ctx = app.state.ctx
    while True:
        def once() -> None:
            for job_id in job_ids(ctx.engine, limit=20):
                p = progress(ctx.engine, job_id)
                if p is not None and p.status == JobStatus.RUNNING.value:
                    app.state.rates.observe(p)
        try:
            await asyncio.to_thread(once)
        except Exception as exc:  # the database is down: the requests say so
            log.debug("rate sampler: %s", exc)
        await asyncio.sleep(2.0)

