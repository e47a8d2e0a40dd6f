"""Benchmark 1, quota: how much of a vendor's account-creation quota the
engine uses, with 1, 2 and 4 real `imshift worker` processes.

A NetEase sandbox in its own process allows R register calls per fixed
one-second window and adds 50 ms to every call. Each run migrates the same
users into a fresh sandbox. Figures per process count N:

  util_pN      accepted register calls / (R x steady seconds); the steady
               window runs from the first to the last call the sandbox
               accepted (found by polling GET /_sandbox/stats every 0.1 s;
               k calls span k-1 intervals, so (k-1)/span is the rate)
  util_job_pN  the same over the job's started_at -> finished_at (includes
               queue pick-up and the tail)
  over_pN      over-limit replies the sandbox sent
  maxsec_pN    most calls the sandbox accepted in one second (<= R)
  p50_pN/p99_pN  seconds from item claimed to item recorded
               (items.updated_at - items.claimed_at)

    python -m bench quota [--users 20000] [--rate 400] [--latency 0.05]
                          [--processes 1 2 4] [--threads 8] [--chunk-size 200]
                          [--postgres] [--quick] [--timeline]

--timeline prints the calls accepted (and refused) in each second: an
over-limit reply from NetEase comes with a 10 s block, which shows as a run
of zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Iterator

import httpx

from bench.common import (claim_to_record_seconds, figures, percentile, sandbox_process, sandbox_stats,
                          worker_processes)
from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.jobs.progress import progress
from imshift.settings import AppSettings, Settings
from testsupport import RedisServer, app_environment
from imshift.vendors.sandbox.common import STATS_PATH
from imshift.vendors.sandbox.netease import NeteaseSandbox

OP = "register"
APP = "new"
POLL = 0.1  # seconds between reads of the sandbox counters


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench quota", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=400.0, help="register calls/s the sandbox allows (R)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds per call")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="up to this many seconds (uniform) before the sandbox counts a call")
    p.add_argument("--margin", type=float, default=None,
                   help="the limiter's rate_margin (default: the settings' default)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=8, help="chunks in flight per worker process")
    p.add_argument("--chunk-size", type=int, default=200, help="items per chunk message")
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database, not SQLite")
    p.add_argument("--quick", action="store_true", help="2,000 users")
    p.add_argument("--timeline", action="store_true",
                   help="also print accepted calls (and over-limit replies) per second")
    args = p.parse_args(argv)
    if args.quick:
        args.users = 2_000
    return args


def write_users(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write("user_id,name\n")
        for i in range(count):
            f.write(f"user_{i:07d},User {i}\n")
    return path


@contextlib.contextmanager
def database(postgres: bool, tmp: Path) -> Iterator[str]:
    if postgres:
        from testsupport import throwaway_database
        with throwaway_database(prefix="imshift_bench_quota") as url:
            yield url
    else:
        yield f"sqlite:///{tmp / 'bench.db'}"


def wait_ready(log: Path, processes: int, timeout: float = 60) -> None:
    """Dramatiq logs one line per worker process once it takes messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count("Worker process is ready for action") >= processes:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{processes} worker processes not ready in {timeout} s:\n{text[-2000:]}")


def producer_and_workers(base_url: str, db_url: str, redis_url: str, rates: dict[str, float],
                         chunk_size: int) -> tuple[Context, dict[str, str]]:
    """The same settings twice: a Context for this process (the producer) and
    the environment for `imshift worker` processes. App APP is the NetEase
    sandbox at base_url (served with its demo credentials)."""
    config = NeteaseSandbox().config(base_url)
    settings = Settings(database_url=db_url, redis_url=redis_url, chunk_size=chunk_size,
                        apps={APP: AppSettings(vendor="netease", rates=rates,
                                               **dataclasses.asdict(config))})
    env = {"IMSHIFT_DATABASE_URL": db_url, "REDIS_URL": redis_url,
           "IMSHIFT_CHUNK_SIZE": str(chunk_size),
           f"IMSHIFT_APPS__{APP.upper()}__RATES": json.dumps(rates),
           **app_environment(APP, "netease", config)}
    return Context(settings), env


def run_once(args, tmp: Path, redis_url: str, db_url: str, users_csv: Path, processes: int) -> dict:
    rates = {OP: args.rate}
    with sandbox_process("netease", rates=rates, latency=args.latency, jitter=args.jitter) as base_url:
        ctx, env = producer_and_workers(base_url, db_url, redis_url, rates, args.chunk_size)
        if args.margin is not None:
            env["IMSHIFT_RATE_MARGIN"] = str(args.margin)
        planned = kinds.plan_user_migration(ctx.engine, ctx.target(APP), users_csv,
                                               source_app=None, chunk_size=args.chunk_size)
        job_id = planned.report.job_id
        log = tmp / f"workers-{processes}.log"
        with worker_processes(env, processes, threads=args.threads, log=log):
            wait_ready(log, processes)
            control.start(ctx.engine, ctx.broker, job_id)
            samples = watch(ctx, base_url, job_id, OP, timeout=60 + 3 * args.users / args.rate)
        stats = sandbox_stats(base_url)
        p = progress(ctx.engine, job_id)
        spans = claim_to_record_seconds(ctx.engine, job_id)
        ctx.engine.dispose()
    accepted = stats["accepted"].get(OP, 0)
    first, last = steady_window(samples, accepted)
    job_seconds = (p.finished_at or time.time()) - p.started_at
    return {
        "status": p.status, "counts": p.counts, "accepted": accepted,
        "util": (accepted - 1) / (args.rate * (last - first)) if last > first else float("nan"),
        "util_job": accepted / (args.rate * job_seconds),
        "steady_s": last - first, "job_s": job_seconds,
        "over": stats["over_limit"].get(OP, 0), "maxsec": stats["max_per_second"].get(OP, 0),
        "p50": percentile(spans, 0.5), "p99": percentile(spans, 0.99),
        "timeline": timeline(samples),
    }


def watch(ctx: Context, base_url: str, job_id: int, op: str,
          timeout: float) -> list[tuple[float, int, int]]:
    """(time, accepted calls, over-limit replies) of `op` every POLL seconds
    until the job is no longer running."""
    samples: list[tuple[float, int, int]] = []
    deadline = time.monotonic() + timeout
    polls = 0
    with httpx.Client(timeout=10) as http:  # one client: a new one per poll costs ms of CPU
        while time.monotonic() < deadline:
            t = time.time()
            stats = http.get(f"{base_url}{STATS_PATH}").json()
            samples.append((t, stats["accepted"].get(op, 0), stats["over_limit"].get(op, 0)))
            polls += 1
            if polls % 5 == 0 and progress(ctx.engine, job_id).status != "running":
                return samples
            time.sleep(max(0.0, POLL - (time.time() - t)))
    raise RuntimeError(f"job {job_id} still running after {timeout:.0f} s: {progress(ctx.engine, job_id)}")


def steady_window(samples: list[tuple[float, int, int]], final: int) -> tuple[float, float]:
    """When the first and the last accepted call happened, each taken as the
    middle of the poll interval in which it was first seen."""
    def seen(reached) -> float:
        for (t0, n0, _), (t1, n1, _) in pairwise(samples):
            if not reached(n0) and reached(n1):
                return (t0 + t1) / 2
        return samples[0][0]
    return seen(lambda n: n >= 1), seen(lambda n: n >= final)


def timeline(samples: list[tuple[float, int, int]]) -> str:
    """Accepted calls per second of the run, with "/-N" where the sandbox
    also sent N over-limit replies: where the quota went."""
    last: dict[int, tuple[int, int]] = {}
    for t, accepted, over in samples:
        last[int(t)] = (accepted, over)  # epoch seconds: the sandbox's windows
    prev, text = samples[0][1:], []
    for second in sorted(last):
        accepted, over = last[second]
        text.append(f"{accepted - prev[0]}" + (f"/-{over - prev[1]}" if over > prev[1] else ""))
        prev = (accepted, over)
    return " ".join(text)


def main(argv: list[str]) -> int:
    args = parse(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="imshift-bench-quota-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["IMSHIFT_CONFIG"] = str(tmp / "no-config.toml")  # ignore any imshift.toml here
        users_csv = write_users(tmp / "users.csv", args.users)
        with RedisServer() as redis, database(args.postgres, tmp) as db_url:
            for n in args.processes:
                r = run_once(args, tmp, redis.url, db_url, users_csv, n)
                results[n] = r
                print(f"processes={n} status={r['status']} counts={r['counts']} "
                      f"accepted={r['accepted']} steady={r['steady_s']:.2f}s job={r['job_s']:.2f}s "
                      f"util={r['util']:.3f} util_job={r['util_job']:.3f} over_limit={r['over']} "
                      f"max_per_second={r['maxsec']} claimed->recorded p50={r['p50']:.2f}s "
                      f"p99={r['p99']:.2f}s", flush=True)
                if args.timeline:
                    print(f"  per second: {r['timeline']}", flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    out = {"users": args.users, "rate": args.rate, "db": "postgres" if args.postgres else "sqlite",
           "threads": args.threads, "chunk": args.chunk_size, "jitter": args.jitter,
           "margin": "default" if args.margin is None else args.margin}
    for n, r in results.items():
        out.update({f"util_p{n}": r["util"], f"util_job_p{n}": r["util_job"], f"over_p{n}": r["over"],
                    f"maxsec_p{n}": r["maxsec"], f"p50_p{n}": r["p50"], f"p99_p{n}": r["p99"]})
    figures(**out)
    ok = all(r["status"] == "finished" for r in results.values())
    return 0 if ok else 1
