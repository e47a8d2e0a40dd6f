"""Benchmark 4, query: the progress query and the failed-items queries on a
1,000,000-item job, SQLite and PostgreSQL, idle and while a worker writes.

The job is built in the database itself (one INSERT ... SELECT over a
number series, so 1M rows take seconds, not minutes): the first 98.5% of
the items are done with a realistic mix (90% ok, 4% exists, 3% rejected,
1% failed, 0.5% unknown of the total, scattered), then a band of claimed
items, then the pending tail, as a job part-way through looks. job_counts
comes from store.recount, so it matches the items.

Timed, interleaved, N times each: progress(engine, job) and the first page
of results(engine, job, "rejected") and of "failed" (what `imshift status`
and `imshift results --outcome ...` run). The writing phase runs a writer
in another process (as workers are) that claims the pending tail chunk by
chunk and records outcomes through models.store at a steady rate.

    python -m bench query                 # 1M items, SQLite and PostgreSQL
    python -m bench query --quick         # 20k items, 50 repetitions
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, figures, percentile

PROGRESS_P99_TARGET_MS = 100
CHUNK = 200
# Buckets over 1970 give the shares of the whole job (ok 90%, exists 4%,
# rejected 3%, failed 1%, unknown 0.5%) to its first 98.5%; the rest is open.
DONE_SHARE = 0.985
CLAIMED_SHARE = 0.001

FILL_SQL = """
INSERT INTO items (job_id, seq, key, row, payload, state, attempts, code, message, result,
                   claim, claimed_at, lease_until, updated_at)
SELECT :job_id, i, 'user_' || i, i + 2,
       {json}('name', 'User ' || i, 'avatar', 'https://cdn.example.com/a/' || i || '.png'),
       state,
       CASE state WHEN 'pending' THEN 0 WHEN 'failed' THEN 8 ELSE 1 END,
       CASE state WHEN 'rejected' THEN (CASE WHEN b % 7 = 0 THEN 'invalid' ELSE '414' END)
                  WHEN 'failed' THEN '503' WHEN 'unknown' THEN 'unknown' END,
       CASE state WHEN 'rejected' THEN (CASE WHEN b % 7 = 0 THEN 'name: 80 chars, at most 64 allowed'
                                             ELSE 'parameter error: accid user_' || i END)
                  WHEN 'failed' THEN 'gave up after 8 attempts: service unavailable'
                  WHEN 'unknown' THEN 'the worker stopped after sending; not re-sent' END,
       CASE WHEN state IN ('ok', 'exists') THEN {json}('user_id', 'user_' || i) END,
       CASE state WHEN 'claimed' THEN 'bench-claim' END,
       CASE WHEN state <> 'pending' THEN :now - 60 END,
       CASE state WHEN 'claimed' THEN :now + 600 END,
       CASE WHEN state <> 'pending' THEN :now - 60 + i * 0.00001 END
FROM (SELECT i, b,
             CASE WHEN i >= :pending_from THEN 'pending' WHEN i >= :claimed_from THEN 'claimed'
                  WHEN b < 1800 THEN 'ok' WHEN b < 1880 THEN 'exists' WHEN b < 1940 THEN 'rejected'
                  WHEN b < 1960 THEN 'failed' ELSE 'unknown' END AS state
      FROM (SELECT i, (i * 7919) % 1970 AS b FROM {series}) AS n) AS s
"""
SERIES = {
    "sqlite": ("(WITH RECURSIVE r(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM r WHERE i < :hi) "
               "SELECT i FROM r) AS r", "json_object"),
    "postgresql": ("generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS r(i)",
                   "json_build_object"),
}


def build_job(engine, total: int, done_share: float = DONE_SHARE) -> tuple[int, int]:
    """A running job of `total` items, the first `done_share` of them done;
    returns (job id, first pending seq)."""
    from sqlalchemy import text, update

    from imshift.jobs.plan import create_job
    from imshift.models import store
    from imshift.models.tables import Job

    job_id = create_job(engine, kind="migrate_users", operation="register", app="new",
                        params={"input": "users.csv", "chunk_size": CHUNK})
    claimed_from = int(total * done_share)
    pending_from = claimed_from + max(1, int(total * CLAIMED_SHARE))
    series, json_fn = SERIES[engine.dialect.name]
    fill = text(FILL_SQL.format(json=json_fn, series=series))
    now = time.time()
    for lo in range(0, total, 100_000):  # slices: one huge statement would hold a lot of WAL/undo
        with engine.begin() as conn:
            conn.execute(fill, {"job_id": job_id, "lo": lo, "hi": min(lo + 100_000, total) - 1,
                                "now": now, "claimed_from": claimed_from,
                                "pending_from": pending_from})
    with engine.begin() as conn:
        store.recount(conn, job_id)
        conn.execute(update(Job.__table__).where(Job.__table__.c.id == job_id).values(
            status="running", total=total, started_at=now - 3600, touched_at=now))
    if engine.dialect.name == "postgresql":
        # autovacuum analyzes a freshly loaded table within a minute; do it now
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE items"))
    return job_id, pending_from


# ------------------------------------------------------------------ the writer

def run_writer(args) -> int:
    """Claim chunks of the pending tail and record their outcomes, as a worker
    does (two transactions per chunk), at `rate` items/s until SIGTERM."""
    from sqlalchemy import update

    from imshift.models import make_engine, store
    from imshift.models.tables import Job

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    engine = make_engine(args.database_url)
    rng = random.Random(3)
    jobs = Job.__table__
    written, chunks, started = 0, 0, time.monotonic()
    print("ready", flush=True)
    for start in range(args.writer_from, args.items, CHUNK):
        if stop:
            break
        with engine.begin() as conn:
            token, rows = store.claim(conn, args.job, start, start + CHUNK, lease=120.0,
                                      resend_expired=True)
        outcomes = []
        for row in rows:
            roll = rng.random()
            state = "ok" if roll < 0.93 else "rejected" if roll < 0.97 else "pending"
            outcomes.append({"seq": row.seq, "state": state,
                             "result": {"user_id": row.key} if state == "ok" else None,
                             "code": "414" if state == "rejected" else "503" if state == "pending" else None,
                             "not_before": time.time() + 1 if state == "pending" else None})
        with engine.begin() as conn:
            store.record(conn, args.job, token, outcomes)
            conn.execute(update(jobs).where(jobs.c.id == args.job).values(touched_at=time.time()))
            store.finish_if_done(conn, args.job)
        written += len(rows)
        chunks += 1
        ahead = written / args.writer_rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - started
    while not stop:  # ran out of pending items: wait to be stopped so the parent sees why
        time.sleep(0.05)
    print(json.dumps({"written": written, "chunks": chunks, "seconds": elapsed}), flush=True)
    engine.dispose()
    return 0


@contextlib.contextmanager
def writer_process(url: str, job_id: int, first_pending: int, items: int, rate: float):
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "query", "--writer", "--database-url", url,
         "--job", str(job_id), "--writer-from", str(first_pending), "--items", str(items),
         "--writer-rate", str(rate)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    report: dict = {}
    try:
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise RuntimeError("the writer did not start")
        time.sleep(0.5)  # let it get going
        yield report
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
            report.update(json.loads(out.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            process.kill()
            process.wait()


# ------------------------------------------------------------------ timing

def time_queries(engine, job_id: int, reps: int, page: int,
                 spread: float = 0.0) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Milliseconds per call, the three queries interleaved so they see the same
    load, and the rows each read; with `spread`, the repetitions are paced over
    at least that many seconds."""
    from imshift.jobs.progress import progress, results

    def first_page(state: str) -> int:
        pages = results(engine, job_id, state, batch=page)
        n = sum(1 for _ in itertools.islice(pages, page))
        pages.close()
        return n

    timings: dict[str, list[float]] = {"progress": [], "rejected": [], "failed": []}
    sizes: dict[str, int] = {}
    began = time.monotonic()
    for rep in range(reps):
        time.sleep(max(0.0, began + spread * rep / reps - time.monotonic()))
        for name in timings:
            t = time.perf_counter()
            if name == "progress":
                p = progress(engine, job_id)
                sizes[name] = p.done if p else 0
            else:
                sizes[name] = first_page(name)
            timings[name].append((time.perf_counter() - t) * 1000)
    return {name: sorted(v) for name, v in timings.items()}, sizes


@contextlib.contextmanager
def database(kind: str, tmp: Path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'query.db'}"
    else:
        from testsupport import throwaway_database
        with throwaway_database(prefix="imshift_bench_query") as url:
            yield url


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--reps", type=int, default=200, help="repetitions of each query per phase")
    parser.add_argument("--page", type=int, default=2000, help="results page size (the engine's default)")
    parser.add_argument("--writer-rate", type=float, default=1000,
                        help="items/s the writer records in the writing phase (0: no writing phase)")
    parser.add_argument("--writing-seconds", type=float, default=8,
                        help="spread the writing phase's repetitions over at least this long")
    parser.add_argument("--quick", action="store_true", help="20,000 items, 50 repetitions")
    # writer mode, used by the parent
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--writer-from", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        return run_writer(args)
    if args.quick:
        args.items, args.reps, args.writing_seconds = 20_000, 50, 2

    from imshift.models import make_engine

    kinds = [k.strip() for k in args.db.split(",")]
    phases = ["idle"] + (["writing"] if args.writer_rate > 0 else [])
    values: dict[str, float] = {}
    worst_progress_p99 = 0.0
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="imshift-bench-query-") as tmp, \
                database(kind, Path(tmp)) as url:
            engine = make_engine(url)
            try:
                t = time.perf_counter()
                job_id, first_pending = build_job(engine, args.items)
                print(f"{kind}: built a {args.items:,}-item job in {time.perf_counter() - t:.1f} s",
                      flush=True)
                for phase in phases:
                    with contextlib.ExitStack() as stack:
                        writer = (stack.enter_context(writer_process(url, job_id, first_pending,
                                                                     args.items, args.writer_rate))
                                  if phase == "writing" else None)
                        t = time.perf_counter()
                        timings, sizes = time_queries(engine, job_id, args.reps, args.page,
                                               args.writing_seconds if writer is not None else 0.0)
                        seconds = time.perf_counter() - t
                    line = [f"{kind:8} {phase:7}"]
                    for name, ms in timings.items():
                        p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
                        values[f"{kind}_{phase}_{name}_p50_ms"] = round(p50, 2)
                        values[f"{kind}_{phase}_{name}_p99_ms"] = round(p99, 2)
                        if name == "progress":
                            worst_progress_p99 = max(worst_progress_p99, p99)
                        line.append(f"{name} p50 {p50:7.2f} ms p99 {p99:7.2f} ms ({sizes[name]:,} rows)"
                                    if name != "progress" else
                                    f"progress p50 {p50:6.2f} ms p99 {p99:6.2f} ms")
                    if writer is not None:
                        rate = writer.get("written", 0) / max(writer.get("seconds", 0) or 1e-9, 1e-9)
                        ran_out = writer.get("written", 0) >= args.items - first_pending
                        line.append(f"writer {writer.get('written', 0):,} items "
                                    f"in {writer.get('seconds', 0):.1f} s ({rate:,.0f}/s; "
                                    f"queries took {seconds:.1f} s"
                                    f"{'; it ran out of pending items' if ran_out else ''})")
                        values[f"{kind}_writer_items_per_s"] = round(rate)
                    print(" | ".join(line), flush=True)
            finally:
                engine.dispose()
    print(f"target: progress p99 < {PROGRESS_P99_TARGET_MS} ms: "
          f"{'met' if worst_progress_p99 < PROGRESS_P99_TARGET_MS else 'MISSED'} "
          f"(worst {worst_progress_p99:.2f} ms)", flush=True)
    figures(items=args.items, reps=args.reps, **values, load=os.getloadavg()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
