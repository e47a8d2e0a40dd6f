"""Benchmark 5, send: a mass send to 100,000 recipients through NetEase's
batch endpoint (msg/sendBatchMsg, 500 recipients a call), by real
`imshift worker` processes.

The recipients must exist at the vendor (NetEase answers "unregister" per
unknown recipient), so the sandbox process is started with them already in
its memory: registering 100k accounts through the API would take minutes and
is what benchmark 1 measures. Only the send job is timed. Figures:

  recipients   items of the job; ok = recipients that ended ok
  calls        send calls that reached the sandbox (its calls["send"])
  per_call     recipients per vendor call
  util         accepted send calls / (rate x steady seconds); steady = first to
               last accepted call, polled from GET /_sandbox/stats every 0.1 s
  util_job     the same over the job's started_at -> finished_at
  over         over-limit replies the sandbox sent
  items_per_s  recipients / job seconds

    python -m bench send [--recipients 100000] [--rate 10] [--latency 0.05]
                         [--processes 2] [--threads 8] [--chunk-size 500]
                         [--postgres] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


from bench.common import (ROOT, claim_to_record_seconds, figures, free_port, percentile, sandbox_stats,
                          wait_for_port, worker_processes)
from bench.quota import APP, database, producer_and_workers, steady_window, wait_ready, watch
from imshift.jobs import control, kinds
from imshift.jobs.progress import progress
from testsupport import RedisServer
from imshift.vendors.vocabulary import Message

OP = "send"
SENDER = "bench_sender"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench send", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipients", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=10.0,
                   help="send calls/s the sandbox allows (NetEase documents 2; 10 keeps the run short)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds per call")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=500, help="items per chunk message")
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database, not SQLite")
    p.add_argument("--quick", action="store_true", help="10,000 recipients")
    args = p.parse_args(argv)
    if args.quick:
        args.recipients = 10_000
    return args


def recipient(i: int) -> str:
    return f"rcpt_{i:07d}"


def serve_seeded(port: int, rate: float, latency: float, accounts: int) -> None:
    """Runs in the sandbox's own process: a NetEase sandbox whose accounts
    (the sender and every recipient) are put straight into its memory."""
    from imshift.vendors.sandbox.common import Faults
    from imshift.vendors.sandbox.netease import NeteaseSandbox
    from imshift.vendors.sandbox.serve import serve

    box = NeteaseSandbox(rate_limits={OP: rate}, faults=Faults(latency=latency))
    box.users[SENDER] = {"token": "t", "name": SENDER}
    for i in range(accounts):
        box.users[recipient(i)] = {"token": "t"}
    asyncio.run(serve([(box, port)]))


@contextmanager
def seeded_sandbox(rate: float, latency: float, accounts: int) -> Iterator[str]:
    """Like bench.common.sandbox_process, with the accounts already there."""
    port = free_port()
    code = f"import bench.send as s; s.serve_seeded({port}, {rate!r}, {latency!r}, {accounts})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, seconds=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str]) -> int:
    args = parse(argv)
    rates = {OP: args.rate}
    with tempfile.TemporaryDirectory(prefix="imshift-bench-send-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["IMSHIFT_CONFIG"] = str(tmp / "no-config.toml")  # ignore any imshift.toml here
        to = tmp / "recipients.txt"
        to.write_text("".join(f"{recipient(i)}\n" for i in range(args.recipients)), encoding="utf-8")
        with RedisServer() as redis, database(args.postgres, tmp) as db_url, \
                seeded_sandbox(args.rate, args.latency, args.recipients) as base_url:
            ctx, env = producer_and_workers(base_url, db_url, redis.url, rates, args.chunk_size)
            planned = kinds.plan_send(ctx.engine, ctx.target(APP), to, sender=SENDER,
                                         message=Message(text="hello from the send benchmark"),
                                         chunk_size=args.chunk_size)
            job_id = planned.report.job_id
            log = tmp / "workers.log"
            with worker_processes(env, args.processes, threads=args.threads, log=log):
                wait_ready(log, args.processes)
                control.start(ctx.engine, ctx.broker, job_id)
                calls_needed = args.recipients / 500  # NetEase's batch size
                samples = watch(ctx, base_url, job_id, OP, timeout=60 + 3 * calls_needed / args.rate)
            stats = sandbox_stats(base_url)
            p = progress(ctx.engine, job_id)
            if p is None or p.started_at is None:
                raise SystemExit(f"job {job_id} never started")
            spans = claim_to_record_seconds(ctx.engine, job_id)
            ctx.engine.dispose()
    calls = stats["calls"].get(OP, 0)
    accepted = stats["accepted"].get(OP, 0)
    first, last = steady_window(samples, accepted)
    job_seconds = (p.finished_at or time.time()) - p.started_at
    print(f"status={p.status} counts={p.counts} calls={calls} accepted={accepted} "
          f"steady={last - first:.2f}s job={job_seconds:.2f}s "
          f"claimed->recorded p50={percentile(spans, 0.5):.2f}s p99={percentile(spans, 0.99):.2f}s",
          flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    figures(recipients=p.total, ok=p.counts.get("ok", 0), calls=calls,
            per_call=p.total / calls if calls else float("nan"), rate=args.rate,
            util=(accepted - 1) / (args.rate * (last - first)) if last > first else float("nan"),
            util_job=accepted / (args.rate * job_seconds),
            over=stats["over_limit"].get(OP, 0), maxsec=stats["max_per_second"].get(OP, 0),
            items_per_s=p.total / job_seconds, processes=args.processes,
            db="postgres" if args.postgres else "sqlite")
    return 0 if p.status == "finished" and p.counts.get("ok", 0) == p.total else 1
