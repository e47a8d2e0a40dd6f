"""Following and steering a migration run: its stages' progress, and start,
pause, resume and cancel applied to the stage that is (or should be) running.

Runs are named `R<n>` wherever a job id could also be meant: jobs and runs
have separate id spaces, and a bare number is always a job.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import dramatiq
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from imshift.models import runs as run_rows
from imshift.models.tables import JobStatus, Run

from . import control
from .progress import Progress, progress

runs = Run.__table__
_RUN_REF = re.compile(r"(?:r|run)[-_ ]?(\d+)", re.IGNORECASE)


def parse_ref(text: str) -> tuple[str, int]:
    """("run", n) for `R<n>` (or run<n>), ("job", n) for a number."""
    text = text.strip()
    if text.isdigit():
        return "job", int(text)
    match = _RUN_REF.fullmatch(text)
    if match:
        return "run", int(match.group(1))
    raise control.JobError(f"{text!r} is neither a job id (a number) nor a run (R<number>)")


def name(run_id: int) -> str:
    return f"R{run_id}"


@dataclass
class RunProgress:
    run_id: int
    source_app: str
    app: str
    status: str
    created_at: float
    finished_at: float | None
    stages: list[tuple[str, Progress]] = field(default_factory=list)

    @property
    def current(self) -> tuple[str, Progress] | None:
        """The stage running or due next; None when all are finished."""
        return next(((s, p) for s, p in self.stages if p.status != JobStatus.FINISHED.value), None)


def run_progress(engine: Engine, run_id: int) -> RunProgress | None:
    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            return None
        stages = run_rows.stage_jobs(conn, run_id)
    listed = [(stage, progress(engine, job_id)) for stage, job_id, _ in stages]
    return RunProgress(run_id, row.source_app, row.app, run_rows.status(stages, row.status),
                       row.created_at, row.finished_at, [(s, p) for s, p in listed if p is not None])


def run_ids(engine: Engine, before: int | None = None, limit: int = 20) -> list[int]:
    """Run ids, newest first, below `before` (keyset paging over the runs)."""
    query = select(runs.c.id)
    if before is not None:
        query = query.where(runs.c.id < before)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(runs.c.id.desc()).limit(limit)).scalars())


def recent_runs(engine: Engine, limit: int = 10) -> list[RunProgress]:
    return [p for p in (run_progress(engine, i) for i in run_ids(engine, limit=limit)) if p is not None]


def _run(engine: Engine, run_id: int) -> RunProgress:
    p = run_progress(engine, run_id)
    if p is None:
        raise control.JobError(f"no run {name(run_id)}")
    return p


def _not_planning(p: RunProgress) -> None:
    """A run still being planned (or whose planner was killed) is steered as
    the run, never through its half-planned first stage's job."""
    if p.status == JobStatus.PLANNING.value:
        raise control.JobError(f"run {name(p.run_id)} is still being planned (or its planning was "
                               f"cut off): `imshift resume {name(p.run_id)}` carries the planning on; "
                               f"`imshift cancel {name(p.run_id)}` removes the run")


def start(engine: Engine, broker: dramatiq.Broker, run_id: int) -> int:
    """Start a planned run's first stage; the others follow by themselves."""
    p = _run(engine, run_id)
    _not_planning(p)
    first = p.stages[0][1]
    # A command killed after marking the run running but before starting its
    # first stage left that stage planned: starting it again is what is left.
    if p.status == JobStatus.CANCELLED.value or first.status != JobStatus.PLANNED.value:
        raise control.JobError(f"run {name(run_id)} is {p.status}; only a planned run starts "
                               f"(`imshift resume {name(run_id)}` carries on a paused one)")
    with engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == JobStatus.PLANNED.value)
                     .values(status=JobStatus.RUNNING.value))
    return control.start(engine, broker, first.job_id, stage_ok=True)  # of two racing, one wins


def pause(engine: Engine, run_id: int) -> str:
    """Pause the running stage; returns its name."""
    p = _run(engine, run_id)
    current = p.current
    if current is None or current[1].status != JobStatus.RUNNING.value:
        raise control.JobError(f"run {name(run_id)} is {p.status}: nothing runs to pause")
    control.pause(engine, current[1].job_id)
    return current[0]


def resume(engine: Engine, broker: dramatiq.Broker, run_id: int) -> str:
    """Carry on a paused or stopped run (or one whose runner is gone) from
    the stage it stood at; returns that stage's name."""
    p = _run(engine, run_id)
    if p.status == JobStatus.CANCELLED.value:
        raise control.JobError(f"run {name(run_id)} is cancelled")
    _not_planning(p)
    current = p.current
    if current is None:
        raise control.JobError(f"run {name(run_id)} is finished: `imshift results {name(run_id)}` "
                               "shows what failed")
    stage, stage_progress = current
    if stage_progress.status == JobStatus.PLANNED.value:
        if stage == p.stages[0][0]:
            start(engine, broker, run_id)
        else:  # the stage before it finished but the hand-over never came
            control.start(engine, broker, stage_progress.job_id, stage_ok=True)
        return stage
    control.resume(engine, broker, stage_progress.job_id)
    return stage


def cancel(engine: Engine, run_id: int) -> int:
    """Cancel every stage not yet finished; returns how many items were closed."""
    return sum(cancel_counts(engine, run_id).values())


def cancel_counts(engine: Engine, run_id: int) -> dict[str, int]:
    """Cancel every stage not yet finished; returns how many items ended in
    each state, over the stages (as control.cancel_counts)."""
    p = _run(engine, run_id)
    if p.status in (JobStatus.CANCELLED.value, JobStatus.FINISHED.value):
        raise control.JobError(f"run {name(run_id)} is {p.status}")
    with engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id)
                     .values(status=JobStatus.CANCELLED.value, finished_at=time.time()))
    ended: dict[str, int] = {"cancelled": 0}
    for _, stage_progress in p.stages:
        if stage_progress.status not in (JobStatus.FINISHED.value, JobStatus.CANCELLED.value):
            for state, n in control.cancel_counts(engine, stage_progress.job_id).items():
                ended[state] = ended.get(state, 0) + n
    return ended


def id_map_rows(engine: Engine, run_id: int, batch: int = 5000):
    """(kind, source id, target id) of the run, users first, streamed."""
    m = run_rows.id_map
    for kind in ("user", "group"):
        after = None
        while True:
            query = select(m.c.kind, m.c.source_id, m.c.target_id).where(m.c.run_id == run_id,
                                                                         m.c.kind == kind)
            if after is not None:
                query = query.where(m.c.source_id > after)
            with engine.connect() as conn:
                page = conn.execute(query.order_by(m.c.source_id).limit(batch)).all()
            if not page:
                break
            yield from page
            after = page[-1].source_id
