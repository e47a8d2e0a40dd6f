"""The run commands: `imshift migrate run` plans and runs a whole migration
(accounts, friends, groups, members, tokens, verify); status, results,
idmap and the steering commands take a run as `R<n>`."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from imshift.jobs import control, run_control, runs, source_groups
from imshift.jobs.exports import RESULT_FIELDS, write_record
from imshift.jobs.inputs import InputError
from imshift.jobs.run_control import RunProgress, name
from imshift.models.tables import JobStatus
from imshift.vendors.vocabulary import Operation, Unsupported

from . import reportcli
from .clibase import (EXIT_STOPPED, Detach, DryRun, check_broker, console, continued_by, exit_code,
                      fail, load_context, need_key, target_of)
from .context import Context
from .watch import _fmt_seconds, counts_text, exit_code_of, stop_signals_interrupt, watch

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
        from .checkcli import refuse_unless_reached
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
            no_groups = source_groups.cannot_list(_vendor_of(ctx, source))
    for path in (users, friends, groups):
        try:
            runs.check_input(path)
        except InputError as exc:
            fail(f"{exc}. Nothing was created.")
    plan = _planned(lambda progress: runs.plan_run(ctx.engine, source, tgt, request,
                                                   chunk_size=ctx.settings.chunk_size, progress=progress),
                    "Nothing was created.")
    _report(plan, target)
    if no_groups:
        console.print(f"  {no_groups}", highlight=False)
    if dry_run:
        console.print(f"Dry run: nothing sent. Start it with `imshift start {name(plan.run_id)}`.")
        return
    _start(ctx, plan.run_id, detach)


def _vendor_of(ctx: Context, app: str) -> str:
    """"OpenIM v2": the app's vendor, with its API version where it has one."""
    from imshift.vendors.registry import vendor

    v = vendor(ctx.settings.app(app).vendor)
    version = getattr(v.client.for_config(ctx.config(app)), "version", "")
    return f"{v.title} {version}".strip()


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
    p = _run(ctx, run_id)
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
    _report(plan, p.app)
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


def _report(plan: runs.RunPlan, app: str) -> None:
    table = Table(title=f"run {name(plan.run_id)} into {app}: the plan")
    for column in ("stage", "job", "items", "to send", "rejected", "done before", "vendor calls",
                   "estimated"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in plan.stages:
        r = s.report
        table.add_row(s.stage, str(s.job_id), f"{r.total:,}", f"{r.pending:,}",
                      f"{r.invalid + r.duplicates:,}", f"{r.done:,}", f"{s.calls:,}",
                      _fmt_seconds(s.seconds) if s.seconds is not None else "?")
    table.add_row("total", "", "", "", "", "", f"{sum(s.calls for s in plan.stages):,}",
                  _fmt_seconds(plan.seconds) if plan.seconds is not None else "?")
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
    _queue(ctx, run_id, lambda: run_control.start(ctx.engine, ctx.broker, run_id))
    follow(ctx, run_id, detach)


def _queue(ctx: Context, run_id: int, change):
    """As jobcli._queue, for a run: a failed queuing leaves its stage paused."""
    import dramatiq
    import redis

    try:
        return change()
    except control.JobError as exc:
        fail(str(exc))
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        if ctx.embedded:
            raise
        current = run_control.run_progress(ctx.engine, run_id).current
        held = control.hold_after_failed_queue(ctx.engine, current[1].job_id, exc) if current else str(exc)
        fail(f"{held}. `imshift resume {name(run_id)}` continues it once Redis works", EXIT_STOPPED)


def follow(ctx: Context, run_id: int, detach: bool) -> None:
    """Follow the run stage by stage until it is no longer running (in the
    embedded mode this process runs it), then print its report."""
    if not ctx.embedded and detach:
        console.print(f"Queued. Follow it with `imshift status {name(run_id)} --watch`.")
        return
    with continued_by(ctx, name(run_id)):
        _follow(ctx, run_id)


def _follow(ctx: Context, run_id: int) -> None:
    import contextlib

    from imshift.workers.embedded import in_process_workers

    if ctx.embedded:
        ctx.runtime  # noqa: B018  (configures the workers before they start)
    with (stop_signals_interrupt() if ctx.embedded else contextlib.nullcontext(),
          in_process_workers(ctx.broker) if ctx.embedded else contextlib.nullcontext()):
        try:
            while True:
                p = run_control.run_progress(ctx.engine, run_id)
                current = p.current
                if p.status != JobStatus.RUNNING.value or current is None:
                    break
                stage, stage_progress = current
                if stage_progress.status == JobStatus.RUNNING.value:
                    console.print(f"[bold]{stage}[/bold] (job {stage_progress.job_id})")
                    watch(ctx, stage_progress.job_id, console, sweeping=ctx.embedded)
                else:
                    import time
                    time.sleep(0.25)  # the hand-over to the next stage is under way
        except KeyboardInterrupt as exc:
            if ctx.embedded:
                try:
                    run_control.pause(ctx.engine, run_id)
                except control.JobError:
                    pass
                console.print(f"\n[yellow]Paused run {name(run_id)}[/yellow]; "
                              f"`imshift resume {name(run_id)}` continues it.")
            raise typer.Exit(exit_code_of(exc)) from exc
    p = run_control.run_progress(ctx.engine, run_id)
    report(p)
    raise typer.Exit(run_exit_code(p))


def run_exit_code(p: RunProgress) -> int:
    import collections

    counts: collections.Counter[str] = collections.Counter()
    for _, sp in p.stages:
        counts.update(sp.counts)
    return exit_code(p.status, counts)


def report(p: RunProgress) -> None:
    table = Table(title=f"run {name(p.run_id)}: {p.source_app} -> {p.app}, {p.status}")
    for column in ("stage", "job", "status", "done", "rate", "ETA", "outcomes"):
        table.add_column(column)
    for stage, sp in p.stages:
        running = sp.status == JobStatus.RUNNING.value
        table.add_row(stage, str(sp.job_id), sp.status, f"{sp.completed:,}/{sp.total:,}",
                      f"{sp.rate or 0:,.1f}/s" if sp.started_at else "",
                      _fmt_seconds(sp.eta()) if running else "", counts_text(sp))
    console.print(table)
    problems = [(stage, state) for stage, sp in p.stages
                for state in ("rejected", "failed", "unknown", "skipped") if sp.counts.get(state)]
    if problems:
        stage, state = problems[0]
        console.print(f"  what did not make it: `imshift results {name(p.run_id)} --stage {stage} "
                      f"--outcome {state}`", highlight=False)
    if p.status in (JobStatus.PAUSED.value, JobStatus.STOPPED.value):
        stop = next((sp.stop_reason for _, sp in p.stages if sp.stop_reason), None)
        if stop:
            console.print(f"  [red]{stop}[/red]")
        console.print(f"  `imshift resume {name(p.run_id)}` carries it on")


def _run(ctx: Context, run_id: int) -> RunProgress:
    p = run_control.run_progress(ctx.engine, run_id)
    if p is None:
        fail(f"no run {name(run_id)}")
    return p


def status(ctx: Context, run_id: int, watch_: bool, as_json: bool) -> None:
    p = _run(ctx, run_id)
    if as_json:
        print(json.dumps({"runs": [run_json(p)]}))
        return
    if watch_ and p.status == JobStatus.RUNNING.value:
        if ctx.embedded:
            target_of(ctx, p.app)
        follow(ctx, run_id, detach=False)
    report(p)


def run_json(p: RunProgress) -> dict:
    return {"id": name(p.run_id), "from": p.source_app, "to": p.app, "status": p.status,
            "stages": [{"stage": s, **reportcli._json(sp)} for s, sp in p.stages]}


def results(ctx: Context, run_id: int, stage: Optional[str], outcome: Optional[str],
            format: str, output: Optional[Path]) -> None:
    p = _run(ctx, run_id)
    stages = [(s, sp) for s, sp in p.stages if stage is None or s == stage]
    if stage is not None and not stages:
        fail(f"run {name(run_id)} has no {stage} stage (it has: {', '.join(s for s, _ in p.stages)})")
    from imshift.jobs.progress import results as item_results

    if format == "table":
        table = Table(title=f"run {name(run_id)}" + (f", {outcome}" if outcome else ""))
        for column in ("stage", "row", "id", "outcome", "code", "message"):
            table.add_column(column)
        shown = 0
        for s, sp in stages:
            for item in item_results(ctx.engine, sp.job_id, outcome):
                if shown >= 1000:
                    break
                table.add_row(s, str(item.row), item.key, item.state, item.code or "", item.message or "")
                shown += 1
        console.print(table)
        if shown >= 1000:
            console.print("(first 1000 shown; use --format csv for all)")
        return
    for _, sp in stages:
        reportcli._check_token_key(ctx, sp.job_id)
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    if output:
        os.chmod(output, 0o600)  # it may hold tokens
    try:
        writer = csv.DictWriter(out, ["stage", *RESULT_FIELDS]) if format == "csv" else None
        if writer:
            writer.writeheader()
        for s, sp in stages:
            for record in reportcli.records(ctx, sp.job_id, outcome):
                write_record(out, writer, {"stage": s, **record})
    finally:
        if output:
            out.close()


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
    _run(ctx, run_id)
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


def steer(ctx: Context, action: str, run_id: int, detach: bool = False) -> None:
    """start, pause, resume, cancel applied to a run."""
    _run(ctx, run_id)
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
    p = _run(ctx, run_id)
    if action == "resume" and p.status == JobStatus.PLANNING.value:
        carry_on_planning(ctx, run_id, detach)
        return
    target_of(ctx, p.app)
    check_broker(ctx)
    if action == "start":
        _queue(ctx, run_id, lambda: run_control.start(ctx.engine, ctx.broker, run_id))
    else:
        stage = _queue(ctx, run_id, lambda: run_control.resume(ctx.engine, ctx.broker, run_id))
        console.print(f"run {name(run_id)} resumed at its {stage} stage")
    follow(ctx, run_id, detach)
