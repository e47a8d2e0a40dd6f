"""The commands that create a job: migrate users, tokens refresh, send,
broadcast (imshift/runcli.py steers jobs and runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from imshift.jobs import control, kinds
from imshift.jobs.inputs import InputError
from imshift.jobs.plan import PlanReport
from imshift.jobs.target import missing_text
from imshift.vendors.vocabulary import Missing, Operation, Unsupported

from .appcheck import refuse_unless_reached
from .clibase import (Detach, DryRun, Via, check_broker, console, fail, load_context,
                      message_of, need_key, start_job, target_of, via_run)
from .context import Context
from .watch import fmt_seconds

InputPath = Annotated[Path, typer.Option("--input", "-i", help="A .csv, .jsonl or .txt file.",
                                         exists=False)]

migrate_app = typer.Typer(help="Move data from one vendor app to another.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bulk token work.", no_args_is_help=True)


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
        console.print(f"  estimated run time at {rate:g} calls/s: {fmt_seconds(estimate)}")


def _launch(ctx: Context, planned: kinds.Planned, operation: Operation, app: str,
            dry_run: bool, detach: bool) -> None:
    _report(ctx, planned, operation, app)
    job_id = planned.report.job_id
    if dry_run:
        control.mark_planned(ctx.engine, job_id)
        console.print(f"Dry run: nothing sent. Start it with `imshift start {job_id}`.")
        return
    start_job(ctx, job_id, detach)


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
    ctx = load_context()
    if source != target:
        target_of(ctx, source)  # a typo in --from should fail now, not after the run
    tgt = target_of(ctx, target)
    need_key(ctx, target, Operation.REGISTER.value)
    if not dry_run:
        check_broker(ctx)
    else:  # a dry run promises the run would start: the target must take its credentials
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
    ctx = load_context()
    need_key(ctx, app, Operation.ISSUE_TOKEN.value)
    tgt = target_of(ctx, app)
    if not dry_run:
        check_broker(ctx)
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
    message = message_of(text, content)
    run = via_run(via)
    ctx = load_context()
    tgt = target_of(ctx, app)
    if not dry_run:
        check_broker(ctx)
    if to is not None:
        planned = _plan(ctx, lambda progress: kinds.plan_send(
            ctx.engine, tgt, to, sender=sender, message=message,
            chunk_size=ctx.settings.chunk_size, progress=progress, via=run))
        _launch(ctx, planned, Operation.SEND, app, dry_run, detach)
    elif to_groups is not None:  # exactly one of the two, checked above
        planned = _plan(ctx, lambda progress: kinds.plan_group_send(
            ctx.engine, tgt, to_groups, sender=sender, message=message,
            chunk_size=ctx.settings.chunk_size, progress=progress, via=run))
        _launch(ctx, planned, Operation.SEND_GROUP, app, dry_run, detach)


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
    message = message_of(text, content)
    run = via_run(via)
    ctx = load_context()
    tgt = target_of(ctx, app)
    if not dry_run:
        check_broker(ctx)
    planned = _plan(ctx, lambda progress: kinds.plan_broadcast(
        ctx.engine, tgt, sender=sender, message=message, chunk_size=ctx.settings.chunk_size,
        via=run))
    _launch(ctx, planned, Operation.BROADCAST, app, dry_run, detach)

