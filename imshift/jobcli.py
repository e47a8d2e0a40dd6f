"""The job commands: create (migrate users, tokens refresh, send), follow
(status, results) and steer (start, pause, resume, cancel, retry) jobs."""

from __future__ import annotations

import csv
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from imshift import logs
from imshift.jobs import control, kinds
from imshift.jobs.exports import csv_record
from imshift.jobs.inputs import InputError
from imshift.jobs.plan import PlanReport
from imshift.jobs.progress import progress, recent_jobs, results as item_results
from imshift.models.tables import JobStatus
from imshift.vendors.base import Message, Operation, Unsupported

from .context import Context
from .watch import _fmt_seconds, counts_text, run_in_process, summary, watch

console = Console()
err = Console(stderr=True)

migrate_app = typer.Typer(help="Move data from one vendor app to another.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bulk token work.", no_args_is_help=True)

InputPath = Annotated[Path, typer.Option("--input", "-i", help="A .csv, .jsonl or .txt file.",
                                         exists=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every row and estimate the run "
                                      "time; send nothing. `imshift start JOB` runs it later.")]
Detach = Annotated[bool, typer.Option("--detach", help="With Redis: enqueue and return instead "
                                      "of following progress.")]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _context() -> Context:
    try:
        ctx = Context()
    except Exception as exc:  # settings that do not parse
        fail(f"configuration: {exc}")
        raise
    logs.install(ctx.secrets())
    return ctx


def _target(ctx: Context, app: str):
    try:
        return ctx.target(app)
    except ValueError as exc:
        fail(str(exc))


def _plan(ctx: Context, make) -> kinds.Planned:
    try:
        with console.status("reading and checking the input...") as status:
            return make(lambda n: status.update(f"reading and checking the input: {n:,} rows"))
    except InputError as exc:
        fail(f"{exc}\nNothing was created.")
    except Unsupported as exc:
        fail(f"{exc}; see `imshift vendors`.")


def _report(ctx: Context, planned: kinds.Planned, operation: Operation, app: str) -> None:
    r: PlanReport = planned.report
    console.print(f"job [bold]{r.job_id}[/bold]: {r.total:,} rows read in {r.seconds:.1f} s: "
                  f"{r.pending:,} to send, {r.invalid:,} invalid, {r.duplicates:,} duplicate")
    if planned.ignored_columns:
        console.print(f"  columns the target has no field for (ignored): "
                      f"{', '.join(planned.ignored_columns)}")
    if r.examples:
        table = Table(title=f"rows that will not be sent (all: imshift results {r.job_id} "
                            "--outcome rejected)")
        for column in ("row", "id", "reason"):
            table.add_column(column)
        for row, key, reason in r.examples[:10]:
            table.add_row(str(row), key[:40], reason)
        console.print(table)
    estimate = ctx.target(app).estimate_seconds(operation, r.pending)
    rate = ctx.rates(app).get(operation.value)
    if estimate is not None:
        console.print(f"  estimated run time at {rate:g} calls/s: {_fmt_seconds(estimate)}")


def _launch(ctx: Context, planned: kinds.Planned, operation: Operation, app: str,
            dry_run: bool, detach: bool) -> None:
    _report(ctx, planned, operation, app)
    job_id = planned.report.job_id
    if dry_run:
        control.mark_planned(ctx.engine, job_id)
        console.print(f"Dry run: nothing sent. Start it with `imshift start {job_id}`.")
        return
    _run(ctx, job_id, detach)


def _run(ctx: Context, job_id: int, detach: bool) -> None:
    try:
        control.start(ctx.engine, ctx.broker, job_id)
    except control.JobError as exc:
        fail(str(exc))
    _follow(ctx, job_id, detach)


def _follow(ctx: Context, job_id: int, detach: bool) -> None:
    if ctx.embedded:
        try:
            p = run_in_process(ctx, job_id, console)
        except KeyboardInterrupt:
            raise typer.Exit(130)
    elif detach:
        console.print(f"Queued. Follow it with `imshift status {job_id} --watch`.")
        return
    else:
        p = watch(ctx, job_id, console)
    summary(ctx, p, console)
    if p.status == JobStatus.STOPPED.value:
        raise typer.Exit(1)


@migrate_app.command("users")
def migrate_users(
    source: Annotated[str, typer.Option("--from", help="The app the users come from.")],
    target: Annotated[str, typer.Option("--to", help="The app to create them in.")],
    input: InputPath,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Create every account of the input file (with its profile) at the target app.

    Columns: user_id (or id, userId, accid, uid, username), name, avatar, and any
    profile field the target vendor accepts. Existing accounts count as done.
    """
    ctx = _context()
    if source != target:
        _target(ctx, source)  # a typo in --from should fail now, not after the run
    tgt = _target(ctx, target)
    planned = _plan(ctx, lambda progress: kinds.plan_user_migration(
        ctx.engine, tgt, input, source_app=source, chunk_size=ctx.settings.chunk_size,
        progress=progress))
    _launch(ctx, planned, Operation.REGISTER, target, dry_run, detach)


@tokens_app.command("refresh")
def tokens_refresh(
    app: Annotated[str, typer.Option("--vendor", "--app", help="The app whose users get new tokens.")],
    input: InputPath,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Issue a new login token for each user id of the input.

    Tokens are kept encrypted with IMSHIFT_TOKEN_KEY (make one with `imshift keygen`)
    and exported with `imshift results JOB --format csv`.
    """
    ctx = _context()
    if ctx.cipher is None:
        fail("tokens are stored encrypted, and IMSHIFT_TOKEN_KEY is not set: "
             "run `imshift keygen` and set it (keep the key safe; the same key reads the export)")
    tgt = _target(ctx, app)
    planned = _plan(ctx, lambda progress: kinds.plan_token_refresh(
        ctx.engine, tgt, input, chunk_size=ctx.settings.chunk_size, progress=progress))
    _launch(ctx, planned, Operation.ISSUE_TOKEN, app, dry_run, detach)


def send(
    app: Annotated[str, typer.Option("--vendor", "--app", help="The app to send through.")],
    sender: Annotated[str, typer.Option(help="The sending user's id at that vendor.")],
    to: Annotated[Path, typer.Option(help="Recipients: .csv with a user_id column, or .txt.")],
    text: Annotated[Optional[str], typer.Option(help="Text of the message.")] = None,
    content: Annotated[Optional[str], typer.Option(help="A custom message as a JSON object.")] = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Send one-to-one messages from SENDER to every recipient, in the vendor's batches."""
    if (text is None) == (content is None):
        fail("give exactly one of --text or --content")
    if content is not None:
        try:
            custom = json.loads(content)
        except ValueError as exc:
            fail(f"--content is not JSON: {exc}")
        if not isinstance(custom, dict):
            fail("--content must be a JSON object")
        message = Message(custom=custom)
    else:
        message = Message(text=text)
    ctx = _context()
    tgt = _target(ctx, app)
    planned = _plan(ctx, lambda progress: kinds.plan_send(
        ctx.engine, tgt, to, sender=sender, message=message, chunk_size=ctx.settings.chunk_size,
        progress=progress))
    _launch(ctx, planned, Operation.SEND, app, dry_run, detach)


def start(job: int, detach: Detach = False) -> None:
    """Run a job planned with --dry-run."""
    ctx = _context()
    _run(ctx, job, detach)


def status(
    job: Annotated[Optional[int], typer.Argument(help="A job id; the recent jobs when omitted.")] = None,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow it live.")] = False,
) -> None:
    """How far a job is: done/total, per-outcome counts, rate and ETA."""
    ctx = _context()
    if job is None:
        table = Table(title="recent jobs")
        for column in ("job", "kind", "app", "status", "done", "counts"):
            table.add_column(column)
        for p in recent_jobs(ctx.engine):
            table.add_row(str(p.job_id), p.kind, p.app, p.status, f"{p.done}/{p.total}", counts_text(p))
        console.print(table)
        return
    p = progress(ctx.engine, job)
    if p is None:
        fail(f"no job {job}")
    if watch_ and p.status == JobStatus.RUNNING.value:
        if ctx.embedded:
            _follow(ctx, job, detach=False)
            return
        p = watch(ctx, job, console)
    summary(ctx, p, console, examples=0 if not watch_ else 10)
    if p.status == JobStatus.RUNNING.value:
        console.print(f"  rate {p.rate or 0:,.1f} items/s, ETA {_fmt_seconds(p.eta())}")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


def results(
    job: int,
    outcome: Annotated[Optional[str], typer.Option(help="Only items in this state "
                                                   "(ok, exists, rejected, failed, unknown, ...).")] = None,
    format: Annotated[Format, typer.Option(help="table on screen; csv or jsonl to export.")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """What happened to each item. csv/jsonl include the tokens a job obtained
    (decrypted with IMSHIFT_TOKEN_KEY); the table never shows them."""
    ctx = _context()
    if progress(ctx.engine, job) is None:
        fail(f"no job {job}")
    rows = item_results(ctx.engine, job, outcome)
    if format is Format.table:
        table = Table(title=f"job {job}" + (f", {outcome}" if outcome else ""))
        for column in ("row", "id", "outcome", "attempts", "code", "message", "result"):
            table.add_column(column)
        for n, item in enumerate(rows):
            if n >= 1000:
                console.print("(first 1000 shown; use --format csv for all)")
                break
            table.add_row(str(item.row), item.key, item.state, str(item.attempts), item.code or "",
                          item.message or "", json.dumps(item.result, ensure_ascii=False) if item.result else "")
        console.print(table)
        return
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    if output:
        os.chmod(output, 0o600)  # it may hold tokens
    try:
        fields = ["row", "id", "outcome", "attempts", "code", "message", "user_id", "token",
                  "password", "result"]
        writer = csv.DictWriter(out, fields) if format is Format.csv else None
        if writer:
            writer.writeheader()
        for item in rows:
            secrets = ctx.runtime.unseal(item.secret) if item.secret else {}
            record = {"row": item.row, "id": item.key, "outcome": item.state, "attempts": item.attempts,
                      "code": item.code, "message": item.message,
                      "user_id": (item.result or {}).get("user_id"), "token": secrets.get("token"),
                      "password": secrets.get("password"),
                      "result": json.dumps(item.result, ensure_ascii=False) if item.result else None}
            if writer:
                writer.writerow(csv_record(record))  # a cell is never a formula
            else:
                out.write(json.dumps({k: v for k, v in record.items() if v is not None},
                                     ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()


def retry(
    job: int,
    unknown: Annotated[bool, typer.Option("--unknown", help="Also re-send items whose send may "
                                          "have been delivered already.")] = False,
    detach: Detach = False,
) -> None:
    """Run the failed items of a job again (rejected by the vendor, out of attempts)."""
    ctx = _context()
    try:
        moved = control.retry(ctx.engine, ctx.broker, job, include_unknown=unknown)
    except control.JobError as exc:
        fail(str(exc))
    console.print(f"{moved} items of job {job} put back to work")
    if moved:
        _follow(ctx, job, detach)


def _steer(action, job: int, done: str) -> None:
    ctx = _context()
    try:
        action(ctx, job)
    except control.JobError as exc:
        fail(str(exc))
    console.print(f"job {job} {done}")


def cancel(job: int) -> None:
    """Stop a job for good; its pending items end cancelled."""
    _steer(lambda ctx, j: control.cancel(ctx.engine, j), job, "cancelled")


def pause(job: int) -> None:
    """Pause a running job; workers finish the chunks they hold."""
    _steer(lambda ctx, j: control.pause(ctx.engine, j), job, "paused")


def resume(job: int, detach: Detach = False) -> None:
    """Resume a paused job, or one stopped by an auth failure once fixed."""
    ctx = _context()
    try:
        control.resume(ctx.engine, ctx.broker, job)
    except control.JobError as exc:
        fail(str(exc))
    _follow(ctx, job, detach)


def register(app: typer.Typer) -> None:
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(tokens_app, name="tokens")
    for command in (send, start, status, results, retry, cancel, pause, resume):
        app.command()(command)
