"""Liveness when the queue forgets: a running job that has made no progress
for `stale_after` seconds gets the chunks that still have open items sent
again (a Redis restart loses queued messages; the database does not).
Re-sent chunks are harmless: claims let only one worker take an item."""

from __future__ import annotations

import logging
import threading
import time

import dramatiq
from sqlalchemy import and_, or_, select, update

from imshift.models import store
from imshift.models.tables import Job, JobStatus

from . import relay
from .embedded import runner_gone, runner_id
from .enqueue import enqueue_ranges, open_ranges
from .runtime import Runtime

log = logging.getLogger("imshift.workers")
jobs = Job.__table__


def sweep(runtime: Runtime, now: float | None = None) -> int:
    """Re-send the open chunks of stale running jobs; returns how many were sent.

    Only jobs this process may run: the workers' jobs with Redis, its own
    jobs in the embedded mode, and a job whose embedded runner is gone, which
    it takes over. A half-planned job is never running, so it is never swept."""
    now = time.time() if now is None else now
    cutoff = now - runtime.tuning.stale_after
    me = runner_id(runtime.broker)
    with runtime.engine.begin() as conn:
        stale = conn.execute(select(jobs.c.id, jobs.c.params, jobs.c.runner, jobs.c.runner_seen_at)
                             .where(jobs.c.status == JobStatus.RUNNING.value,
                                    or_(jobs.c.touched_at < cutoff,
                                        and_(jobs.c.touched_at.is_(None), jobs.c.started_at < cutoff)))
                             ).all()
        plans = []
        for job_id, params, runner, seen_at in stale:
            if runner != me and not (runner and runner_gone(runner, seen_at, now)
                                     and store.take_over(conn, job_id, runner, seen_at, me, now)):
                continue  # another live runner's job, or one for the workers
            size = params.get("chunk_size", runtime.tuning.chunk_size)
            plans.append((job_id, open_ranges(conn, job_id, size)))
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(touched_at=now))
    sent = wake_bridges(runtime, now)
    for job_id, ranges in plans:
        sent += enqueue_ranges(runtime.broker, job_id, ranges)
        log.warning("job %s made no progress for %.0f s: re-sent %d chunks",
                    job_id, runtime.tuning.stale_after, len(ranges))
    return sent


def wake_bridges(runtime: Runtime, now: float) -> int:
    """Queue a relayer for each active bridge with messages waiting and no
    live relayer (a wake lost with the queue, a relayer that died)."""
    with runtime.engine.begin() as conn:
        stale = [b for b in relay.stale_bridges(conn, now) if relay.wake_needed(conn, b, now)]
    for bid in stale:
        runtime.broker.actors["relay_bridge"].send(bid)
        log.warning("bridge B%s had messages waiting and no relayer: woken", bid)
    return len(stale)


class Sweeper(dramatiq.Middleware):
    """Runs `sweep` in each worker process; with Redis, a lock lets one
    process per interval do it."""

    def __init__(self, runtime: Runtime, redis_client=None, interval: float | None = None):
        self.runtime = runtime
        self.redis = redis_client
        self.interval = interval or max(1.0, runtime.tuning.stale_after / 4)
        self._stop = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        threading.Thread(target=self._loop, name="imshift-sweeper", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.redis is None or self.redis.set("imshift:sweeper", "1", nx=True,
                                                        px=int(self.interval * 1000)):
                    sweep(self.runtime)
            except Exception:  # the database or Redis may be restarting: try next time
                log.warning("sweep failed; retrying in %.0f s", self.interval, exc_info=True)
