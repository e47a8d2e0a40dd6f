"""What the command modules share: the consoles and exit codes, failing in
one line, the context a command works in, the arguments several commands
take, and starting and following a job or a run to its end. A command
module (imshift/*cli.py) imports this, never another command module
(tests/test_cli_layout.py); imshift/cli.py registers them all."""

from __future__ import annotations

import collections
import contextlib
import json
import time
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from imshift import logs
from imshift.jobs import control, run_control
from imshift.jobs.progress import Progress
from imshift.jobs.run_control import RunProgress, name
from imshift.jobs.target import Target
from imshift.models.tables import ItemState, JobStatus
from imshift.vendors.vocabulary import Message, Operation
from imshift.workers.embedded import in_process_workers

from .context import Context, SetupError
from .watch import (counts_text, exit_code_of, fmt_seconds, run_in_process, stop_signals_interrupt,
                    summary, watch)

# Exit codes (the README and docs/failure-modes.md list them).
EXIT_OK = 0  # the job or run finished and every input row ended ok or exists
EXIT_STOPPED = 1  # it stopped, paused or was cancelled; or a service (Redis) failed
EXIT_USAGE = 2  # the request or the settings are wrong; nothing was run
EXIT_FAILURES = 3  # it finished, but some rows ended otherwise (refused at planning, rejected, ...)

console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however narrow the terminal

DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every row and estimate the run "
                                      "time; send nothing. `imshift start JOB` runs it later.")]
Detach = Annotated[bool, typer.Option("--detach", help="With Redis: enqueue and return instead "
                                      "of following progress.")]
JobRef = Annotated[str, typer.Argument(metavar="JOB|RUN", help="A job id, or a run as R<n>.")]
Via = Annotated[Optional[str], typer.Option(metavar="R<n>", help="Ids as the migration's source "
                                            "knows them (the sender, recipients, groups): mapped "
                                            "through that run's id map into this app's.")]

T = TypeVar("T")


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


# The last command's context in this process. A command run in a process
# that outlives it (a test's runner, a script calling the CLI) leaves its
# pool's connections open until the pool is collected, and PostgreSQL counts
# them against max_connections: the next command closes them.
_last: list[Context] = []


def load_context() -> Context:
    """The command's context from the settings, checked; the log redacts its secrets."""
    while _last:
        _last.pop().close()
    try:
        ctx = Context()
        ctx.check()
    except SetupError as exc:
        fail(str(exc))
    except Exception as exc:  # settings that do not parse
        fail(f"configuration: {exc}")
    logs.install(ctx.secrets())
    _last.append(ctx)
    return ctx


def check_broker(ctx: Context) -> None:
    try:
        ctx.check_broker()
    except SetupError as exc:
        fail(f"{exc}. Nothing was queued.", EXIT_STOPPED)


def target_of(ctx: Context, app: str) -> Target:
    """The configured app as producers see it; an unknown or ill-set app fails the command."""
    try:
        return ctx.target(app)
    except ValueError as exc:
        fail(str(exc))


def need_key(ctx: Context, app: str, operation: Optional[str], note: bool = True) -> None:
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


def ref_of(text: str) -> tuple[str, int]:
    """("job", n) or ("run", n) from a command's argument."""
    try:
        return run_control.parse_ref(text)
    except control.JobError as exc:
        fail(str(exc))


def via_run(text: Optional[str]) -> Optional[int]:
    """The run number of --via R<n> (None without it)."""
    if text is None:
        return None
    kind, number = ref_of(text)
    if kind != "run":
        fail(f"--via takes a run, R<n>, not {text!r}")
    return number


def message_of(text: Optional[str], content: Optional[str]) -> Message:
    """--text or --content (a JSON object) as a Message; exactly one."""
    if (text is None) == (content is None):
        fail("give exactly one of --text or --content")
    if text is not None:
        return Message(text=text)
    assert content is not None
    try:
        custom = json.loads(content)
    except ValueError as exc:
        fail(f"--content is not JSON: {exc}")
    if not isinstance(custom, dict):
        fail("--content must be a JSON object")
    return Message(custom=custom)


def exit_code(status: str, counts: dict[str, int]) -> int:
    """One rule for jobs and runs (a run passes its stages' counts summed)."""
    if status != JobStatus.FINISHED.value:
        return EXIT_STOPPED
    done = (ItemState.OK.value, ItemState.EXISTS.value)
    return EXIT_FAILURES if any(n for state, n in counts.items() if state not in done) else EXIT_OK


def job_json(p: Progress) -> dict[str, Any]:
    """A job as `status --json` prints it (and a schedule's fire, a run's stage)."""
    return {"id": p.job_id, "kind": p.kind, "app": p.app, "status": p.status, "total": p.total,
            "done": p.completed, "counts": p.counts, "stop_reason": p.stop_reason,
            "started_at": p.started_at, "finished_at": p.finished_at}


def _queued(ctx: Context, change: Callable[[], T], hold: Callable[[Exception], str], ref: str) -> T:
    """Run a status change that queues work. If queuing fails half-way,
    `hold` pauses what it queued (and says so): nothing (no worker, no
    sweeper) runs it later."""
    import dramatiq
    import redis

    try:
        return change()
    except control.JobError as exc:
        fail(str(exc))
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        if ctx.embedded:
            raise
        fail(f"{hold(exc)}. `imshift resume {ref}` continues it once Redis works", EXIT_STOPPED)


def queue_job(ctx: Context, job_id: int, change: Callable[[], T]) -> T:
    return _queued(ctx, change, lambda exc: control.hold_after_failed_queue(ctx.engine, job_id, exc),
                   str(job_id))


def start_job(ctx: Context, job_id: int, detach: bool) -> None:
    queue_job(ctx, job_id, lambda: control.start(ctx.engine, ctx.broker, job_id))
    follow_job(ctx, job_id, detach)


def follow_job(ctx: Context, job_id: int, detach: bool) -> None:
    """Run the job in this process (embedded) or watch the workers run it,
    then print its summary; the exit code says how it ended."""
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


def queue_run(ctx: Context, run_id: int, change: Callable[[], T]) -> T:
    """As queue_job, for a run: a failed queuing leaves its stage paused."""
    def hold(exc: Exception) -> str:
        current = find_run(ctx, run_id).current
        return control.hold_after_failed_queue(ctx.engine, current[1].job_id, exc) if current else str(exc)

    return _queued(ctx, change, hold, name(run_id))


def follow_run(ctx: Context, run_id: int, detach: bool) -> None:
    """Follow the run stage by stage until it is no longer running (in the
    embedded mode this process runs it), then print its report."""
    if not ctx.embedded and detach:
        console.print(f"Queued. Follow it with `imshift status {name(run_id)} --watch`.")
        return
    with continued_by(ctx, name(run_id)):
        _follow_run(ctx, run_id)


def _follow_run(ctx: Context, run_id: int) -> None:
    if ctx.embedded:
        ctx.runtime  # noqa: B018  (configures the workers before they start)
    with (stop_signals_interrupt() if ctx.embedded else contextlib.nullcontext(),
          in_process_workers(ctx.broker) if ctx.embedded else contextlib.nullcontext()):
        try:
            while True:
                p = find_run(ctx, run_id)
                current = p.current
                if p.status != JobStatus.RUNNING.value or current is None:
                    break
                stage, stage_progress = current
                if stage_progress.status == JobStatus.RUNNING.value:
                    console.print(f"[bold]{stage}[/bold] (job {stage_progress.job_id})")
                    watch(ctx, stage_progress.job_id, console, sweeping=ctx.embedded)
                else:
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
    p = find_run(ctx, run_id)
    run_report(p)
    raise typer.Exit(run_exit_code(p))


def run_exit_code(p: RunProgress) -> int:
    counts: collections.Counter[str] = collections.Counter()
    for _, sp in p.stages:
        counts.update(sp.counts)
    return exit_code(p.status, counts)


def run_report(p: RunProgress) -> None:
    table = Table(title=f"run {name(p.run_id)}: {p.source_app} -> {p.app}, {p.status}")
    for column in ("stage", "job", "status", "done", "rate", "ETA", "outcomes"):
        table.add_column(column)
    for stage, sp in p.stages:
        running = sp.status == JobStatus.RUNNING.value
        table.add_row(stage, str(sp.job_id), sp.status, f"{sp.completed:,}/{sp.total:,}",
                      f"{sp.rate or 0:,.1f}/s" if sp.started_at else "",
                      fmt_seconds(sp.eta()) if running else "", counts_text(sp))
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


def find_run(ctx: Context, run_id: int) -> RunProgress:
    p = run_control.run_progress(ctx.engine, run_id)
    if p is None:
        fail(f"no run {name(run_id)}")
    return p
