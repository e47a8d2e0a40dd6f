"""Benchmark, scale: one job of 10,000,000 items on PostgreSQL (issue 22).

A users CSV of N rows (bench/plan.py's generator: Unicode names, ~0.1%
invalid and ~0.2% repeated rows) is planned and started into a PostgreSQL
cluster of the benchmark's own (testsupport.PostgresCluster: initdb in a
temp dir, fsync off) by a producer in its own process, as `imshift migrate
users` does; then `imshift worker` processes register the first W items into
a NetEase sandbox process that adds no latency and enforces no rate, while
this process reads the job's progress (jobs/progress.py, what `imshift
status` and the API read) every 20 ms. Printed:

  producer peak memory (its max RSS) and planning rows/s (plan + start)
  progress query p50/p99 while the workers write
  items/s over the first and the last tenth of the W items worked

Targets: producer peak < 300 MB, progress p99 < 20 ms while writing, the
last tenth's items/s within 10% of the first's.

    python -m bench scale                       # 10M rows, 100,000 worked
    python -m bench scale --rows 1000000 --work 50000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import figures, percentile, sandbox_process, worker_processes
from .plan import child, write_users

TARGETS = {"peak_mb": 300, "progress_p99_ms": 20.0, "last_tenth_share": 0.9}
CHUNK = 200


def app_environment(base_url: str) -> dict[str, str]:
    """App `new` as the NetEase sandbox at base_url, for worker processes
    (the config's fields that differ from their defaults, as bench/overhead.py)."""
    from imshift.vendors.registry import vendor
    from testsupport import app_environment as environment

    config = vendor("netease").sandbox().config(base_url)
    changed = {f"IMSHIFT_APPS__NEW__{f.name.upper()}" for f in dataclasses.fields(config)
               if f.default is dataclasses.MISSING or getattr(config, f.name) != f.default}
    return {k: v for k, v in environment("new", "netease", config).items()
            if k in changed or k.endswith("__VENDOR")}


class Watcher:
    """Reads the job's progress every `every` seconds in a thread: how long
    each read took, and (time, items done) after each; and, in turn with it,
    `SELECT 1` through the same pool: the floor, what a round trip to the
    database takes on the machine as busy as it is then."""

    def __init__(self, engine, job_id: int, every: float = 0.02):
        self.engine, self.job_id, self.every = engine, job_id, every
        self.reads_ms: list[float] = []
        self.floor_ms: list[float] = []
        self.done: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from sqlalchemy import text

        from imshift.jobs.progress import progress

        def floor() -> None:
            t = time.perf_counter()
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self.floor_ms.append((time.perf_counter() - t) * 1000)

        # The two take turns at going first: the first read after the pause
        # wakes an idle database process on a busy machine, and that wait
        # was all of the gap between them (1M rows: progress p99 32.7 ms
        # first, SELECT 1 p99 11.3 ms second; the progress statement itself
        # had p99 7.9 ms once its connection was checked out).
        turn = 0
        while not self._stop.wait(self.every):
            turn += 1
            if turn % 2:
                floor()
            t = time.perf_counter()
            p = progress(self.engine, self.job_id)
            self.reads_ms.append((time.perf_counter() - t) * 1000)
            self.done.append((time.monotonic(), p.done if p else 0))
            if not turn % 2:
                floor()

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def latest(self) -> int:
        return self.done[-1][1] if self.done else 0


def tenth_rates(done: list[tuple[float, int]], start: int, work: int) -> list[float]:
    """Items/s over each tenth of `work` items past `start`; the first is
    timed from the first item recorded (the workers boot before it)."""
    def when(n: int) -> float:
        return next(t for t, d in done if d - start >= n)
    tenth = work // 10
    marks = [when(1)] + [when(tenth * k) for k in range(1, 11)]
    return [tenth / (b - a) if b > a else float("nan") for a, b in zip(marks, marks[1:], strict=False)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--work", type=int, default=100_000, help="items the workers register")
    parser.add_argument("--processes", type=int, default=2, help="`imshift worker` processes")
    parser.add_argument("--threads", type=int, default=8, help="Dramatiq threads per process")
    parser.add_argument("--timeout", type=float, default=900, help="give the workers at most this long")
    args = parser.parse_args(argv)

    from imshift.models import make_engine
    from sqlalchemy import text
    from testsupport import PostgresCluster, RedisServer

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imshift-bench-scale-") as tmp_name, \
            PostgresCluster() as pg, RedisServer() as redis:
        tmp = Path(tmp_name)
        users = tmp / "users.csv"
        t = time.perf_counter()
        made = write_users(users, args.rows)
        print(f"wrote {args.rows:,} rows ({users.stat().st_size / 1e6:,.0f} MB, {made['invalid']:,} "
              f"invalid, {made['duplicates']:,} repeated) in {time.perf_counter() - t:.0f} s", flush=True)
        url = pg.create_database("scale")
        info, peak = child(["--case", "--input", str(users), "--database-url", url,
                            "--redis-url", redis.url, "--chunk-size", str(CHUNK)], None)
        users.unlink()
        rate = info["rows"] / (info["plan_s"] + info["start_s"])
        load = os.getloadavg()[0]
        print(f"planned {info['rows']:,} rows: {rate:,.0f} rows/s (plan {info['plan_s']:.0f} s, start "
              f"{info['start_s']:.1f} s, {info['messages']:,} messages), producer peak {peak:.0f} MB, "
              f"CPU {info['cpu_s']:.0f} s, load {load:.1f}", flush=True)
        engine = make_engine(url)
        with engine.connect() as conn:
            job_id = conn.execute(text("SELECT max(id) FROM jobs")).scalar_one()
            size = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
        print(f"job {job_id}: {size} in PostgreSQL", flush=True)
        env = {"IMSHIFT_DATABASE_URL": url, "REDIS_URL": redis.url, "IMSHIFT_CHUNK_SIZE": str(CHUNK),
               "IMSHIFT_APPS__NEW__RATES": json.dumps({"register": 1_000_000}),
               "IMSHIFT_CONFIG": str(tmp / "none.toml")}
        with sandbox_process("netease") as base_url, Watcher(engine, job_id) as watcher:
            time.sleep(0.5)
            start = watcher.latest()  # the rows refused at planning are done already
            env.update(app_environment(base_url))
            with worker_processes(env, args.processes, args.threads, log=tmp / "worker.log"):
                deadline = time.monotonic() + args.timeout
                while watcher.latest() - start < args.work and time.monotonic() < deadline:
                    time.sleep(0.1)
            load_workers = os.getloadavg()[0]
        worked = watcher.latest() - start
        if worked < args.work:
            print((tmp / "worker.log").read_text()[-3000:], file=sys.stderr)
            raise RuntimeError(f"the workers did {worked:,} of {args.work:,} items in {args.timeout:.0f} s")
        engine.dispose()
    reads, floor = sorted(watcher.reads_ms), sorted(watcher.floor_ms)
    p50, p99 = percentile(reads, 0.5), percentile(reads, 0.99)
    tenths = tenth_rates(watcher.done, start, args.work)
    first, last = tenths[0], tenths[-1]
    print(f"progress while {args.processes} worker processes wrote: {len(reads):,} reads, "
          f"p50 {p50:.2f} ms p99 {p99:.2f} ms max {reads[-1]:.1f} ms; SELECT 1 beside it p50 "
          f"{percentile(floor, 0.5):.2f} ms p99 {percentile(floor, 0.99):.2f} ms", flush=True)
    print(f"items/s over each tenth of {args.work:,}: {', '.join(f'{r:,.0f}' for r in tenths)}; "
          f"the last {last / first:.2f} of the first; load {load_workers:.1f}", flush=True)
    verdicts = [f"producer peak < {TARGETS['peak_mb']} MB: {'met' if peak < TARGETS['peak_mb'] else 'MISSED'}",
                f"progress p99 < {TARGETS['progress_p99_ms']:g} ms: "
                f"{'met' if p99 < TARGETS['progress_p99_ms'] else 'MISSED'}",
                f"last tenth within 10% of the first: "
                f"{'met' if last >= TARGETS['last_tenth_share'] * first else 'MISSED'}"]
    print("targets: " + "; ".join(verdicts), flush=True)
    figures(rows=args.rows, work=args.work, rows_per_s=round(rate), producer_peak_mb=round(peak),
            progress_p50_ms=round(p50, 2), progress_p99_ms=round(p99, 2),
            select1_p99_ms=round(percentile(floor, 0.99), 2),
            first_tenth_per_s=round(first), last_tenth_per_s=round(last), load_before=load_before,
            load_plan=load, load_workers=load_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
