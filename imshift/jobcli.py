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
from imshift.jobs.exports import (RESULT_FIELDS, csv_record, export_record, token_key_problem,
                                  write_record)
from imshift.jobs.inputs import InputError
from imshift.jobs.plan import PlanReport
from imshift.jobs.progress import (Progress, progress, recent_jobs,
                                   refused_at_planning, results as item_results)
from imshift.models.tables import ItemState, JobStatus
from imshift.vendors.vocabulary import Message, Operation, Unsupported

from .context import Context, SetupError
from .watch import _fmt_seconds, counts_text, run_in_process, summary, watch

# Exit codes (the README and docs/failure-modes.md list them).
EXIT_OK = 0  # the job finished and every item sent is ok or exists
EXIT_STOPPED = 1  # the job stopped, paused or was cancelled; or a service (Redis) failed
EXIT_USAGE = 2  # the request or the settings are wrong; nothing was run
EXIT_FAILURES = 3  # the job finished, but some items were rejected, failed or are unknown

console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however narrow the terminal

migrate_app = typer.Typer(help="Move data from one vendor app to another.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bulk token work.", no_args_is_help=True)

InputPath = Annotated[Path, typer.Option("--input", "-i", help="A .csv, .jsonl or .txt file.",
                                         exists=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every row and estimate the run "
                                      "time; send nothing. `imshift start JOB` runs it later.")]
Detach = Annotated[bool, typer.Option("--detach", help="With Redis: enqueue and return instead "
                                      "of following progress.")]


JobRef = Annotated[str, typer.Argument(metavar="JOB|RUN", help="A job id, or a run as R<n>.")]


def _ref(text: str) -> tuple[str, int]:
    """("job", n) or ("run", n) from a command's argument."""
    from imshift.jobs.run_control import parse_ref

    try:
        return parse_ref(text)
    except control.JobError as exc:
        fail(str(exc))
        raise


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _context() -> Context:
    try:
        ctx = Context()
        ctx.check()
    except SetupError as exc:
        fail(str(exc))
    except Exception as exc:  # settings that do not parse
        fail(f"configuration: {exc}")
        raise
    logs.install(ctx.secrets())
    return ctx


def _check_broker(ctx: Context) -> None:
    try:
        ctx.check_broker()
    except SetupError as exc:
        fail(f"{exc}. Nothing was queued.", EXIT_STOPPED)


def _need_key(ctx: Context, app: str, operation: str, note: bool = True) -> None:
    """Results kept only encrypted need the token key before a job runs:
    without it a password would be lost for good."""
    if ctx.cipher is not None:
        return
    if operation == Operation.ISSUE_TOKEN.value:
        fail("tokens are stored encrypted, and IMSHIFT_TOKEN_KEY is not set: "
             "run `imshift keygen` and set it (keep the key safe; the same key reads the export)")
    if operation != Operation.REGISTER.value:
        return
    secrets = ctx.register_secrets(app)
    if "password" in secrets:
        fail(f"registering at {app!r} returns each account's password, which is stored only "
             "encrypted, and IMSHIFT_TOKEN_KEY is not set: run `imshift keygen`, set it, and run "
             "this again (keep the key: the same key reads the export)")
    if "token" in secrets and note:
        err.print(f"note: IMSHIFT_TOKEN_KEY is not set, so the tokens {app!r} returns on "
                  "registration are not kept (`imshift tokens refresh` issues new ones later)",
                  highlight=False)


def _runnable(ctx: Context, job_id: int) -> Progress:
    """What must hold before a job is started, resumed or retried: its app's
    settings are valid, a key is set where results need one, Redis answers."""
    p = progress(ctx.engine, job_id)
    if p is None:
        fail(f"no job {job_id}")
    _target(ctx, p.app)
    _need_key(ctx, p.app, p.operation, note=False)
    _check_broker(ctx)
    return p


def _queue(ctx: Context, job_id: int, change):
    """Run a status change that queues work. If queuing fails half-way,
    the job is paused: nothing (no worker, no sweeper) runs it later."""
    import dramatiq
    import redis

    try:
        return change()
    except control.JobError as exc:
        fail(str(exc))
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        if ctx.embedded:
            raise
        fail(f"{control.hold_after_failed_queue(ctx.engine, job_id, exc)}. "
             f"`imshift resume {job_id}` continues it once Redis works", EXIT_STOPPED)


def exit_code(ctx: Context, p: Progress) -> int:
    if p.status != JobStatus.FINISHED.value:
        return EXIT_STOPPED
    c = p.counts
    sent_and_rejected = c.get(ItemState.REJECTED.value, 0) - refused_at_planning(ctx.engine, p.job_id)
    succeeded = c.get(ItemState.OK.value, 0) + c.get(ItemState.EXISTS.value, 0)
    if (c.get(ItemState.FAILED.value) or c.get(ItemState.UNKNOWN.value) or sent_and_rejected
            or (p.total and not succeeded)):
        return EXIT_FAILURES
    return EXIT_OK


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
    _queue(ctx, job_id, lambda: control.start(ctx.engine, ctx.broker, job_id))
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
    code = exit_code(ctx, p)
    if code:
        raise typer.Exit(code)


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
    _need_key(ctx, target, Operation.REGISTER.value)
    if not dry_run:
        _check_broker(ctx)
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
    _need_key(ctx, app, Operation.ISSUE_TOKEN.value)
    tgt = _target(ctx, app)
    if not dry_run:
        _check_broker(ctx)
    planned = _plan(ctx, lambda progress: kinds.plan_token_refresh(
        ctx.engine, tgt, input, chunk_size=ctx.settings.chunk_size, progress=progress))
    _launch(ctx, planned, Operation.ISSUE_TOKEN, app, dry_run, detach)


def send(
    app: Annotated[str, typer.Option("--vendor", "--app", help="The app to send through.")],
    sender: Annotated[str, typer.Option(help="The sending user's id at that vendor.")],
    to: Annotated[Optional[Path], typer.Option(help="Recipients: .csv with a user_id column, "
                                               "or .txt.")] = None,
    to_groups: Annotated[Optional[Path], typer.Option(help="Groups: .csv with a group_id "
                                                      "column, or .txt.")] = None,
    text: Annotated[Optional[str], typer.Option(help="Text of the message.")] = None,
    content: Annotated[Optional[str], typer.Option(help="A custom message as a JSON object.")] = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Send one-to-one messages from SENDER to every recipient (--to), or a
    message in every group (--to-groups), in the vendor's batches."""
    if (to is None) == (to_groups is None):
        fail("give exactly one of --to (recipients) or --to-groups (groups)")
    message = _message(text, content)
    ctx = _context()
    tgt = _target(ctx, app)
    if not dry_run:
        _check_broker(ctx)
    if to_groups is not None:
        planned = _plan(ctx, lambda progress: kinds.plan_group_send(
            ctx.engine, tgt, to_groups, sender=sender, message=message,
            chunk_size=ctx.settings.chunk_size, progress=progress))
        _launch(ctx, planned, Operation.SEND_GROUP, app, dry_run, detach)
        return
    planned = _plan(ctx, lambda progress: kinds.plan_send(
        ctx.engine, tgt, to, sender=sender, message=message, chunk_size=ctx.settings.chunk_size,
        progress=progress))
    _launch(ctx, planned, Operation.SEND, app, dry_run, detach)


def _message(text: Optional[str], content: Optional[str]) -> Message:
    """--text or --content (a JSON object) as a Message; exactly one."""
    if (text is None) == (content is None):
        fail("give exactly one of --text or --content")
    if text is not None:
        return Message(text=text)
    try:
        custom = json.loads(content)
    except ValueError as exc:
        fail(f"--content is not JSON: {exc}")
    if not isinstance(custom, dict):
        fail("--content must be a JSON object")
    return Message(custom=custom)


def broadcast(
    app: Annotated[str, typer.Option("--vendor", "--app", help="The app to broadcast through.")],
    sender: Annotated[str, typer.Option(help="The sending user's id, where the vendor "
                                        "names one (RongCloud, NetEase).")] = "",
    text: Annotated[Optional[str], typer.Option(help="Text of the message.")] = None,
    content: Annotated[Optional[str], typer.Option(help="A custom message as a JSON object.")] = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Send one message to every user of the app with the vendor's broadcast:
    one vendor call, one result. A vendor without a broadcast is refused."""
    message = _message(text, content)
    ctx = _context()
    tgt = _target(ctx, app)
    if not dry_run:
        _check_broker(ctx)
    planned = _plan(ctx, lambda progress: kinds.plan_broadcast(
        ctx.engine, tgt, sender=sender, message=message, chunk_size=ctx.settings.chunk_size))
    _launch(ctx, planned, Operation.BROADCAST, app, dry_run, detach)


def start(ref: JobRef, detach: Detach = False) -> None:
    """Run a job or a run planned with --dry-run."""
    kind, job = _ref(ref)
    ctx = _context()
    if kind == "run":
        from . import runcli
        return runcli.steer(ctx, "start", job, detach)
    _runnable(ctx, job)
    _run(ctx, job, detach)


def _json(p: Progress) -> dict:
    return {"id": p.job_id, "kind": p.kind, "app": p.app, "status": p.status, "total": p.total,
            "done": p.completed, "counts": p.counts, "stop_reason": p.stop_reason,
            "started_at": p.started_at, "finished_at": p.finished_at}


def status(
    ref: Annotated[Optional[str], typer.Argument(metavar="[JOB|RUN]", help="A job id or a run "
                                                 "(R<n>); the recent jobs and runs when omitted.")] = None,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow it live.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"jobs": [...]}: each job\'s id, '
                                          "kind, app, status, total, done and counts per outcome.")] = False,
) -> None:
    """How far a job is: done/total, per-outcome counts, rate and ETA."""
    if as_json and watch_:
        fail("--json prints once; it does not go with --watch")
    kind, job = _ref(ref) if ref is not None else ("job", None)
    ctx = _context()
    if kind == "run":
        from . import runcli
        return runcli.status(ctx, job, watch_, as_json)
    if job is None:
        jobs = recent_jobs(ctx.engine)
        if as_json:
            print(json.dumps({"jobs": [_json(p) for p in jobs]}))
            return
        table = Table(title="recent jobs")
        for column in ("job", "kind", "app", "status", "done", "counts"):
            table.add_column(column)
        for p in jobs:
            table.add_row(str(p.job_id), p.kind, p.app, p.status, f"{p.completed}/{p.total}",
                          counts_text(p))
        console.print(table)
        from imshift.jobs.run_control import recent_runs

        listed = recent_runs(ctx.engine)
        if listed:
            table = Table(title="recent runs (`imshift status R<n>` shows one)")
            for column in ("run", "from", "to", "status", "stage now"):
                table.add_column(column)
            for r in listed:
                current = r.current
                table.add_row(f"R{r.run_id}", r.source_app, r.app, r.status,
                              f"{current[0]} {current[1].completed}/{current[1].total}" if current else "")
            console.print(table)
        return
    p = progress(ctx.engine, job)
    if p is None:
        fail(f"no job {job}")
    if as_json:
        print(json.dumps({"jobs": [_json(p)]}))
        return
    if watch_ and p.status == JobStatus.RUNNING.value:
        if ctx.embedded:
            _target(ctx, p.app)  # this process runs it: check its app first
            _need_key(ctx, p.app, p.operation, note=False)
            _follow(ctx, job, detach=False)
            return
        p = watch(ctx, job, console)
        summary(ctx, p, console)
        raise typer.Exit(exit_code(ctx, p))
    summary(ctx, p, console)
    if p.status == JobStatus.PLANNING.value:
        # Planning writes the total last: a producer that died leaves this state for good.
        console.print(f"  [yellow]still being planned[/yellow], or never planned whole if its "
                      f"command stopped: such a job never runs, `imshift cancel {job}` removes it")
    if p.status == JobStatus.RUNNING.value:
        idle = p.idle_seconds()
        if idle is not None and idle > ctx.settings.stale_after:
            runner = (f"nothing runs it now: `imshift resume {job}` carries it on" if ctx.embedded
                      else "are workers running? (`imshift worker`)")
            console.print(f"  [yellow]no progress for {_fmt_seconds(idle)}[/yellow]: {runner}")
        else:
            console.print(f"  rate {p.rate or 0:,.1f} items/s, ETA {_fmt_seconds(p.eta())}")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


def results(
    ref: JobRef,
    stage: Annotated[Optional[str], typer.Option(help="A run's stage only (accounts, friends, "
                                                 "groups, members, tokens, verify).")] = None,
    outcome: Annotated[Optional[str], typer.Option(help="Only items in this state "
                                                   "(ok, exists, rejected, failed, unknown, ...).")] = None,
    format: Annotated[Format, typer.Option(help="table on screen; csv or jsonl to export.")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """What happened to each item. csv/jsonl include the tokens a job obtained
    (decrypted with IMSHIFT_TOKEN_KEY); the table never shows them."""
    states = [s.value for s in ItemState]
    if outcome is not None and outcome not in states:
        fail(f"--outcome {outcome!r} is not an item state: choose one of {', '.join(states)}")
    kind, job = _ref(ref)
    ctx = _context()
    if kind == "run":
        from . import runcli
        return runcli.results(ctx, job, stage, outcome, format.value, output)
    if stage is not None:
        fail("--stage goes with a run (R<n>), not a job")
    if progress(ctx.engine, job) is None:
        fail(f"no job {job}")
    if format is not Format.table:
        _check_token_key(ctx, job)
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
        writer = csv.DictWriter(out, RESULT_FIELDS) if format is Format.csv else None
        if writer:
            writer.writeheader()
        for record in records(ctx, job, outcome):
            write_record(out, writer, record)
    finally:
        if output:
            out.close()


def records(ctx: Context, job: int, outcome: Optional[str]):
    """Each item of the job as an export record, its secrets decrypted."""
    for item in item_results(ctx.engine, job, outcome):
        yield export_record(item, ctx.runtime.unseal)


def csv_cells(values) -> list:
    return list(csv_record(dict(enumerate(values))).values())


def _check_token_key(ctx: Context, job: int) -> None:
    """An export holds the job's tokens and passwords: say so when the key
    is missing, and refuse a key that does not open them."""
    problem = token_key_problem(ctx.engine, ctx.cipher, job)
    if problem == "missing":
        err.print(f"warning: job {job} holds encrypted tokens or passwords and IMSHIFT_TOKEN_KEY "
                  "is not set: their columns are empty; set the key they were stored with",
                  highlight=False)
    elif problem == "wrong":
        fail(f"IMSHIFT_TOKEN_KEY does not open the tokens of job {job}: they were stored with "
             "another key; set that one (nothing was written)")


def retry(
    ref: JobRef,
    unknown: Annotated[bool, typer.Option("--unknown", help="Also re-send items whose send may "
                                          "have been delivered already.")] = False,
    detach: Detach = False,
) -> None:
    """Run the failed items of a job again (rejected by the vendor, out of attempts)."""
    kind, job = _ref(ref)
    if kind == "run":
        fail("retry takes a job: `imshift results R<n>` names each stage's job; retry the "
             "stage's job (the stages after it are not re-run)")
    ctx = _context()
    _runnable(ctx, job)
    moved = _queue(ctx, job, lambda: control.retry(ctx.engine, ctx.broker, job,
                                                   include_unknown=unknown))
    console.print(f"{moved} items of job {job} put back to work")
    if moved:
        _follow(ctx, job, detach)


def _steer(action, ref: str, done: str) -> None:
    kind, job = _ref(ref)
    ctx = _context()
    if kind == "run":
        from . import runcli
        return runcli.steer(ctx, {"cancelled": "cancel", "paused": "pause"}[done], job)
    try:
        action(ctx, job)
    except control.JobError as exc:
        fail(str(exc))
    console.print(f"job {job} {done}")


def cancel(ref: JobRef) -> None:
    """Stop a job (or every stage of a run) for good; its pending items end cancelled."""
    _steer(lambda ctx, j: control.cancel(ctx.engine, j), ref, "cancelled")


def pause(ref: JobRef) -> None:
    """Pause a running job (or a run's running stage); workers finish the chunks they hold."""
    _steer(lambda ctx, j: control.pause(ctx.engine, j), ref, "paused")


def resume(ref: JobRef, detach: Detach = False) -> None:
    """Resume a paused job or run, one stopped by an auth failure once fixed,
    or one whose command was killed."""
    kind, job = _ref(ref)
    ctx = _context()
    if kind == "run":
        from . import runcli
        return runcli.steer(ctx, "resume", job, detach)
    p = _runnable(ctx, job)
    if p.status == JobStatus.FINISHED.value:
        left = sum(p.counts.get(s.value, 0) for s in (ItemState.REJECTED, ItemState.FAILED,
                                                     ItemState.UNKNOWN))
        hint = (f"`imshift retry {job}` runs its rejected and failed items again "
                f"(--unknown: also the unknown sends)" if left else "nothing is left to do")
        fail(f"job {job} is finished: {hint}")
    _queue(ctx, job, lambda: control.resume(ctx.engine, ctx.broker, job))
    _follow(ctx, job, detach)


def register(app: typer.Typer) -> None:
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(tokens_app, name="tokens")
    from . import runcli, schedulecli

    app.add_typer(schedulecli.schedule_app, name="schedule")

    migrate_app.command("run")(runcli.migrate_run)
    for command in (runcli.idmap, send, broadcast, start, status, results, retry, cancel, pause, resume,
                    schedulecli.scheduler):
        app.command()(command)
