"""The schedule commands: `imshift schedule add|list|show|history|pause|
resume|remove` and `imshift scheduler`, which fires due schedules
(jobs/schedules.py makes and fires them; jobs/schedule_pages.py pages
their fires)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from imshift.jobs import control, schedules
from imshift.jobs.schedule_pages import fires_page

from .clibase import (check_broker, console, err, fail, job_json, load_context, message_of, target_of,
                      via_run)
from .context import Context
from .watch import counts_text

# The commands a schedule runs, by name ("send", "broadcast"): imshift/cli.py
# puts them here when it registers the commands (they are imshift/jobcli.py's).
SCHEDULABLE: dict[str, Callable[..., None]] = {}

schedule_app = typer.Typer(help="Sends and broadcasts at a set time or on a cron schedule; "
                                "`imshift scheduler` fires them.", no_args_is_help=True)


def _seconds(text: str) -> float:
    """A duration: 900, 90s, 15m, 2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        fail(f"--catch-up {text!r} is not a duration such as 900, 90s, 15m or 2h")
    if value < 0:
        fail("--catch-up must be 0 or more")
    return value


def _scheduled(args: list[str]) -> tuple[str, str, dict]:
    """The command after `--` parsed by its own options, as (command, app,
    params): the same checks as typing it, nothing run."""
    from typer.exceptions import TyperException

    from imshift.vendors.operations import encode_message

    commands = SCHEDULABLE
    if not args or args[0] not in commands:
        fail("after `--` give the command to schedule: `send ...` or `broadcast ...`")
    one = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})
    one.command()(commands[args[0]])
    try:
        parsed = typer.main.get_command(one).make_context(args[0], list(args[1:])).params
    except typer.Exit:
        raise typer.Exit(0) from None  # --help
    except TyperException as exc:  # a usage error: one line, not the help panel
        fail(f"{args[0]}: {exc.format_message()}")
    if parsed.get("dry_run") or parsed.get("detach"):
        fail("--dry-run and --detach do not go with a schedule")
    message = encode_message(message_of(parsed["text"], parsed["content"]))
    # --via is kept, not mapped: the ids are mapped when the schedule fires.
    params = {"sender": parsed["sender"], "message": message,
              **({"via": via_run(parsed["via"])} if parsed["via"] else {})}
    if args[0] == "broadcast":
        return "broadcast", parsed["app"], params
    if (parsed["to"] is None) == (parsed["to_groups"] is None):
        fail("give exactly one of --to (recipients) or --to-groups (groups)")
    if parsed["to_groups"] is not None:
        return "send_group", parsed["app"], {**params, "to_groups": str(parsed["to_groups"])}
    return "send", parsed["app"], {**params, "to": str(parsed["to"])}


def _when(row) -> str:
    if schedules.is_local(row.params):
        when = f"cron {row.cron!r}" if row.cron else f"at {row.params['local_at']}"
        return (f"{when} on each recipient's clock ({len(row.params['zones'])} "
                f"zones; {row.params['fallback_rows']} rows without a known zone use {row.tz})")
    return (f"at {schedules.local(row.at, row.tz)}" if row.at is not None
            else f"cron {row.cron!r} in {row.tz}")


@schedule_app.command("add", context_settings={"allow_extra_args": True,
                                               "ignore_unknown_options": True})
def schedule_add(
    context: typer.Context,
    at: Annotated[Optional[str], typer.Option(help="An ISO 8601 local time, e.g. "
                                              "'2026-12-24 09:00', read in --tz.")] = None,
    cron: Annotated[Optional[str], typer.Option(help="Five cron fields (six: seconds first), "
                                                "e.g. '0 9 * * MON', read in --tz.")] = None,
    tz: Annotated[str, typer.Option(help="The zone of --at and --cron (IANA name).")] = "UTC",
    catch_up: Annotated[str, typer.Option(help="A fire this late (no scheduler ran) still "
                                          "fires once; later ones are recorded missed.")] = "15m",
    local_time: Annotated[bool, typer.Option("--local-time", help="--at or --cron in each "
                                             "recipient's own zone (--tz-column): a fire per "
                                             "zone; rows without a known zone use --tz.")] = False,
    tz_column: Annotated[str, typer.Option(help="With --local-time: the recipients' zone "
                                           "column.")] = "tz",
) -> None:
    """Schedule a send or broadcast: `imshift schedule add --at TIME --tz ZONE -- send ...`.

    The recipient file is checked now and read when the schedule fires."""
    command, app, params = _scheduled(list(context.args))
    window = _seconds(catch_up)
    ctx = load_context()
    tgt = target_of(ctx, app)
    try:
        if local_time:
            if at is None and cron is None:
                fail("--local-time needs --at (a time of day, or a date and time) or --cron")
            params = {**params, "tz_column": tz_column}
            if at is not None:  # a wall time, read on each recipient zone's clock
                params["local_at"] = schedules.parse_local_at(at)
                at = None
        when = schedules.parse_at(at, tz) if at is not None else None
        schedule_id = schedules.add(ctx.engine, tgt, command=command, params=params, at=when,
                                    cron=cron, tz=tz, catch_up=window)
    except schedules.ScheduleError as exc:
        fail(f"{exc}. Nothing was scheduled.")
    row = schedules.get(ctx.engine, schedule_id)
    console.print(f"schedule [bold]{schedule_id}[/bold]: {command} on {app}, {_when(row)}; "
                  f"next fire {schedules.local(row.next_at, row.tz)}. `imshift scheduler` fires it.",
                  highlight=False)


def _schedule(ctx: Context, schedule_id: int):
    try:
        return schedules.get(ctx.engine, schedule_id)
    except schedules.ScheduleError as exc:
        fail(str(exc))


@schedule_app.command("list")
def schedule_list(
    all_: Annotated[bool, typer.Option("--all", help="Removed schedules too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"schedules": [...]}, as GET '
                                          "/api/schedules.")] = False,
) -> None:
    """The schedules, with their next fire."""
    ctx = load_context()
    if as_json:
        print(json.dumps({"schedules": [schedule_json(ctx, row) for row in
                                        schedules.listed(ctx.engine, include_removed=all_)]}))
        return
    table = Table(title="schedules")
    for column in ("id", "command", "app", "when", "status", "next fire"):
        table.add_column(column)
    for row in schedules.listed(ctx.engine, include_removed=all_):
        table.add_row(str(row.id), row.command, row.app, _when(row), row.status,
                      schedules.local(row.next_at, row.tz))
    console.print(table)


@schedule_app.command("show")
def schedule_show(
    schedule_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the schedule as GET "
                                          "/api/schedules/ID does.")] = False,
) -> None:
    """One schedule: what it sends, when, and its last fires."""
    ctx = load_context()
    row = _schedule(ctx, schedule_id)
    if as_json:
        print(json.dumps(schedule_json(ctx, row)))
        return
    p = row.params
    to = p.get("to") or p.get("to_groups")
    console.print(f"schedule {row.id}: {row.command} on {row.app}, {_when(row)}, {row.status}",
                  highlight=False)
    console.print(f"  sender {p.get('sender') or '-'}" + (f", recipients from {to}" if to else "")
                  + (f"; ids mapped through run R{p['via']}'s id map" if p.get("via") else "")
                  + f"; message {json.dumps(p['message'], ensure_ascii=False)}", highlight=False)
    console.print(f"  next fire {schedules.local(row.next_at, row.tz)}; catch-up "
                  f"{row.catch_up:g} s; `imshift schedule history {row.id}` lists its fires",
                  highlight=False)


@schedule_app.command("history")
def schedule_history(
    schedule_id: Annotated[int, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many of the latest fires.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"fires": [...]}, newest first, '
                                          "as GET /api/schedules/ID/fires.")] = False,
) -> None:
    """The latest fires of a schedule: when each was due, what happened, its job's counts."""
    ctx = load_context()
    row = _schedule(ctx, schedule_id)
    if as_json:
        print(json.dumps({"fires": [fire_json(f, row.tz) for f in
                                    fires_page(ctx.engine, row.id, limit=limit)]}))
        return
    console.print(history_table(ctx, row, limit))


def fire_json(fire, tz: str) -> dict:
    return {"fire_at": fire.fire_at, "fire_time": schedules.local(fire.fire_at, tz),
            "state": fire.state, "job_id": fire.job_id, "note": fire.note,
            "job": job_json(fire.job) if fire.job else None}


def schedule_json(ctx: Context, row) -> dict:
    """A schedule as the HTTP API shows it (the same field names); never a credential."""
    p = row.params

    def clock(t):
        return None if t is None else schedules.local(t, row.tz)

    last = fires_page(ctx.engine, row.id, limit=1)
    return {"id": row.id, "command": row.command, "app": row.app, "status": row.status,
            "at": row.at, "at_time": clock(row.at), "cron": row.cron, "tz": row.tz,
            "local_at": p.get("local_at"), "zones": p.get("zones"), "next_at": row.next_at,
            "next_fire": clock(row.next_at), "catch_up_seconds": row.catch_up,
            "created_at": row.created_at, "sender": p.get("sender"),
            "recipients": p.get("to") or p.get("to_groups"), "message": p.get("message") or {},
            "last_fire": fire_json(last[0], row.tz) if last else None}


def history_table(ctx: Context, row, limit: int = 20) -> Table:
    """The latest `limit` fires of schedule `row`, oldest first (shared with
    `imshift demo`); the same page of fires the HTTP API serves."""
    table = Table(title=f"fires of schedule {row.id}")
    for column in ("due", "fire", "job", "job status", "counts", "note"):
        table.add_column(column)
    for fire in reversed(fires_page(ctx.engine, row.id, limit=limit)):
        table.add_row(schedules.local(fire.fire_at, row.tz), fire.state, str(fire.job_id or ""),
                      fire.job.status if fire.job else "", counts_text(fire.job) if fire.job else "",
                      fire.note or "")
    return table


def _schedule_change(schedule_id: int, change, done: str) -> None:
    ctx = load_context()
    try:
        change(ctx.engine, schedule_id)
    except schedules.ScheduleError as exc:
        fail(str(exc))
    row = schedules.get(ctx.engine, schedule_id)
    console.print(f"schedule {schedule_id} {done}; next fire "
                  f"{schedules.local(row.next_at, row.tz)}", highlight=False)


@schedule_app.command("pause")
def schedule_pause(schedule_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """No fires until resumed (a fire's job already running runs on: `imshift cancel JOB`)."""
    _schedule_change(schedule_id, schedules.pause, "paused")


@schedule_app.command("resume")
def schedule_resume(schedule_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Fire again from now on (fires due while paused are not made up)."""
    _schedule_change(schedule_id, schedules.resume, "resumed")


@schedule_app.command("remove")
def schedule_remove(schedule_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """No more fires; its history is kept."""
    _schedule_change(schedule_id, schedules.remove, "removed")


ELSEWHERE_WAIT = 0.1  # seconds between looks while another scheduler plans a due fire


def scheduler(
    poll: Annotated[float, typer.Option(min=0.05, help="Most seconds between looks for due "
                                        "schedules (it wakes when the next one is due).")] = 1.0,
) -> None:
    """Fire due schedules, each exactly once however many schedulers run.
    Without Redis it also runs the fired jobs in this process."""
    import contextlib

    import dramatiq
    import redis
    from sqlalchemy.exc import DBAPIError

    from imshift.workers.embedded import in_process_workers
    from imshift.workers.sweeper import sweep

    ctx = load_context()
    check_broker(ctx)
    firing = schedules.Firing(ctx.engine, ctx.target,
                              lambda job_id: control.start(ctx.engine, ctx.broker, job_id),
                              ctx.settings.chunk_size)
    where = "this process runs their jobs" if ctx.embedded else "workers run their jobs"
    console.print(f"scheduler: looking for due schedules every {poll:g} s; {where}. Ctrl-C stops.")
    last_orphans = last_sweep = 0.0
    ctx.runtime  # noqa: B018  (configures the workers before they start)
    with in_process_workers(ctx.broker) if ctx.embedded else contextlib.nullcontext():
        try:
            while True:
                try:
                    fired_now = schedules.fire_due(firing)
                    for fired in fired_now:
                        print_fired(ctx, fired)
                    now = time.monotonic()
                    if now - last_orphans > 60:
                        schedules.sweep_orphans(ctx.engine)
                        last_orphans = now
                    # The embedded mode has no worker to re-send stale chunks,
                    # or to take over a killed scheduler's job: this does.
                    if ctx.embedded and now - last_sweep > ctx.settings.stale_after / 4:
                        sweep(ctx.runtime)
                        last_sweep = now
                    pause = schedules.wait_seconds(ctx.engine, poll)  # wake when one is due
                    if any(f.state == "elsewhere" for f in fired_now):
                        # Another scheduler is planning a due fire (jobs/fire_claim.py):
                        # look again soon, not every MIN_WAIT while its planning lasts.
                        pause = max(pause, min(poll, ELSEWHERE_WAIT))
                except (DBAPIError, redis.RedisError, dramatiq.errors.DramatiqError) as exc:
                    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
                    err.print(f"scheduler: {type(exc).__name__}: {reason}; trying again in "
                              f"{poll:g} s (fired jobs not yet started are started then)",
                              highlight=False)
                    pause = poll
                time.sleep(pause)
        except KeyboardInterrupt:
            console.print("scheduler stopped")


def print_fired(ctx: Context, fired, console: Console = console) -> None:
    if fired.state == "elsewhere":
        return
    row = schedules.get(ctx.engine, fired.schedule_id)
    what = {"fired": f"fired as job {fired.job_id}", "missed": "missed (see its history)",
            "failed": f"failed: {fired.note}"}[fired.state]
    console.print(f"schedule {fired.schedule_id} due {schedules.local(fired.fire_at, row.tz)}: "
                  f"{what}", highlight=False)
