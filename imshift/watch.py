"""Live progress of a job, and running one to the end in-process."""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from imshift.jobs import control
from imshift.jobs.progress import FAILED, Progress as JobProgress, first_failures, progress
from imshift.models.tables import JobStatus
from imshift.workers.embedded import in_process_workers
from imshift.workers.sweeper import sweep

from .context import Context


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def counts_text(p: JobProgress) -> str:
    return " ".join(f"{state}={n}" for state, n in sorted(p.counts.items()))


def _progress(ctx: Context, job_id: int) -> JobProgress:
    p = progress(ctx.engine, job_id)
    if p is None:  # only a job never planned whole is ever removed, and such a job never runs
        raise LookupError(f"no job {job_id}")
    return p


PLAIN_EVERY = 5.0  # seconds between progress lines when the output is not a terminal


def watch(ctx: Context, job_id: int, console: Console, *, sweeping: bool = False) -> JobProgress:
    """Show progress until the job is no longer running. With `sweeping`, this
    process also re-sends stale chunks (the embedded mode has no worker to).
    Into a pipe or a file, a plain line every PLAIN_EVERY seconds instead of
    a bar (which would show only at the end)."""
    # Workers record whole chunks at once: average over ~15 s for a steady rate.
    samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=60)
    last_sweep = time.monotonic()
    last_line = -PLAIN_EVERY
    bar = None if not console.is_terminal else Progress(
        TextColumn("job {task.fields[job]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}/s  ETA {task.fields[eta]}  {task.fields[counts]}"),
        console=console, transient=False)
    with bar if bar is not None else contextlib.nullcontext():
        p = _progress(ctx, job_id)
        task = None if bar is None else bar.add_task("", total=p.total, job=job_id, rate="?",
                                                     eta="?", counts="")
        while True:
            p = _progress(ctx, job_id)
            now = time.monotonic()
            samples.append((now, p.done))
            first_t, first_done = samples[0]
            rate = (p.done - first_done) / (now - first_t) if now - first_t > 5 else p.rate
            running = p.status == JobStatus.RUNNING.value
            if bar is not None and task is not None:
                bar.update(task, completed=p.done, rate=f"{rate or 0:,.0f}",
                           eta=fmt_seconds(p.eta(rate)), counts=counts_text(p))
            elif now - last_line >= PLAIN_EVERY or not running:
                console.print(f"job {job_id}: {p.done:,}/{p.total:,} {rate or 0:,.0f}/s ETA "
                              f"{fmt_seconds(p.eta(rate))} {counts_text(p)}", highlight=False)
                last_line = now
            if not running:
                return p
            if sweeping and now - last_sweep > ctx.runtime.tuning.stale_after / 4:
                sweep(ctx.runtime)
                last_sweep = now
            time.sleep(0.25)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a service manager, a closed terminal): handled as
    Ctrl-C, with the exit code a shell gives that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def exit_code_of(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "code", 130)


@contextlib.contextmanager
def stop_signals_interrupt():
    """While this process runs a job, SIGTERM and SIGHUP stop it as Ctrl-C
    does (the job paused, resumable), instead of leaving it `running`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Stopped(signum)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def run_in_process(ctx: Context, job_id: int, console: Console, threads: int = 8) -> JobProgress:
    """The embedded mode: workers inside this process until the job ends.
    Ctrl-C, SIGTERM or SIGHUP pauses the job, so `imshift resume` picks it up later."""
    ctx.runtime  # noqa: B018  (configures the workers before they start)
    with stop_signals_interrupt(), in_process_workers(ctx.broker, threads):
        try:
            return watch(ctx, job_id, console, sweeping=True)
        except KeyboardInterrupt:
            with contextlib.suppress(control.JobError):  # it ended meanwhile: nothing to pause
                control.pause(ctx.engine, job_id)
                console.print(f"\n[yellow]Paused job {job_id}[/yellow]; `imshift resume {job_id}` continues it.")
            raise


def summary(ctx: Context, p: JobProgress, console: Console, examples: int = 10) -> None:
    elapsed = (p.finished_at or time.time()) - p.started_at if p.started_at else None
    cancelled = p.counts.get("cancelled", 0)
    console.print(f"\n[bold]job {p.job_id}[/bold] ({p.kind} on {p.app}): {p.status}, "
                  f"{p.completed}/{p.total} items done"
                  + (f", {cancelled} cancelled" if cancelled else "")
                  + f" in {fmt_seconds(elapsed)}")
    console.print("  " + counts_text(p))
    if p.stop_reason:
        console.print(f"  [red]{p.stop_reason}[/red]")
    failed = [state for state in FAILED if p.counts.get(state)]
    if not failed:
        return
    every = f"imshift results {p.job_id} --outcome {failed[0]}"
    rows = first_failures(ctx.engine, p.job_id, examples) if examples > 0 else []
    if not rows:  # a table with no rows says nothing: point at the command instead
        console.print(f"  what did not make it: `{every}`", highlight=False)
        return
    table = Table(title=f"first problems (all: {every})")
    for column in ("row", "id", "outcome", "code", "reason"):
        table.add_column(column)
    for item in rows:
        table.add_row(str(item.row), item.key[:40], item.state, item.code or "", item.message or "")
    console.print(table)
