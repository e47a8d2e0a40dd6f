"""The run commands: `imshift migrate run` plans and runs a whole migration
(accounts, friends, groups, members, tokens, verify), `imshift idmap`; and
the steering commands (start, retry, cancel, pause, resume), which take a
job or a run as `R<n>` (resuming a run may carry its cut-off planning on).
Status and results of a run: imshift/reportcli.py."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from imshift.jobs import control, run_control, runs, source_groups
from imshift.jobs.inputs import InputError
from imshift.jobs.progress import Progress, progress
from imshift.jobs.run_control import name
from imshift.models.tables import ItemState, JobStatus
from imshift.vendors.vocabulary import Operation, Unsupported

from .appcheck import refuse_unless_reached
from .clibase import (Detach, DryRun, JobRef, check_broker, console, fail, find_run, follow_job,
                      follow_run, load_context, need_key, queue_job, queue_run, ref_of, start_job,
                      target_of)
from .context import Context
from .watch import fmt_seconds

FilePath = Optional[Path]


def migrate_run(
    source: Annotated[str, typer.Option("--from", help="The app the data comes from.")],
    target: Annotated[str, typer.Option("--to", help="The app to move it to.")],
    users: Annotated[FilePath, typer.Option(help="Accounts: .csv/.jsonl with user_id, name, "
                                            "avatar and the target's profile fields. Without it "
                                            "they are listed from the source (OpenIM, Maxim).")] = None,
    friends: Annotated[FilePath, typer.Option(help="Friend pairs: .csv with user_id,friend_id "
                                              "(each pair once, either way round).")] = None,
    groups: Annotated[FilePath, typer.Option(help='Groups: .jsonl of {"group_id", "name", '
                                             '"owner", "members": [...]}. Without it they are '
                                             'listed from the source where it can (OpenIM v3).')] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Issue a new token per migrated account "
                                         "(kept encrypted with IMSHIFT_TOKEN_KEY).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read everything back through the "
                                         "target's API and report each difference.")] = False,
    since: Annotated[Optional[str], typer.Option(help="A delta re-run (cut-over day): send only "
                                                 "what this earlier run (R<n>) did not finish.")] = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Migrate accounts, then friends, groups and members, then tokens, then
    verify, as one resumable run (`R<n>`). Each stage starts when the one
    before it has finished; what names an account or group that did not make
    it ends `skipped` with the reason."""
    ctx = load_context()
    if source != target:
        target_of(ctx, source)
    tgt = target_of(ctx, target)
    need_key(ctx, target, Operation.REGISTER.value)
    if tokens:
        need_key(ctx, target, Operation.ISSUE_TOKEN.value)
    if not dry_run:
        check_broker(ctx)
    else:  # a dry run promises the run would start: the apps it calls must take their credentials
        lists = users is None or (groups is None and Operation.LIST_GROUPS in ctx.target(source).capabilities)
        refuse_unless_reached(ctx, [target, source] if lists else [target])
    earlier = None
    if since is not None:
        try:
            kind, earlier = run_control.parse_ref(since)
        except control.JobError as exc:
            fail(f"--since: {exc}")
        if kind != "run":
            fail("--since takes a run (R<n>), not a job")
    request = runs.RunRequest(users=users, friends=friends, groups=groups, tokens=tokens,
                              verify=verify, since=earlier, dry_run=dry_run)
    if users is None:
        if not ctx.target(source).capabilities & {Operation.LIST_USERS}:
            fail(f"give --users (an export of the accounts): {source!r} "
                 f"({ctx.settings.app(source).vendor}) cannot list its users through its API")
        request.source_pages = source_pages(ctx, source)
    no_groups = None
    if groups is None:  # the source's own groups, where it can list them
        if Operation.LIST_GROUPS in ctx.target(source).capabilities:
            request.group_pages = source_pages(ctx, source, "list_group_pages")
        else:
            no_groups = source_groups.cannot_list(ctx.app(source).api)
    for path in (users, friends, groups):
        try:
            runs.check_input(path)
        except InputError as exc:
            fail(f"{exc}. Nothing was created.")
    plan = _planned(lambda progress: runs.plan_run(ctx.engine, source, tgt, request,
                                                   chunk_size=ctx.settings.chunk_size, progress=progress),
                    "Nothing was created.")
    print_plan(plan, target)
    if no_groups:
        console.print(f"  {no_groups}", highlight=False)
    if dry_run:
        console.print(f"Dry run: nothing sent. Start it with `imshift start {name(plan.run_id)}`.")
        return
    _start(ctx, plan.run_id, detach)


def _planned(planning, nothing: str) -> runs.RunPlan:
    """A run planned (or its planning carried on), its refusals one line each."""
    try:
        with console.status("reading and checking the inputs...") as status:
            return planning(lambda stage, n: status.update(
                f"reading and checking the {stage}: {n:,} rows"))
    except (InputError, runs.RunError) as exc:
        fail(f"{exc}\n{nothing}")
    except Unsupported as exc:
        fail(f"{exc}; see `imshift vendors`. {nothing}")


def carry_on_planning(ctx: Context, run_id: int, detach: bool) -> None:
    """`resume` of a run whose planning was cut off (its command killed):
    the planning goes on where it stopped, then the run starts (unless it
    was a dry run)."""
    p = find_run(ctx, run_id)
    params = runs.planning_request(ctx.engine, run_id) or {}
    tgt = target_of(ctx, p.app)
    pages = None
    if params.get("users") is None:
        if not ctx.target(p.source_app).capabilities & {Operation.LIST_USERS}:
            fail(f"run {name(run_id)} lists its accounts from {p.source_app!r}, which cannot list them")
        pages = source_pages(ctx, p.source_app)
    group_pages = None
    if params.get("groups_listed"):
        if not ctx.target(p.source_app).capabilities & {Operation.LIST_GROUPS}:
            fail(f"run {name(run_id)} lists its groups from {p.source_app!r}, which cannot list them")
        group_pages = source_pages(ctx, p.source_app, "list_group_pages")
    if not params.get("dry_run"):
        check_broker(ctx)
    plan = _planned(lambda progress: runs.resume_planning(ctx.engine, run_id, tgt, pages,
                                                          chunk_size=ctx.settings.chunk_size,
                                                          progress=progress, group_pages=group_pages),
                    f"`imshift cancel {name(run_id)}` removes the run.")
    console.print(f"run {name(run_id)}: planning carried on")
    print_plan(plan, p.app)
    if params.get("dry_run"):
        console.print(f"Dry run: nothing sent. Start it with `imshift start {name(run_id)}`.")
        return
    _start(ctx, run_id, detach)


def source_pages(ctx: Context, app: str, listing: str = "list_user_pages"):
    """The source app's user listing with profiles (or `listing`: its
    groups, "list_group_pages"), within its rates."""
    from aiolimiter import AsyncLimiter

    rates = ctx.rates(app)
    limiters: dict[str, AsyncLimiter] = {}

    async def throttle(key: str, weight: int) -> None:
        rate = rates.get(key)
        if rate:
            limiter = limiters.setdefault(key, AsyncLimiter(1, 1 / rate))
            for _ in range(weight):
                await limiter.acquire()

    async def pages(cursor):
        client = ctx.client(app, throttle=throttle)
        try:
            async for page in getattr(client, listing)(cursor):
                yield page
        finally:
            await client.http.aclose()

    return pages


def print_plan(plan: runs.RunPlan, app: str) -> None:
    """The plan's table: each stage's items, refusals, vendor calls and estimated time."""
    table = Table(title=f"run {name(plan.run_id)} into {app}: the plan")
    for column in ("stage", "job", "items", "to send", "rejected", "done before", "vendor calls",
                   "estimated"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in plan.stages:
        r = s.report
        table.add_row(s.stage, str(s.job_id), f"{r.total:,}", f"{r.pending:,}",
                      f"{r.invalid + r.duplicates:,}", f"{r.done:,}", f"{s.calls:,}",
                      fmt_seconds(s.seconds) if s.seconds is not None else "?")
    table.add_row("total", "", "", "", "", "", f"{sum(s.calls for s in plan.stages):,}",
                  fmt_seconds(plan.seconds) if plan.seconds is not None else "?")
    console.print(table)
    for s in plan.stages:
        if s.ignored_columns:
            console.print(f"  {s.stage}: columns the target has no field for (ignored): "
                          f"{', '.join(s.ignored_columns)}")
        for row, key, reason in s.report.examples[:5]:
            console.print(f"  {s.stage} row {row} ({key[:40]}): {reason}", highlight=False)
        if len(s.report.examples) > 5 or (s.report.examples and s.report.invalid + s.report.duplicates > 5):
            console.print(f"  ... all: `imshift results {name(plan.run_id)} --stage {s.stage} "
                          "--outcome rejected`")


def _start(ctx: Context, run_id: int, detach: bool) -> None:
    queue_run(ctx, run_id, lambda: run_control.start(ctx.engine, ctx.broker, run_id))
    follow_run(ctx, run_id, detach)


def idmap(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run: R<n>.")],
    format: Annotated[str, typer.Option(help="csv or jsonl.")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Source id -> target id of a run, users then groups, as the target answered."""
    if format not in ("csv", "jsonl"):
        fail("--format is csv or jsonl")
    try:
        kind, run_id = run_control.parse_ref(run)
    except control.JobError as exc:
        fail(str(exc))
    if kind != "run":
        fail(f"{run!r} is a job id; idmap takes a run (R<n>)")
    ctx = load_context()
    find_run(ctx, run_id)
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        writer = csv.writer(out) if format == "csv" else None
        if writer:
            writer.writerow(["kind", "source_id", "target_id"])
        for row in run_control.id_map_rows(ctx.engine, run_id):
            if writer:
                writer.writerow(row)  # ids exact: they are loaded back
            else:
                out.write(json.dumps({"kind": row[0], "source_id": row[1], "target_id": row[2]},
                                     ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()


def _steer_run(ctx: Context, action: str, run_id: int, detach: bool = False) -> None:
    """start, pause, resume, cancel applied to a run."""
    find_run(ctx, run_id)
    try:
        if action == "pause":
            stage = run_control.pause(ctx.engine, run_id)
            console.print(f"run {name(run_id)} paused at its {stage} stage")
            return
        if action == "cancel":
            ended = run_control.cancel_counts(ctx.engine, run_id)
            ended.pop("removed", None)  # a stage never planned whole: its rows were never items
            console.print(f"run {name(run_id)} cancelled: {control.cancelled_text(ended)}",
                          highlight=False)
            return
    except control.JobError as exc:
        fail(str(exc))
    p = find_run(ctx, run_id)
    if action == "resume" and p.status == JobStatus.PLANNING.value:
        carry_on_planning(ctx, run_id, detach)
        return
    target_of(ctx, p.app)
    check_broker(ctx)
    if action == "start":
        queue_run(ctx, run_id, lambda: run_control.start(ctx.engine, ctx.broker, run_id))
    else:
        stage = queue_run(ctx, run_id, lambda: run_control.resume(ctx.engine, ctx.broker, run_id))
        console.print(f"run {name(run_id)} resumed at its {stage} stage")
    follow_run(ctx, run_id, detach)


def _runnable(ctx: Context, job_id: int) -> Progress:
    """What must hold before a job is started, resumed or retried: its app's
    settings are valid, a key is set where results need one, Redis answers."""
    p = progress(ctx.engine, job_id)
    if p is None:
        fail(f"no job {job_id}")
    target_of(ctx, p.app)
    need_key(ctx, p.app, p.operation, note=False)
    check_broker(ctx)
    return p


def start(ref: JobRef, detach: Detach = False) -> None:
    """Run a job or a run planned with --dry-run."""
    kind, job = ref_of(ref)
    ctx = load_context()
    if kind == "run":
        return _steer_run(ctx, "start", job, detach)
    _runnable(ctx, job)
    start_job(ctx, job, detach)


def retry(
    ref: JobRef,
    unknown: Annotated[bool, typer.Option("--unknown", help="Also re-send items whose send may "
                                          "have been delivered already.")] = False,
    detach: Detach = False,
) -> None:
    """Run the failed items of a job again (rejected by the vendor, out of attempts)."""
    kind, job = ref_of(ref)
    if kind == "run":
        fail("retry takes a job: `imshift results R<n>` names each stage's job; retry the "
             "stage's job (the stages after it are not re-run)")
    ctx = load_context()
    _runnable(ctx, job)
    moved = queue_job(ctx, job, lambda: control.retry(ctx.engine, ctx.broker, job,
                                                      include_unknown=unknown))
    console.print(f"{moved} items of job {job} put back to work")
    if moved:
        follow_job(ctx, job, detach)


def _steer(action, ref: str, done: str) -> None:
    kind, job = ref_of(ref)
    ctx = load_context()
    if kind == "run":
        return _steer_run(ctx, {"cancelled": "cancel", "paused": "pause"}[done], job)
    try:
        counts = action(ctx, job)
    except control.JobError as exc:
        fail(str(exc))
    console.print(f"job {job} {done}" + (f": {control.cancelled_text(counts)}" if counts else ""),
                  highlight=False)


def cancel(ref: JobRef) -> None:
    """Stop a job (or every stage of a run) for good; its pending items end cancelled."""
    _steer(lambda ctx, j: control.cancel_counts(ctx.engine, j), ref, "cancelled")


def pause(ref: JobRef) -> None:
    """Pause a running job (or a run's running stage); workers finish the chunks they hold."""
    _steer(lambda ctx, j: control.pause(ctx.engine, j), ref, "paused")


def resume(ref: JobRef, detach: Detach = False) -> None:
    """Resume a paused job or run, one stopped by an auth failure once fixed,
    or one whose command was killed."""
    kind, job = ref_of(ref)
    ctx = load_context()
    if kind == "run":
        return _steer_run(ctx, "resume", job, detach)
    p = _runnable(ctx, job)
    if p.status == JobStatus.FINISHED.value:
        left = sum(p.counts.get(s.value, 0) for s in (ItemState.REJECTED, ItemState.FAILED,
                                                     ItemState.UNKNOWN))
        hint = (f"`imshift retry {job}` runs its rejected and failed items again "
                f"(--unknown: also the unknown sends)" if left else "nothing is left to do")
        fail(f"job {job} is finished: {hint}")
    queue_job(ctx, job, lambda: control.resume(ctx.engine, ctx.broker, job))
    follow_job(ctx, job, detach)
