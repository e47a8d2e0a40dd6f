"""The job commands: create (migrate users, tokens refresh, send,
broadcast) and steer (start, pause, resume, cancel, retry) jobs; and the
helpers the other command modules share (imshift/reportcli.py: status and
results; imshift/runcli.py: runs; imshift/schedulecli.py: schedules)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from imshift import logs
from imshift.jobs import control, kinds
from imshift.jobs.inputs import InputError
from imshift.jobs.plan import PlanReport
from imshift.jobs.progress import Progress, progress
from imshift.models.tables import ItemState, JobStatus
from imshift.jobs.target import missing_text
from imshift.vendors.vocabulary import Message, Missing, Operation, Unsupported

from .context import Context, SetupError
from .watch import _fmt_seconds, exit_code_of, run_in_process, summary, watch

# Exit codes (the README and docs/failure-modes.md list them).
EXIT_OK = 0  # the job or run finished and every input row ended ok or exists
EXIT_STOPPED = 1  # it stopped, paused or was cancelled; or a service (Redis) failed
EXIT_USAGE = 2  # the request or the settings are wrong; nothing was run
EXIT_FAILURES = 3  # it finished, but some rows ended otherwise (refused at planning, rejected, ...)

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
Via = Annotated[Optional[str], typer.Option(metavar="R<n>", help="Ids as the migration's source "
                                            "knows them (the sender, recipients, groups): mapped "
                                            "through that run's id map into this app's.")]


def _via(text: Optional[str]) -> Optional[int]:
    """The run number of --via R<n> (None without it)."""
    if text is None:
        return None
    kind, number = _ref(text)
    if kind != "run":
        fail(f"--via takes a run, R<n>, not {text!r}")
    return number


def _ref(text: str) -> tuple[str, int]:
    """("job", n) or ("run", n) from a command's argument."""
    from imshift.jobs.run_control import parse_ref

    try:
        return parse_ref(text)
    except control.JobError as exc:
        fail(str(exc))
        raise


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def database_failed(exc: Exception, then: str) -> NoReturn:
    """One line for a database that failed under a command; `then` says what to run next."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    fail(f"the database failed: {reason}. {then}", EXIT_STOPPED)


@contextlib.contextmanager
def continued_by(ctx: Context, ref: str) -> Iterator[None]:
    """Following job or run `ref` ("7", "R2") while the database fails: the
    line names the command that carries the work on. Embedded, this command
    was its runner, so that is resume; with Redis the workers go on."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        then = (f"Once it is back, `imshift resume {ref}` continues it" if ctx.embedded else
                f"The workers go on; once it is back, `imshift status {ref} --watch` follows it")
        database_failed(exc, then)


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


def exit_code(status: str, counts: dict[str, int]) -> int:
    """One rule for jobs and runs (a run passes its stages' counts summed)."""
    if status != JobStatus.FINISHED.value:
        return EXIT_STOPPED
    done = (ItemState.OK.value, ItemState.EXISTS.value)
    return EXIT_FAILURES if any(n for state, n in counts.items() if state not in done) else EXIT_OK


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
    except Missing as exc:
        fail(f"{missing_text(exc)}. Nothing was created.")
    except kinds.ViaError as exc:
        fail(f"{exc}. Nothing was created.")
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
    with continued_by(ctx, str(job_id)):
        _follow_job(ctx, job_id, detach)


def _follow_job(ctx: Context, job_id: int, detach: bool) -> None:
    if ctx.embedded:
        try:
            p = run_in_process(ctx, job_id, console)
        except KeyboardInterrupt as exc:
            raise typer.Exit(exit_code_of(exc)) from exc
    elif detach:
        console.print(f"Queued. Follow it with `imshift status {job_id} --watch`.")
        return
    else:
        p = watch(ctx, job_id, console)
    summary(ctx, p, console)
    code = exit_code(p.status, p.counts)
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
    else:  # a dry run promises the run would start: the target must take its credentials
        from .checkcli import refuse_unless_reached
        refuse_unless_reached(ctx, [target])
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
    via: Via = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Send one-to-one messages from SENDER to every recipient (--to), or a
    message in every group (--to-groups), in the vendor's batches."""
    if (to is None) == (to_groups is None):
        fail("give exactly one of --to (recipients) or --to-groups (groups)")
    message = _message(text, content)
    run = _via(via)
    ctx = _context()
    tgt = _target(ctx, app)
    if not dry_run:
        _check_broker(ctx)
    if to_groups is not None:
        planned = _plan(ctx, lambda progress: kinds.plan_group_send(
            ctx.engine, tgt, to_groups, sender=sender, message=message,
            chunk_size=ctx.settings.chunk_size, progress=progress, via=run))
        _launch(ctx, planned, Operation.SEND_GROUP, app, dry_run, detach)
        return
    planned = _plan(ctx, lambda progress: kinds.plan_send(
        ctx.engine, tgt, to, sender=sender, message=message, chunk_size=ctx.settings.chunk_size,
        progress=progress, via=run))
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


def _needed_by(operation: Operation, parameter: str) -> str:
    """The vendors whose rules need `parameter` for `operation`, for help texts."""
    from imshift.vendors.registry import VENDORS

    return ", ".join(v.title for v in VENDORS.values()
                     if parameter in v.client.rules.needs.get(operation, ()))


def broadcast(
    app: Annotated[str, typer.Option("--vendor", "--app", help="The app to broadcast through.")],
    sender: Annotated[str, typer.Option(help="The sending user's id; needed on "
                                        f"{_needed_by(Operation.BROADCAST, 'sender')}, "
                                        "optional elsewhere.")] = "",
    text: Annotated[Optional[str], typer.Option(help="Text of the message.")] = None,
    content: Annotated[Optional[str], typer.Option(help="A custom message as a JSON object.")] = None,
    via: Via = None,
    dry_run: DryRun = False,
    detach: Detach = False,
) -> None:
    """Send one message to every user of the app with the vendor's broadcast:
    one vendor call, one result. A vendor without a broadcast is refused."""
    message = _message(text, content)
    run = _via(via)
    ctx = _context()
    tgt = _target(ctx, app)
    if not dry_run:
        _check_broker(ctx)
    planned = _plan(ctx, lambda progress: kinds.plan_broadcast(
        ctx.engine, tgt, sender=sender, message=message, chunk_size=ctx.settings.chunk_size,
        via=run))
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
    from . import reportcli, runcli, schedulecli

    app.add_typer(schedulecli.schedule_app, name="schedule")

    migrate_app.command("run")(runcli.migrate_run)
    for command in (runcli.idmap, send, broadcast, start, reportcli.status, reportcli.results, retry,
                    cancel, pause, resume, schedulecli.scheduler):
        app.command()(command)
