"""`imshift bridge ...`: the cut-over bridge between an old vendor app and a
new one (jobs/bridges.py). The feeds arrive at `imshift serve` (/hooks/APP);
without Redis that server relays them itself, with Redis the workers do."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from imshift.jobs import bridges
from imshift.jobs.run_control import parse_ref
from imshift.jobs.control import JobError

from .clibase import console, fail, load_context

bridge_app = typer.Typer(help="Keep users of the old and the new vendor talking during a cut-over: "
                              "messages on one side's feed are relayed to the other, ids through a "
                              "run's id map.", no_args_is_help=True)

BridgeRef = Annotated[str, typer.Argument(metavar="B<n>", help="A bridge, as `bridge list` shows it.")]


def _seconds(text: str) -> float:
    """"10m", "90s", "1h" or a number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    raw, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        value = float(raw) * unit
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (say 90s, 10m or 1h)") from None
    if value < 0:
        raise typer.BadParameter("a duration is 0 or more")
    return value


def _bid(ref: str) -> int:
    try:
        return bridges.bridge_id(ref)
    except bridges.BridgeError as exc:
        fail(str(exc))
        raise


@bridge_app.command("add")
def add(
    source: Annotated[str, typer.Option("--from", help="The old vendor app (the run's source).")],
    target: Annotated[str, typer.Option("--to", help="The new vendor app (the run's target).")],
    run: Annotated[str, typer.Option("--run", metavar="R<n>", help="The migration run whose id map "
                                     "(and its --since delta runs') maps users and groups.")],
    both_ways: Annotated[bool, typer.Option("--both-ways", help="Also relay what users of the new "
                                            "app send to users still on the old one.")] = False,
    hold: Annotated[str, typer.Option("--hold", help="How long a message to or from an account the "
                                      "run has not mapped yet waits for it, then fails naming the id.")] = "10m",
    settle: Annotated[str, typer.Option("--settle", help="How long each message waits for an earlier "
                                        "one of its conversation the vendor delivered late.")] = "0.3s",
) -> None:
    """Add a bridge; then point each vendor's feed at `imshift serve`'s /hooks/APP."""
    try:
        kind, run_id = parse_ref(run)
    except JobError as exc:
        fail(str(exc))
        raise
    if kind != "run":
        fail(f"--run takes a migration run (R<n>), not job {run}")
    ctx = load_context()
    for app in ([source, target] if both_ways else [source]):
        try:
            cls = ctx.app(app).client_class
        except ValueError as exc:
            fail(str(exc))
            raise
        if not cls.feeds:
            fail(f"{app} ({cls.vendor}) has no message feed imshift can read: it cannot be bridged from")
    for app in ([source, target] if both_ways else [target]):
        cls = ctx.app(app).client_class
        if not cls.feeds:
            fail(f"{app} ({cls.vendor}) cannot take relayed messages yet")
    try:
        bid = bridges.add(ctx.engine, source_app=source, app=target, run_id=run_id, both_ways=both_ways,
                          hold=_seconds(hold), settle=_seconds(settle))
    except bridges.BridgeError as exc:
        fail(str(exc))
        raise
    console.print(f"bridge B{bid}: {source} -> {target}{' and back' if both_ways else ''}, ids "
                  f"through R{run_id}", highlight=False)
    for app in ([source, target] if both_ways else [source]):
        console.print(f"  point {app}'s message feed at http(s)://YOUR-HOST/hooks/{app}"
                      + ("/FEED_SECRET (OpenIM: the app's feed_secret)"
                         if ctx.settings.app(app).vendor == "openim" else ""), highlight=False)
    console.print("  then keep `imshift serve` running (with Redis, also `imshift worker`); "
                  f"`imshift bridge status B{bid} --watch` follows it", highlight=False)


@bridge_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Removed bridges too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The bridges, newest first."""
    ctx = load_context()
    rows = bridges.listed(ctx.engine, removed=all_)
    if as_json:
        print(json.dumps([_brief(r) for r in rows]))
        return
    if not rows:
        console.print("no bridges (`imshift bridge add --from OLD --to NEW --run R<n>`)")
        return
    table = Table(title="bridges (`imshift bridge status B<n>` shows one)")
    for column in ("bridge", "from", "to", "run", "both ways", "status"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"B{r.id}", r.source_app, r.app, f"R{r.run_id}", "yes" if r.both_ways else "no",
                      r.status)
    console.print(table)


def _brief(r: Any) -> dict[str, Any]:
    return {"id": r.id, "name": f"B{r.id}", "from": r.source_app, "to": r.app, "run": f"R{r.run_id}",
            "both_ways": r.both_ways, "status": r.status}


@bridge_app.command("status")
def status(
    ref: BridgeRef,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Print it again every 2 s until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """Relayed, pending, held, failed, duplicates and echoes dropped, refused
    deliveries and the lag p50/p99, per direction."""
    if as_json and watch_:
        fail("--json prints once; it does not go with --watch")
    bid = _bid(ref)
    ctx = load_context()
    while True:
        try:
            report = bridges.report(ctx.engine, bid)
        except bridges.BridgeError as exc:
            fail(str(exc))
            raise
        if as_json:
            print(json.dumps(report))
            return
        _show(report)
        if not watch_:
            return
        try:
            time.sleep(2)
        except KeyboardInterrupt:
            return


def _show(r: dict[str, Any]) -> None:
    console.print(f"bridge {r['name']}: {r['from']} -> {r['to']}{' and back' if r['both_ways'] else ''}, "
                  f"ids through {r['run']}; [bold]{r['status']}[/bold]"
                  + (f" ({r['stop_reason']})" if r["stop_reason"] else ""), highlight=False)
    table = Table()
    for column in ("direction", "relayed", "pending", "held", "failed", "unknown", "duplicates",
                   "echoes", "refused", "lag p50", "lag p99"):
        table.add_column(column)
    for w in r["directions"]:
        table.add_row(f"{w['from']} -> {w['to']}", *(str(w[k]) for k in (
            "relayed", "pending", "held", "failed", "unknown", "duplicates", "echoes", "refused")),
            *(_lag(w[k]) for k in ("lag_p50", "lag_p99")))
    console.print(table)
    for f in r["last_failures"]:
        console.print(f"  {f['state']}: {f['from_app']} message {f['msg_id']}: {f['code']} {f['message']}",
                      highlight=False)


def _lag(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _control(command: str, ref: str) -> None:
    bid = _bid(ref)
    ctx = load_context()
    try:
        state = bridges.control(ctx.engine, bid, command)
    except bridges.BridgeError as exc:
        fail(str(exc))
        raise
    console.print(f"bridge B{bid} is {state}", highlight=False)
    if command == "resume" and not ctx.embedded:
        # Messages stored while paused wait for a relayer: wake one now.
        from imshift.workers import relay

        with ctx.engine.begin() as conn:
            wake = relay.wake_needed(conn, bid, time.time())
        if wake:
            ctx.broker.actors["relay_bridge"].send(bid)


@bridge_app.command("retry")
def retry(
    ref: BridgeRef,
    unknown: Annotated[bool, typer.Option("--unknown", help="Also the messages whose relay was cut off "
                                          "and may have arrived (they may arrive twice).")] = False,
) -> None:
    """Relay the failed messages again (after the delta run mapped a held id,
    or the target came back); they go after what their conversation has had."""
    bid = _bid(ref)
    ctx = load_context()
    try:
        count = bridges.retry(ctx.engine, bid, unknown=unknown)
    except bridges.BridgeError as exc:
        fail(str(exc))
        raise
    console.print(f"bridge B{bid}: {count} message{'s' if count != 1 else ''} to relay again; "
                  "`imshift serve` takes them within a second", highlight=False)


@bridge_app.command("pause")
def pause(ref: BridgeRef) -> None:
    """Stop relaying; deliveries are still stored, and relayed on resume."""
    _control("pause", ref)


@bridge_app.command("resume")
def resume(ref: BridgeRef) -> None:
    """Relay again (after a pause, or a stop for refused credentials)."""
    _control("resume", ref)


@bridge_app.command("remove")
def remove(ref: BridgeRef) -> None:
    """Stop for good: deliveries are refused; the bridge and its messages stay for `status`."""
    _control("remove", ref)

