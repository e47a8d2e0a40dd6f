"""The `imshift` command: a thin face over the library."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from imshift import __version__, bridgecli, checkcli, clibase, jobcli, reportcli, runcli, schedulecli
from imshift.vendors.vocabulary import Operation

EXIT_CODES = ("Exit codes, for a job or a run: 0 it finished and every input row ended ok or "
              "exists; 3 it finished with rows that ended otherwise (refused at planning, "
              "rejected, failed, unknown, skipped: `imshift results JOB|R<n>`); 1 it stopped, was "
              "paused or cancelled, or a service (Redis, the database) failed; 2 a wrong request "
              "or setting, nothing run.")

class App(typer.Typer):
    def __call__(self, *args, **kwargs):
        from sqlalchemy.exc import DBAPIError

        try:
            return super().__call__(*args, **kwargs)
        except DBAPIError as exc:  # the database is down, full, or refuses us: one line
            try:
                clibase.database_failed(exc, "Fix it (DATABASE_URL), then run the command again; "
                                            "`imshift status` shows where each job stands")
            except typer.Exit as done:
                sys.exit(done.exit_code)
        except OSError as exc:  # a full disk, a folder that cannot be written
            where = f" ({exc.filename})" if exc.filename else ""
            clibase.err.print(f"[red]error:[/red] {exc.strerror or exc}{where}; nothing in the "
                             "jobs changed: fix it and run the command again", highlight=False)
            sys.exit(1)


app = App(help="Bulk work on cloud IM vendors' server APIs: migrations, token refreshes, "
                       "mass sends.", epilog=EXIT_CODES, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,
                  context_settings={"help_option_names": ["-h", "--help"]})  # every command inherits it
console = Console()
app.add_typer(jobcli.migrate_app, name="migrate")
app.add_typer(jobcli.tokens_app, name="tokens")
app.add_typer(schedulecli.schedule_app, name="schedule")
jobcli.migrate_app.command("run")(runcli.migrate_run)
for command in (runcli.idmap, jobcli.send, jobcli.broadcast, runcli.start, reportcli.status,
                reportcli.results, runcli.retry, runcli.cancel, runcli.pause, runcli.resume,
                schedulecli.scheduler):
    app.command()(command)
schedulecli.SCHEDULABLE.update(send=jobcli.send, broadcast=jobcli.broadcast)
app.add_typer(bridgecli.bridge_app, name="bridge")
app.command()(checkcli.check)


def _version(value: bool) -> None:
    if value:
        print(f"imshift {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


@app.command()
def worker(
    processes: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="Chunks in flight per process.")] = 8,
    metrics_port: Annotated[Optional[int], typer.Option(
        min=1, max=65535, help="Serve the processes' Prometheus metrics on this port (loopback).")] = None,
) -> None:
    """Start workers that take chunks from Redis (REDIS_URL) and run them. A
    worker process that dies is started again; SIGTERM or Ctrl-C stops them all."""
    from imshift.pool import supervise

    ctx = clibase.load_context()
    if ctx.embedded:
        clibase.fail("workers need REDIS_URL; without it, imshift runs each job inside the "
                    "command that starts it.")
    for name in ctx.settings.apps:  # a typo in any app fails now, not in every chunk
        try:
            ctx.app(name)
        except ValueError as exc:
            clibase.fail(str(exc))
    if metrics_port is not None:
        from imshift.metrics import serve_workers

        serve_workers(metrics_port)
    raise typer.Exit(supervise(processes, threads))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback only with "
                                      "IMSHIFT_API_TOKEN set).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
) -> None:
    """Serve the HTTP API (/api, /openapi.json), the live page (/) and
    Prometheus metrics (/metrics). Without Redis it also runs the jobs it
    resumes or retries."""
    from imshift.api_serve import serve as run

    raise typer.Exit(run(clibase.load_context(), host, port, console.print))


@app.command()
def keygen() -> None:
    """Print a new key for IMSHIFT_TOKEN_KEY (tokens are stored encrypted with it)."""
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())


def per_second(rate: float) -> str:
    if rate >= 0.1:
        return f"{rate:g}/s"
    return f"{rate * 60:.3g}/min" if rate * 60 >= 1 else f"{rate * 3600:.3g}/h"


@app.command()
def vendors() -> None:
    """Show what each vendor supports: operations, batch sizes, default rates and caps."""
    from imshift.vendors.registry import VENDORS
    from imshift.vendors.vocabulary import PER

    table = Table(title="Vendor capabilities (batch size per call / default calls per second)")
    table.add_column("operation")
    for v in VENDORS.values():
        table.add_column(v.title)
    for op in Operation:
        row = [op.value]
        for v in VENDORS.values():
            if not v.client.supports(op):
                row.append("[dim]-[/dim]")
                continue
            batch = v.client.rules.batch_size.get(op, 1)
            rate = v.client.rules.rates.get(op)
            caps = "".join(f", {c.calls} {PER[c.per]}" for c in v.client.rules.caps.get(op, ()))
            row.append((f"{batch}/call, {per_second(rate)}" if rate else f"{batch}/call") + caps)
        table.add_row(*row)
    # Wide enough for five columns even when piped (rich assumes 80 columns then).
    Console(width=max(console.width, 120)).print(table)


@app.command()
def sandbox(
    vendor: Annotated[Optional[list[str]], typer.Option(
        help="Vendor to serve (repeatable); every vendor when omitted.")] = None,
    port: Annotated[Optional[int], typer.Option(
        help="Port for a single vendor (default: the vendor's own, shown at start).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    rate: Annotated[Optional[list[str]], typer.Option(
        help="Rate limit per operation, OP=CALLS_PER_SECOND (repeatable), e.g. register=400.")] = None,
    latency: Annotated[float, typer.Option(help="Seconds added to every call.")] = 0.0,
    jitter: Annotated[float, typer.Option(
        help="Up to this many seconds (uniform) before a call is counted: network jitter.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share of calls answered with a 5xx.")] = 0.0,
) -> None:
    """Serve vendor sandboxes (in-memory simulators of the vendors' APIs) on loopback."""
    from imshift.vendors.registry import VENDORS, vendor as find_vendor
    from imshift.vendors.sandbox.common import Faults
    from imshift.vendors.sandbox.serve import serve

    try:
        chosen = [find_vendor(name) for name in vendor] if vendor else list(VENDORS.values())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vendor") from None
    if port is not None and len(chosen) != 1:
        raise typer.BadParameter("--port needs exactly one --vendor", param_hint="--port")
    limits = {}
    for item in rate or []:
        op, _, value = item.partition("=")
        try:
            limits[op] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not OP=NUMBER", param_hint="--rate") from None
    pairs = []
    for v in chosen:
        box = v.sandbox(rate_limits=limits, faults=Faults(latency=latency, jitter=jitter,
                                                                error_rate=error_rate))
        where = port if port is not None else v.sandbox_port
        pairs.append((box, where))
        console.print(f"{v.title:15} http://{host}:{where}   client config: {box.config(f'http://{host}:{where}')!r}")
    console.print("Counters (calls, over-limit replies, busiest second): GET <url>/_sandbox/stats. "
                  "Serving; Ctrl-C stops.")
    try:
        asyncio.run(serve(pairs, host=host))
    except KeyboardInterrupt:
        pass


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=100, max=1_000_000, help="Users to migrate.")] = 2_000,
) -> None:
    """Migrate sample users between two vendor sandboxes and message them, on
    embedded defaults (SQLite, in-process broker and workers)."""
    from imshift.demo import run_demo

    run_demo(users, console)


if __name__ == "__main__":
    app()
