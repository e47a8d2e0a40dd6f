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

    python -m bench quota [--users N] [--rate 400] [--latency 0.05]
                          [--processes 1 2 4] [--threads 8] [--chunk-size 200]
                          [--concurrency C] [--postgres] [--quick] [--timeline]
                          [--no-script] [--script-concurrency C] [--recover S]

--users defaults to 20,000 or 20 s of the quota, whichever is more.

--timeline prints the calls accepted (and refused) in each second: an
over-limit reply from NetEase comes with a 10 s block, which shows as a run
of zeros.

Beside the engine, in the same run and into its own fresh sandbox with the
same limit and latency, the script a user would write instead (`script`):
aiohttp and aiolimiter's `AsyncLimiter(R, 1)`, --script-concurrency calls
in flight (default 2 x R x latency), NetEase's signing, a refused user
queued again after the block. Its figures: util_script, util_job_script
(first call to last reply), over_script, maxsec_script, and cpu_ms_script
(this process's CPU per call). `--processes` with no number runs only the
script; `--no-script` only the engine.

--recover S (issue 22): S seconds after the engine's first accepted call,
another client of the same app (this process) spends a whole second's quota
at the start of a second, so the engine's calls in that second draw
over-limit replies. NetEase blocks an app for a while after one (the client
takes 10 s, vendors/netease.py BLOCKED_FOR), so the engine must pause that
long, then come back to the full rate at once. Figures per process count:
over_engine_pN (over-limit replies the engine drew; the intruder's own are
left out), pause_pN (seconds from the intruding second to the engine's next
accepted call), back_pN (seconds from then until the engine's calls in one
second, any sliding second, reach 0.95 of R; -1: never) and util_after_pN
(the engine's accepted calls over the 5 s after the pause, / 5 R).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Iterator

import httpx

from bench.common import (claim_to_record_seconds, figures, job_progress, netease_register, percentile, sandbox_process,
                          sandbox_stats, worker_processes)
from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.settings import AppSettings, Settings
from testsupport import RedisServer, app_environment
from imshift.vendors.sandbox.common import STATS_PATH
from imshift.vendors.sandbox.netease import NeteaseSandbox

OP = "register"
APP = "new"
POLL = 0.1  # seconds between reads of the sandbox counters


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench quota", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=None, help="default: max(20,000, 20 x rate)")
    p.add_argument("--rate", type=float, default=400.0, help="register calls/s the sandbox allows (R)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds per call")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="up to this many seconds (uniform) before the sandbox counts a call")
    p.add_argument("--margin", type=float, default=None,
                   help="the limiter's rate_margin (default: the settings' default)")
    p.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--no-script", dest="script", action="store_false",
                   help="leave out the aiohttp + aiolimiter script")
    p.add_argument("--script-concurrency", type=int, default=None,
                   help="the script's calls in flight (default 2 x rate x latency, at least 16)")
    p.add_argument("--threads", type=int, default=8, help="chunks in flight per worker process")
    p.add_argument("--concurrency", type=int, default=None,
                   help="vendor calls in flight per worker process, a limiter's wait included "
                        "(IMSHIFT_CONCURRENCY; default: the settings' 128)")
    p.add_argument("--chunk-size", type=int, default=200, help="items per chunk message")
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database, not SQLite")
    p.add_argument("--quick", action="store_true", help="2,000 users")
    p.add_argument("--timeline", action="store_true",
                   help="also print accepted calls (and over-limit replies) per second")
    p.add_argument("--recover", type=float, default=None, metavar="S",
                   help="S s after the first accepted call, spend one second's quota from outside "
                        "and measure the engine's pause and recovery (no script)")
    args = p.parse_args(argv)
    if args.quick:
        args.users = 2_000
    elif args.users is None:
        args.users = max(20_000, round(20 * args.rate))
    if args.recover is not None:
        args.script = False
    if args.script_concurrency is None:
        args.script_concurrency = max(16, math.ceil(2 * args.rate * args.latency))
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
        if args.concurrency is not None:
            env["IMSHIFT_CONCURRENCY"] = str(args.concurrency)
        planned = kinds.plan_user_migration(ctx.engine, ctx.target(APP), users_csv,
                                               source_app=None, chunk_size=args.chunk_size)
        job_id = planned.report.job_id
        log = tmp / f"workers-{processes}.log"
        intruder = Intruder(base_url, round(args.rate)) if args.recover is not None else None
        with worker_processes(env, processes, threads=args.threads, log=log):
            wait_ready(log, processes)
            control.start(ctx.engine, ctx.broker, job_id)
            samples = watch(ctx, base_url, job_id, OP, timeout=60 + 3 * args.users / args.rate,
                            intruder=intruder, intrude_after=args.recover)
        stats = sandbox_stats(base_url)
        p = job_progress(ctx.engine, job_id)
        spans = claim_to_record_seconds(ctx.engine, job_id)
        ctx.engine.dispose()
    job_seconds = (p.finished_at or time.time()) - p.started_at
    recovery = intruder.figures(samples, args.rate) if intruder is not None else {}
    return {
        **recovery, **usage(args.rate, stats, samples, job_seconds),
        "status": p.status, "counts": p.counts,
        "p50": percentile(spans, 0.5), "p99": percentile(spans, 0.99),
    }


def usage(rate: float, stats: dict, samples: list[tuple[float, int, int]], job_seconds: float) -> dict:
    """The figures the engine's and the script's runs share, from the
    sandbox's counters: utilisation of the steady window and of the job,
    over-limit replies, the busiest second."""
    accepted = stats["accepted"].get(OP, 0)
    first, last = steady_window(samples, accepted)
    return {
        "accepted": accepted,
        "util": (accepted - 1) / (rate * (last - first)) if last > first else float("nan"),
        "util_job": accepted / (rate * job_seconds), "steady_s": last - first, "job_s": job_seconds,
        "over": stats["over_limit"].get(OP, 0), "maxsec": stats["max_per_second"].get(OP, 0),
        "timeline": timeline(samples),
    }


def script_once(args, users_csv: Path) -> dict:
    """aiohttp + aiolimiter into a fresh sandbox with the same limit."""
    with sandbox_process("netease", rates={OP: args.rate}, latency=args.latency,
                         jitter=args.jitter) as base_url:
        users = [line.split(",")[:2] for line in users_csv.read_text(encoding="utf-8").splitlines()[1:]]
        cpu0 = time.process_time()
        samples, seconds, calls = asyncio.run(script(args, base_url, users))
        cpu = time.process_time() - cpu0
        stats = sandbox_stats(base_url)
    accepted = stats["accepted"].get(OP, 0)
    return {
        **usage(args.rate, stats, samples, seconds),
        "status": "finished" if accepted == len(users) else f"{accepted} of {len(users)} accepted",
        "counts": {}, "cpu_ms": 1000 * cpu / calls,
    }


async def script(args, base_url: str, users: list[list[str]]) -> tuple[list[tuple[float, int, int]], float, int]:
    """The samples of the sandbox's counters, the seconds from the first
    call to the last reply, and the calls made."""
    import aiohttp
    from aiolimiter import AsyncLimiter

    config = NeteaseSandbox().config(base_url)
    limiter = AsyncLimiter(args.rate, 1)
    url, todo, calls = f"{config.url}/user/create.action", list(reversed(users)), 0
    samples: list[tuple[float, int, int]] = []
    connector = aiohttp.TCPConnector(limit=args.script_concurrency + 1)  # one for the counters
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def lane() -> None:
            nonlocal calls
            while todo:
                user_id, name = todo.pop()
                async with limiter:
                    headers, form = netease_register(config, user_id, name)
                    calls += 1
                    async with session.post(url, data=form, headers=headers) as response:
                        body = await response.json(content_type=None)
                if body.get("code") == 416:  # over the limit: the user goes again after the block
                    await asyncio.sleep(float(response.headers.get("Retry-After") or 1.0))
                    todo.insert(0, [user_id, name])

        async def counters() -> None:
            while True:
                t = time.time()
                async with session.get(f"{base_url}{STATS_PATH}") as r:
                    stats = await r.json()
                samples.append((t, stats["accepted"].get(OP, 0), stats["over_limit"].get(OP, 0)))
                await asyncio.sleep(max(0.0, POLL - (time.time() - t)))

        watcher = asyncio.create_task(counters())
        started = time.time()
        await asyncio.gather(*(lane() for _ in range(args.script_concurrency)))
        seconds = time.time() - started
        await asyncio.sleep(2 * POLL)  # the last calls' counts
        watcher.cancel()
    return samples, seconds, calls


def watch(ctx: Context, base_url: str, job_id: int, op: str, timeout: float,
          intruder: "Intruder | None" = None, intrude_after: float | None = None) -> list[tuple[float, int, int]]:
    """(time, accepted calls, over-limit replies) of `op` every POLL seconds
    until the job is no longer running; the intruder, if any, is let loose
    `intrude_after` seconds after the first accepted call."""
    samples: list[tuple[float, int, int]] = []
    deadline = time.monotonic() + timeout
    polls = 0
    first: float | None = None
    with httpx.Client(timeout=10) as http:  # one client: a new one per poll costs ms of CPU
        while time.monotonic() < deadline:
            t = time.time()
            stats = http.get(f"{base_url}{STATS_PATH}").json()
            samples.append((t, stats["accepted"].get(op, 0), stats["over_limit"].get(op, 0)))
            if first is None and samples[-1][1] > 0:
                first = t
            if intruder is not None and first is not None and t - first >= (intrude_after or 0.0):
                intruder.start()
            polls += 1
            if polls % 5 == 0 and job_progress(ctx.engine, job_id).status != "running":
                return samples
            time.sleep(max(0.0, POLL - (time.time() - t)))
    raise RuntimeError(f"job {job_id} still running after {timeout:.0f} s: {job_progress(ctx.engine, job_id)}")


class Intruder:
    """Another client of the app: `calls` register calls, all sent at the
    start of one second (the next whole one after `start`), so that second's
    quota is spent before the engine's calls in it arrive."""

    def __init__(self, base_url: str, calls: int):
        self.base_url, self.calls = base_url, calls
        self.second: int | None = None  # the second it spent
        self.accepted = self.refused = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._burst()), daemon=True)
            self._thread.start()

    async def _burst(self) -> None:
        import aiohttp

        config = NeteaseSandbox().config(self.base_url)
        url = f"{config.url}/user/create.action"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.calls),
                                         trust_env=False) as session:

            async def one(i: int) -> int:
                headers, form = netease_register(config, f"intruder_{i:06d}", f"Intruder {i}")
                async with session.post(url, data=form, headers=headers) as response:
                    return (await response.json(content_type=None)).get("code")

            async def warm() -> None:  # connections opened beforehand: the burst is over in ms
                async with session.get(f"{self.base_url}{STATS_PATH}") as response:
                    await response.read()

            await asyncio.gather(*(warm() for _ in range(self.calls)))
            self.second = math.floor(time.time()) + 1
            await asyncio.sleep(self.second - time.time())
            codes = await asyncio.gather(*(one(i) for i in range(self.calls)))
        self.accepted = sum(1 for c in codes if c == 200)
        self.refused = sum(1 for c in codes if c == 416)

    def figures(self, samples: list[tuple[float, int, int]], rate: float) -> dict:
        """The engine's side of the samples: the intruder's calls are taken
        out from the end of its second on (only later times are read)."""
        nan = float("nan")
        if self._thread is None:
            return {"over_engine": samples[-1][2], "pause": nan, "back": nan, "util_after": nan}
        self._thread.join(timeout=30)
        assert self.second is not None
        end = self.second + 1
        times = [t for t, _, _ in samples]

        def engine(at: float) -> float:
            """The engine's accepted calls by `at` (>= end), interpolated between polls."""
            i = min(max(bisect.bisect_right(times, at), 1), len(samples) - 1)
            (t0, n0, _), (t1, n1, _) = samples[i - 1], samples[i]
            return n0 + (n1 - n0) * min(1.0, max(0.0, (at - t0) / (t1 - t0))) - self.accepted

        out = {"over_engine": samples[-1][2] - self.refused, "intruder_accepted": self.accepted}
        # The engine's first accepted call after the intruding second: the pause's end.
        resumed = next(((t0 + t1) / 2 for (t0, n0, _), (t1, n1, _) in pairwise(samples)
                        if t0 >= end and n1 > n0), None)
        if resumed is None:
            return {**out, "pause": nan, "back": nan, "util_after": nan}
        back, t = -1.0, resumed
        while t + 1 <= times[-1]:
            if engine(t + 1) - engine(t) >= 0.95 * rate:
                back = t - resumed
                break
            t += POLL / 2
        after = (engine(min(resumed + 5, times[-1])) - engine(resumed)) / (5 * rate)
        return {**out, "pause": resumed - self.second, "back": back, "util_after": after}


def steady_window(samples: list[tuple[float, int, int]], final: int) -> tuple[float, float]:
    """When the first and the last accepted call happened, each taken as the
    middle of the poll interval in which it was first seen; one not seen
    among the samples (the last poll came before the last call, so `final`,
    read after, is more than any sample) is the samples' end."""
    def seen(reached) -> float:
        for (t0, n0, _), (t1, n1, _) in pairwise(samples):
            if not reached(n0) and reached(n1):
                return (t0 + t1) / 2
        return samples[0][0] if reached(samples[0][1]) else samples[-1][0]
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


def report(name: str, r: dict, timeline_too: bool) -> None:
    print(f"{name} status={r['status']} counts={r['counts']} "
          f"accepted={r['accepted']} steady={r['steady_s']:.2f}s job={r['job_s']:.2f}s "
          f"util={r['util']:.3f} util_job={r['util_job']:.3f} over_limit={r['over']} "
          f"max_per_second={r['maxsec']}"
          + (f" claimed->recorded p50={r['p50']:.2f}s p99={r['p99']:.2f}s" if "p50" in r else "")
          + (f" cpu={r['cpu_ms']:.3f} ms/call" if "cpu_ms" in r else "")
          + (f" recover: engine over_limit={r['over_engine']} pause={r['pause']:.2f}s "
             f"back>=0.95R after {r['back']:.2f}s util_5s_after={r['util_after']:.3f}" if "pause" in r else "")
          + f" load={os.getloadavg()[0]:.2f}", flush=True)
    if timeline_too:
        print(f"  per second: {r['timeline']}", flush=True)


def main(argv: list[str]) -> int:
    args = parse(argv)
    results: dict[int | str, dict] = {}
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    with tempfile.TemporaryDirectory(prefix="imshift-bench-quota-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["IMSHIFT_CONFIG"] = str(tmp / "no-config.toml")  # ignore any imshift.toml here
        users_csv = write_users(tmp / "users.csv", args.users)
        if args.script:
            results["script"] = script_once(args, users_csv)
            report("script (aiohttp + aiolimiter)", results["script"], args.timeline)
        with RedisServer() as redis, database(args.postgres, tmp) as db_url:
            for n in args.processes:
                results[n] = run_once(args, tmp, redis.url, db_url, users_csv, n)
                report(f"processes={n}", results[n], args.timeline)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    out: dict[str, object] = {"users": args.users, "rate": args.rate,
                              "db": "postgres" if args.postgres else "sqlite",
                              "threads": args.threads, "chunk": args.chunk_size, "jitter": args.jitter,
                              "margin": "default" if args.margin is None else args.margin,
                              "concurrency": "default" if args.concurrency is None else args.concurrency}
    for n, r in results.items():
        tag = f"p{n}" if isinstance(n, int) else n
        out.update({f"util_{tag}": r["util"], f"util_job_{tag}": r["util_job"], f"over_{tag}": r["over"],
                    f"maxsec_{tag}": r["maxsec"]})
        for extra in ("p50", "p99", "cpu_ms", "over_engine", "pause", "back", "util_after"):
            if extra in r:
                out[f"{extra}_{tag}"] = r[extra]
    out["script_concurrency"] = args.script_concurrency
    figures(**out)
    ok = all(r["status"] == "finished" for k, r in results.items() if k != "script")
    return 0 if ok else 1
