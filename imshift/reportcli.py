"""The commands that report on a job or a run: `imshift status` (how far
it is) and `imshift results` (what happened to each item, as a table or
an export holding the tokens it obtained)."""

from __future__ import annotations

import csv
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from imshift.jobs.exports import RESULT_FIELDS, export_record, token_key_problem, write_record
from imshift.jobs.progress import progress, recent_jobs, results as item_results
from imshift.jobs.run_control import RunProgress, name
from imshift.models.tables import ItemState, JobStatus

from .clibase import (JobRef, console, err, exit_code, fail, find_run, follow_job, follow_run, job_json,
                      load_context, need_key, ref_of, run_report, target_of)
from .context import Context
from .watch import counts_text, fmt_seconds, summary, watch


def status(
    ref: Annotated[Optional[str], typer.Argument(metavar="[JOB|RUN]", help="A job id or a run "
                                                 "(R<n>); the recent jobs and runs when omitted.")] = None,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow it live.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"jobs": [...], "runs": [...]}: '
                                          "each job's id, kind, app, status, total, done and counts "
                                          "per outcome; each run's stages as such jobs.")] = False,
) -> None:
    """How far a job is: done/total, per-outcome counts, rate and ETA."""
    if as_json and watch_:
        fail("--json prints once; it does not go with --watch")
    kind, job = ref_of(ref) if ref is not None else ("job", None)
    ctx = load_context()
    if job is None:
        return _recent(ctx, as_json)
    if kind == "run":
        return _run_status(ctx, job, watch_, as_json)
    p = progress(ctx.engine, job)
    if p is None:
        fail(f"no job {job}")
    if as_json:
        print(json.dumps({"jobs": [job_json(p)]}))
        return
    if watch_ and p.status == JobStatus.RUNNING.value:
        if ctx.embedded:
            target_of(ctx, p.app)  # this process runs it: check its app first
            need_key(ctx, p.app, p.operation, note=False)
            follow_job(ctx, job, detach=False)
            return
        p = watch(ctx, job, console)
        summary(ctx, p, console)
        raise typer.Exit(exit_code(p.status, p.counts))
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
            console.print(f"  [yellow]no progress for {fmt_seconds(idle)}[/yellow]: {runner}")
        else:
            console.print(f"  rate {p.rate or 0:,.1f} items/s, ETA {fmt_seconds(p.eta())}")


def _recent(ctx: Context, as_json: bool) -> None:
    """`imshift status` alone: the recent jobs and runs."""
    from imshift.jobs.run_control import recent_runs

    jobs, listed = recent_jobs(ctx.engine), recent_runs(ctx.engine)
    if as_json:
        print(json.dumps({"jobs": [job_json(p) for p in jobs], "runs": [run_json(r) for r in listed]}))
        return
    table = Table(title="recent jobs")
    for column in ("job", "kind", "app", "status", "done", "counts"):
        table.add_column(column)
    for p in jobs:
        table.add_row(str(p.job_id), p.kind, p.app, p.status, f"{p.completed}/{p.total}",
                      counts_text(p))
    console.print(table)
    if listed:
        table = Table(title="recent runs (`imshift status R<n>` shows one)")
        for column in ("run", "from", "to", "status", "stage now"):
            table.add_column(column)
        for r in listed:
            current = r.current
            table.add_row(f"R{r.run_id}", r.source_app, r.app, r.status,
                          f"{current[0]} {current[1].completed}/{current[1].total}" if current else "")
        console.print(table)


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
    kind, job = ref_of(ref)
    ctx = load_context()
    if kind == "run":
        return _run_results(ctx, job, stage, outcome, format.value, output)
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


def _run_status(ctx: Context, run_id: int, watch_: bool, as_json: bool) -> None:
    p = find_run(ctx, run_id)
    if as_json:
        print(json.dumps({"runs": [run_json(p)]}))
        return
    if watch_ and p.status == JobStatus.RUNNING.value:
        if ctx.embedded:
            target_of(ctx, p.app)
        follow_run(ctx, run_id, detach=False)
    run_report(p)


def run_json(p: RunProgress) -> dict:
    return {"id": name(p.run_id), "from": p.source_app, "to": p.app, "status": p.status,
            "stages": [{"stage": s, **job_json(sp)} for s, sp in p.stages]}


def _run_results(ctx: Context, run_id: int, stage: Optional[str], outcome: Optional[str],
            format: str, output: Optional[Path]) -> None:
    p = find_run(ctx, run_id)
    stages = [(s, sp) for s, sp in p.stages if stage is None or s == stage]
    if stage is not None and not stages:
        fail(f"run {name(run_id)} has no {stage} stage (it has: {', '.join(s for s, _ in p.stages)})")
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
        _check_token_key(ctx, sp.job_id)
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    if output:
        os.chmod(output, 0o600)  # it may hold tokens
    try:
        writer = csv.DictWriter(out, ["stage", *RESULT_FIELDS]) if format == "csv" else None
        if writer:
            writer.writeheader()
        for s, sp in stages:
            for record in records(ctx, sp.job_id, outcome):
                write_record(out, writer, {"stage": s, **record})
    finally:
        if output:
            out.close()
