"""A migration run in the database: its stages in order, the hand-over from
one stage to the next, and the id map every later stage reads.

The hand-over happens in the transaction that records a stage's last
outcome, so a worker killed at any point leaves either the old stage
running or the next one running, never a run that stopped between them.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .store import finish_if_done
from .tables import IdMap, Item, Job, JobStatus, Run

STAGES = ("accounts", "friends", "groups", "members", "tokens", "verify")
# The stage whose items make the ids of each kind (its item keys are source ids).
MAKER = {"user": "accounts", "group": "groups"}

jobs = Job.__table__
items = Item.__table__
runs = Run.__table__
id_map = IdMap.__table__


def stage_jobs(conn: Connection, run_id: int) -> list[tuple[str, int, str]]:
    """(stage, job id, status) of the run's stages, in order."""
    rows = conn.execute(select(jobs.c.stage, jobs.c.id, jobs.c.status)
                        .where(jobs.c.run_id == run_id)).all()
    return sorted(((r.stage, r.id, r.status) for r in rows), key=lambda r: STAGES.index(r[0]))


def status(stages: Iterable[tuple[str, int, str]], own: str) -> str:
    """The run's status from its stages': the first one not finished says it."""
    if own in (JobStatus.PLANNING.value, JobStatus.CANCELLED.value):
        return own
    listed = list(stages)
    for _, _, s in listed:
        if s != JobStatus.FINISHED.value:
            if s == JobStatus.PLANNED.value and listed[0][2] != JobStatus.PLANNED.value:
                return JobStatus.RUNNING.value  # between two stages
            return s
    return JobStatus.FINISHED.value


def hand_over(conn: Connection, job_id: int, runner: str | None,
              now: float | None = None) -> tuple[int, int, int] | None:
    """Start the stage after the finished job `job_id` (a run's stage):
    returns (job id, total, chunk size) to queue once committed, or None
    when it was the last stage (the run is then finished) or not a stage."""
    now = time.time() if now is None else now
    run_id = conn.execute(select(jobs.c.run_id).where(jobs.c.id == job_id)).scalar()
    if run_id is None:
        return None
    for _, next_id, state in stage_jobs(conn, run_id):
        if state != JobStatus.PLANNED.value:
            continue
        started = conn.execute(update(jobs).where(jobs.c.id == next_id,
                                                  jobs.c.status == JobStatus.PLANNED.value)
                               .values(status=JobStatus.RUNNING.value, started_at=now,
                                       touched_at=now, runner=runner,
                                       runner_seen_at=now if runner else None)).rowcount
        if not started:
            return None  # another recorder handed over first
        if finish_if_done(conn, next_id):
            continue  # nothing to do in it (every row refused, or none): on to the next
        row = conn.execute(select(jobs.c.total, jobs.c.params).where(jobs.c.id == next_id)).one()
        return next_id, row.total, row.params["chunk_size"]
    conn.execute(update(runs).where(runs.c.id == run_id, runs.c.finished_at.is_(None))
                 .values(finished_at=now))
    return None


def remember(conn: Connection, run_id: int, kind: str, pairs: Mapping[str, str]) -> None:
    """Record source id -> target id (a repeat with the same answer is a no-op)."""
    if not pairs:
        return
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    statement = insert(id_map).values([{"run_id": run_id, "kind": kind, "source_id": s, "target_id": t}
                                       for s, t in pairs.items()])
    conn.execute(statement.on_conflict_do_update(
        index_elements=["run_id", "kind", "source_id"],
        set_={"target_id": statement.excluded.target_id}))


def target_ids(conn: Connection, run_id: int, kind: str, sources: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(sources))
    found: dict[str, str] = {}
    for lo in range(0, len(wanted), 5000):  # under every driver's parameter limit
        found.update(conn.execute(select(id_map.c.source_id, id_map.c.target_id).where(
            id_map.c.run_id == run_id, id_map.c.kind == kind,
            id_map.c.source_id.in_(wanted[lo:lo + 5000]))).all())
    return found


def why_missing(conn: Connection, run_id: int, kind: str, source_id: str) -> str:
    """Why a user or group has no id at the target, in words for a result."""
    noun = "user" if kind == "user" else "group"
    maker = conn.execute(select(jobs.c.id).where(jobs.c.run_id == run_id,
                                                 jobs.c.stage == MAKER[kind])).scalar()
    made = None if maker is None else conn.execute(
        select(items.c.state, items.c.message).where(items.c.job_id == maker,
                                                     items.c.key == source_id)).first()
    if made is None:
        return f"{noun} {source_id} is not in this run's {MAKER[kind]}"
    if made.state == "unknown":  # the create call was cut off: it may have landed
        return (f"{noun} {source_id} may exist at the target, but the call that makes it was cut "
                f"off before its answer (unknown): check it there; `imshift retry {maker} --unknown` "
                "makes it again")
    verb = "migrated" if kind == "user" else "created"
    reason = f": {made.state} {made.message!r}" if made.message else f": {made.state}"
    return f"{noun} {source_id} was not {verb}{reason}"
