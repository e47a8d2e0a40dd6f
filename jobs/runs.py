"""Migration runs: one request, planned as stages (accounts, friends,
groups, members, tokens, verify), each a job of its own kind.

Everything is planned up front, so a dry run reports every stage: each
input row becomes an item (rejected ones with the reason), references are
checked against the run's accounts (a pair or member naming a user the
accounts do not hold is rejected, so is a group over the target's size
limit), and each stage is estimated in vendor calls and time. Items name
source ids; the workers translate them through the run's id map, and an
item whose account or group did not make it ends `skipped`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import insert, literal, select, update
from sqlalchemy.engine import Engine

from imshift.models.runs import id_map, stage_jobs
from imshift.models.tables import Job, JobStatus, Run
from imshift.vendors.vocabulary import Operation

from . import planning_lease
from .inputs import InputError
from .listing import Pages
from .plan import discard
from .run_stages import OPERATIONS, StagePlan, StagePlanner
from . import source_groups
from .source_groups import GroupPages
from .target import Target

runs = Run.__table__
jobs = Job.__table__


@dataclass
class RunRequest:
    users: Path | None = None  # else the accounts are listed from the source (`source_pages`)
    friends: Path | None = None
    groups: Path | None = None
    tokens: bool = False
    verify: bool = False
    source_pages: Pages | None = field(default=None, repr=False)  # the source's user listing
    group_pages: GroupPages | None = field(default=None, repr=False)  # its groups, when no --groups
    since: int | None = None  # a delta re-run: what this earlier run finished is not sent again
    dry_run: bool = False  # only planned: a planning carried on by `resume` is not started either


@dataclass
class RunPlan:
    run_id: int
    stages: list[StagePlan]

    @property
    def seconds(self) -> float | None:
        times = [s.seconds for s in self.stages if s.report.pending]
        known = [t for t in times if t is not None]
        return sum(known) if len(known) == len(times) else None


class RunError(ValueError):
    """A run request that cannot be planned; nothing was created."""


def plan_run(engine: Engine, source_app: str, target: Target, request: RunRequest, *,
             chunk_size: int, progress: Callable[[str, int], None] | None = None) -> RunPlan:
    """Plan every stage of a run from `source_app` into `target`."""
    if request.users is None and request.source_pages is None:
        raise RunError("give --users (an export of the accounts): the source cannot list its users")
    groups = request.groups is not None or request.group_pages is not None
    for stage, wanted in (("friends", request.friends is not None), ("groups", groups)):
        if wanted:
            target.require(OPERATIONS[stage])
    if groups:
        target.require(Operation.ADD_MEMBERS)
    if request.tokens:
        target.require(Operation.ISSUE_TOKEN)
    if request.verify:
        target.require(Operation.GET_PROFILES)
    me = planning_lease.planner_id()
    with engine.begin() as conn:
        run_id = conn.execute(insert(runs).values(
            source_app=source_app, app=target.app, status=JobStatus.PLANNING.value,
            params={**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(request).items()
                       if k not in ("source_pages", "group_pages")},
                    "groups_listed": request.group_pages is not None},
            since=request.since, created_at=time.time(), planner=me, planner_seen_at=time.time(),
            list_state=None if request.users is not None else "listing").returning(runs.c.id)).scalar_one()
        if request.since is not None:
            _check_since(conn, request.since, source_app, target.app)
            # What the earlier run made keeps its ids: later stages find them here.
            conn.execute(id_map.insert().from_select(
                ["run_id", "kind", "source_id", "target_id"],
                select(literal(run_id), id_map.c.kind, id_map.c.source_id, id_map.c.target_id)
                .where(id_map.c.run_id == request.since)))
    return _plan_stages(engine, run_id, source_app, target, request, chunk_size, progress, me)


def resume_planning(engine: Engine, run_id: int, target: Target, pages: Pages | None, *,
                    chunk_size: int, progress: Callable[[str, int], None] | None = None,
                    group_pages: GroupPages | None = None) -> RunPlan:
    """Carry on the planning of a run whose planner is gone (killed): the
    accounts go on from the last listed page stored (or are kept, planned
    whole), every later stage is planned again from its input (groups
    listed from the source: listed again, `group_pages`)."""
    me = planning_lease.planner_id()
    with engine.begin() as conn:
        run = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if run is None:
            raise RunError(f"no run R{run_id}")
        if run.status != JobStatus.PLANNING.value:
            raise RunError(f"run R{run_id} is {run.status}, not being planned")
        try:
            planning_lease.take(conn, run, me)
        except planning_lease.PlanningBusy as exc:
            raise RunError(str(exc)) from None
    p = run.params
    request = RunRequest(**{k: (Path(p[k]) if p.get(k) is not None else None)
                            for k in ("users", "friends", "groups")},
                         tokens=bool(p.get("tokens")), verify=bool(p.get("verify")),
                         since=run.since, dry_run=bool(p.get("dry_run")), source_pages=pages,
                         group_pages=group_pages if p.get("groups_listed") else None)
    if request.users is None and pages is None:
        raise RunError(f"run R{run_id} lists its accounts from {run.source_app}, which cannot list them")
    if p.get("groups_listed") and group_pages is None:
        raise RunError(f"run R{run_id} lists its groups from {run.source_app}, which cannot list them")
    with engine.connect() as conn:
        cut_off = stage_jobs(conn, run_id)
    for stage, job_id, status in cut_off:  # what the cut-off planning left that is not kept
        if stage != "accounts" or (status != JobStatus.PLANNED.value and request.users is not None):
            discard(engine, job_id)
    kept = next(((job_id, status) for stage, job_id, status in cut_off if stage == "accounts"
                 and (status == JobStatus.PLANNED.value or request.users is None)), None)
    return _plan_stages(engine, run_id, run.source_app, target, request, chunk_size, progress, me,
                        kept)


def planning_request(engine: Engine, run_id: int) -> dict[str, Any] | None:
    """The params of a run being planned (None when it is not)."""
    with engine.connect() as conn:
        row = conn.execute(select(runs.c.status, runs.c.params).where(runs.c.id == run_id)).first()
    return row.params if row is not None and row.status == JobStatus.PLANNING.value else None


def _plan_stages(engine: Engine, run_id: int, source_app: str, target: Target, request: RunRequest,
                 chunk_size: int, progress: Callable[[str, int], None] | None, me: str,
                 kept: tuple[int, str] | None = None) -> RunPlan:
    planner = StagePlanner(engine, run_id, source_app, target, chunk_size, progress, request.since)
    planner.me, planner.kept = me, kept
    try:
        with planning_lease.beating(engine, run_id, me):
            planner.accounts(request.users, request.source_pages)
            if request.friends is not None:
                planner.friends(request.friends)
            if request.groups is not None:
                planner.groups(request.groups)
            elif request.group_pages is not None:  # the source's own groups, stored page by page
                source_groups.list_groups(engine, run_id, me, request.group_pages, progress)
                planner.groups(None, source_groups.stored_rows(engine, run_id))
            if request.tokens:
                planner.tokens()
            if request.verify:
                planner.verify()
    except BaseException:
        if _ours(engine, run_id, me):
            remove(engine, run_id)
        raise
    with engine.begin() as conn:
        planned = conn.execute(update(runs).where(
            runs.c.id == run_id, runs.c.planner == me, runs.c.status == JobStatus.PLANNING.value)
            .values(status=JobStatus.PLANNED.value, planner=None, planner_seen_at=None)).rowcount
        if planned:
            source_groups.forget(conn, run_id)  # planned whole: the listed groups are its items now
    if not planned:
        raise RunError(f"run R{run_id} was cancelled or taken over by another command while planned")
    return RunPlan(run_id, planner.stages)


def _ours(engine: Engine, run_id: int, me: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(runs.c.planner).where(runs.c.id == run_id)).scalar() == me


def _check_since(conn, since: int, source_app: str, app: str) -> None:
    earlier = conn.execute(select(runs.c.source_app, runs.c.app).where(runs.c.id == since)).first()
    if earlier is None:
        raise RunError(f"--since: no run R{since}")
    if (earlier.source_app, earlier.app) != (source_app, app):
        raise RunError(f"--since R{since} moved {earlier.source_app} -> {earlier.app}, "
                       f"not {source_app} -> {app}")


def remove(engine: Engine, run_id: int) -> None:
    """Delete a run that was never planned whole, with its stages."""
    with engine.connect() as conn:
        job_ids = conn.execute(select(jobs.c.id).where(jobs.c.run_id == run_id)).scalars().all()
    for job_id in job_ids:
        discard(engine, job_id)
    with engine.begin() as conn:
        conn.execute(id_map.delete().where(id_map.c.run_id == run_id))
        source_groups.forget(conn, run_id)
        conn.execute(runs.delete().where(runs.c.id == run_id))


def stage_of(engine: Engine, job_id: int) -> tuple[int, str] | None:
    """(run id, stage) when the job is a run's stage."""
    with engine.connect() as conn:
        row = conn.execute(select(jobs.c.run_id, jobs.c.stage).where(jobs.c.id == job_id)).first()
    return (row.run_id, row.stage) if row and row.run_id is not None else None


def check_input(path: Path | None) -> None:
    if path is not None and not Path(path).is_file():
        raise InputError(f"{path}: no such file")
