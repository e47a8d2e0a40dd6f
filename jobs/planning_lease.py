"""Who plans a migration run: the planning process ("host:pid") and its
heartbeat on the run's row, so `imshift resume R<n>` carries on a planning
whose process is gone (killed mid-listing) and never one still at work.
Each stored page of a listing checks the run is still this process's
(jobs/runs.py), so a planner taken over stores nothing more."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Iterator

from sqlalchemy import update
from sqlalchemy.engine import Connection, Engine

from imshift.models.tables import JobStatus, Run
from imshift.workers.embedded import BEAT, runner_gone

log = logging.getLogger("imshift.jobs")
runs = Run.__table__


class PlanningBusy(ValueError):
    """The run is being planned by a process that is not gone."""


def planner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def beating(engine: Engine, run_id: int, me: str) -> Iterator[None]:
    """Keep the run's planner heartbeat fresh while the body plans it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT):
            try:
                with engine.begin() as conn:
                    conn.execute(update(runs).where(runs.c.id == run_id, runs.c.planner == me)
                                 .values(planner_seen_at=time.time()))
            except Exception:  # the database may be restarting: beat again next time
                log.warning("planner heartbeat failed; retrying in %.0f s", BEAT, exc_info=True)

    thread = threading.Thread(target=beat, name=f"imshift-planner-R{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=BEAT + 1)


def take(conn: Connection, run, me: str, now: float | None = None) -> None:
    """Make `me` the planner of `run` (a row of a run being planned), if
    its planner is gone: one compare-and-set, so of two resumes one wins."""
    now = time.time() if now is None else now
    name = f"R{run.id}"
    if run.planner and not runner_gone(run.planner, run.planner_seen_at, now):
        seen = max(0.0, now - (run.planner_seen_at or now))
        raise PlanningBusy(f"run {name} is being planned by {run.planner} (seen {seen:.0f} s ago): "
                           f"wait for it, or `imshift cancel {name}` removes the run")
    taken = conn.execute(update(runs).where(
        runs.c.id == run.id, runs.c.status == JobStatus.PLANNING.value,
        runs.c.planner.is_(None) if run.planner is None else runs.c.planner == run.planner,
        runs.c.planner_seen_at.is_(None) if run.planner_seen_at is None
        else runs.c.planner_seen_at == run.planner_seen_at)
        .values(planner=me, planner_seen_at=now)).rowcount
    if not taken:
        raise PlanningBusy(f"run {name} was taken over by another command just now")
