"""Benchmark 2, overhead: what the engine costs over a plain loop.

The same user migration, against one sandbox served in its own process with
no latency and no rate limit, three ways, alternately in each round:

  embedded  imshift's engine in this process: the in-process broker and
            workers (Dramatiq StubBroker), SQLite, the embedded limiter.
  worker    imshift's engine in ONE real `imshift worker` process, fed
            through a private Redis (limiter schedule in Redis too), SQLite.
  plain     asyncio + the same vendor client class over the same HTTP
            client (`http_client()`), results kept in a list.

All three keep the same number of vendor calls in flight (--concurrency; the
engine's per-process cap, `Tuning.concurrency`). The engine figure is items
over the job's own clock, started_at -> finished_at: queue, claims, calls,
per-item results and counts in the database. Planning (reading the CSV and
storing the item rows) is excluded from it and reported apart (plan_s).
The app's rate for the operation is overridden (--engine-rate, default 1e9
calls/s), so the limiter stays in the path, as it always is in the engine,
but the quota itself never holds a call back.

Fresh user ids every run (the sandbox keeps its users), and the sandbox's
counters are checked: each run must make exactly one call per user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import figures, sandbox_process, sandbox_stats, worker_processes

CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_users(path: Path, prefix: str, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "name", "avatar"])
        for i in range(count):
            writer.writerow([f"{prefix}_{i:07d}", f"Zoë {i}", f"https://cdn.example.com/a/{i}.png"])
    return path


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: ppid
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def sandbox_pid(base_url: str) -> int | None:
    """The `imshift sandbox` process serving base_url (to read its CPU)."""
    port = base_url.rsplit(":", 1)[1]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"sandbox" in argv and port.encode() in argv:
                    return int(entry)
    return None


@dataclasses.dataclass
class Run:
    mode: str
    items: int
    seconds: float
    cpu: float  # CPU seconds of the side under test
    sandbox_cpu: float
    plan_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.items / self.seconds


class Setup:
    """What every run shares: the sandbox, the app's settings, a temp dir."""

    def __init__(self, args, base_url: str, workdir: Path):
        from imshift.vendors.registry import vendor

        self.args, self.base_url, self.workdir = args, base_url, workdir
        self.vendor = vendor(args.vendor)
        self.config = self.vendor.sandbox().config(base_url)  # the served sandbox's demo credentials
        self.rates = {"register": args.engine_rate}
        self.sandbox_pid = sandbox_pid(base_url)
        self.counter = 0

    def users(self, mode: str) -> Path:
        self.counter += 1
        prefix = f"r{self.counter}{mode[0]}"
        return write_users(self.workdir / f"{prefix}.csv", prefix, self.args.users)

    def settings(self, database_url: str, redis_url: str | None):
        from imshift.settings import AppSettings, Settings

        return Settings(database_url=database_url, redis_url=redis_url,
                        concurrency=self.args.concurrency, chunk_size=self.args.chunk_size,
                        apps={"new": AppSettings(vendor=self.args.vendor, rates=self.rates,
                                                 **self.app_fields())})

    def app_fields(self) -> dict:
        """The config's fields that differ from their defaults. Defaults are
        left out: imshift.context.vendor_config reads an empty string (say,
        RongCloud's header_prefix) as JSON and fails, and a callable default
        cannot travel through the environment."""
        fields = {}
        for f in dataclasses.fields(self.config):
            value = getattr(self.config, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                fields[f.name] = value
        return fields

    def app_environment(self) -> dict[str, str]:
        from testsupport import app_environment

        wanted = {f"IMSHIFT_APPS__NEW__{name.upper()}" for name in self.app_fields()}
        env = app_environment("new", self.args.vendor, self.config)
        return {k: v for k, v in env.items() if k in wanted or k.endswith("__VENDOR")}

    def sandbox_cpu(self) -> float:
        return process_cpu(self.sandbox_pid) if self.sandbox_pid else float("nan")

    def calls(self) -> int:
        return sandbox_stats(self.base_url)["calls"].get("register", 0)


# -- (a) the engine ---------------------------------------------------------------------------

def run_job(setup: Setup, ctx, mode: str, cpu_of) -> Run:
    """Plan a fresh migration, start it, wait for the job to finish."""
    from imshift.jobs import control, kinds
    from imshift.jobs.progress import progress

    path = setup.users(mode)
    calls_before = setup.calls()
    planned = kinds.plan_user_migration(ctx.engine, ctx.target("new"), path, source_app=None,
                                           chunk_size=setup.args.chunk_size)
    job_id = planned.report.job_id
    cpu0, box0 = cpu_of(), setup.sandbox_cpu()
    control.start(ctx.engine, ctx.broker, job_id)
    deadline = time.monotonic() + setup.args.timeout
    while (p := progress(ctx.engine, job_id)).status == "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mode}: job {job_id} still running after {setup.args.timeout} s: {p}")
        time.sleep(0.25)  # the figure is the job's own clock; polling less leaves the CPU to the engine
    cpu, box = cpu_of() - cpu0, setup.sandbox_cpu() - box0
    ok = p.counts.get("ok", 0) + p.counts.get("exists", 0)
    calls = setup.calls() - calls_before
    if p.status != "finished" or ok != setup.args.users or calls != setup.args.users:
        raise RuntimeError(f"{mode}: {p.status} {p.counts}, {calls} vendor calls")
    return Run(mode, ok, p.finished_at - p.started_at, cpu, box, planned.report.seconds)


@contextlib.contextmanager
def embedded_engine(setup: Setup):
    """The engine inside this process, as `imshift demo` runs it."""
    from imshift.context import Context
    from imshift.workers.embedded import in_process_workers

    ctx = Context(setup.settings(f"sqlite:///{setup.workdir}/embedded.db", None))
    ctx.runtime  # noqa: B018  (configures the in-process workers)
    try:
        with in_process_workers(ctx.broker, threads=setup.args.threads):
            yield lambda: run_job(setup, ctx, "embedded", time.process_time)
    finally:
        ctx.engine.dispose()


@contextlib.contextmanager
def worker_engine(setup: Setup):
    """One `imshift worker` process (one Dramatiq worker process) and a private
    Redis; this process only plans and enqueues."""
    from imshift.context import Context
    from testsupport import RedisServer

    database_url = f"sqlite:///{setup.workdir}/worker.db"
    with RedisServer() as redis_server:
        ctx = Context(setup.settings(database_url, redis_server.url))
        ctx.engine  # noqa: B018  (the schema exists before the worker starts)
        env = {"IMSHIFT_DATABASE_URL": database_url, "REDIS_URL": redis_server.url,
               "IMSHIFT_CONCURRENCY": str(setup.args.concurrency),
               "IMSHIFT_CHUNK_SIZE": str(setup.args.chunk_size),
               "IMSHIFT_APPS__NEW__RATES": json.dumps(setup.rates),
               **setup.app_environment()}
        try:
            with worker_processes(env, 1, setup.args.threads, log=setup.workdir / "worker.log") as proc:
                time.sleep(2)  # let Dramatiq boot its worker process
                yield lambda: run_job(setup, ctx, "worker", lambda: process_cpu(proc.pid))
        finally:
            ctx.engine.dispose()


# -- (b) the plain loop -----------------------------------------------------------------------

async def plain_loop(setup: Setup, path: Path) -> tuple[int, float]:
    """The same calls through the same client class, C at a time, results in memory."""
    from imshift.vendors.vocabulary import Profile
    from imshift.vendors.http import http_client

    with path.open(encoding="utf-8") as f:
        profiles = [Profile(r["user_id"], r["name"], r["avatar"]) for r in csv.DictReader(f)]
    async with http_client(max_connections=setup.args.concurrency) as http:
        client = setup.vendor.client(setup.config, http)
        results = []
        todo = iter(profiles)

        async def lane() -> None:
            for profile in todo:  # one call at a time per lane: C lanes = C calls in flight
                results.extend(await client.register_users([profile]))

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(setup.args.concurrency)))
        seconds = time.perf_counter() - started
    return sum(1 for r in results if r.succeeded), seconds


def run_plain(setup: Setup) -> Run:
    path = setup.users("plain")
    calls_before = setup.calls()
    cpu0, box0 = time.process_time(), setup.sandbox_cpu()
    ok, seconds = asyncio.run(plain_loop(setup, path))
    cpu, box = time.process_time() - cpu0, setup.sandbox_cpu() - box0
    calls = setup.calls() - calls_before
    if ok != setup.args.users or calls != setup.args.users:
        raise RuntimeError(f"plain: {ok} ok, {calls} vendor calls")
    return Run("plain", ok, seconds, cpu, box)


# -- the measurement --------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000, help="users per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vendor", default="netease", choices=["netease", "rongcloud"],
                        help="a vendor with one account per call, so the per-item cost shows")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="vendor calls in flight, both sides (the engine's default per process)")
    parser.add_argument("--threads", type=int, default=8, help="Dramatiq worker threads (chunks at once)")
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--engine-rate", type=float, default=1e9,
                        help="register calls/s the engine is told the app allows (never reached)")
    parser.add_argument("--modes", default="embedded,worker",
                        help="engine variants to compare with the plain loop")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--quick", action="store_true", help="2,000 users, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.rounds = 2_000, 2
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"embedded", "worker"}:
        parser.error("--modes takes embedded and/or worker")
    # `timeout` and process managers stop with SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out = measure(args, modes)
    except KeyboardInterrupt:  # everything started is stopped by the context managers
        print("interrupted", flush=True)
        return 130
    figures(**out)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def measure(args, modes: list[str]) -> dict[str, object]:
    engines = {"embedded": embedded_engine, "worker": worker_engine}
    load = os.getloadavg()[0]
    runs: list[Run] = []
    pairs: dict[str, list[float]] = {m: [] for m in modes}  # engine run ÷ the plain run right after it
    with tempfile.TemporaryDirectory(prefix="imshift-bench-overhead-") as tmp, \
            sandbox_process(args.vendor) as base_url, contextlib.ExitStack() as stack:
        setup = Setup(args, base_url, Path(tmp))
        runners = {m: stack.enter_context(engines[m](setup)) for m in modes}
        run_plain(setup)  # warm-up: the sandbox's and client's first calls
        for r in range(args.rounds):
            for mode in modes:  # a, b, a', b ...: alternate engine and plain runs
                engine_run = runners[mode]()
                plain_run = run_plain(setup)
                pairs[mode].append(engine_run.rate / plain_run.rate)
                for run in (engine_run, plain_run):
                    runs.append(run)
                    print(f"round {r + 1} {run.mode:8} {run.rate:7.0f} items/s  "
                          f"{run.seconds:6.2f} s  cpu {1000 * run.cpu / run.items:.2f} ms/item  "
                          f"sandbox cpu {run.sandbox_cpu / run.seconds:.0%}"
                          + (f"  plan {run.plan_s:.2f} s" if run.plan_s else ""), flush=True)

    def median(mode: str, value) -> float:
        return statistics.median(value(run) for run in runs if run.mode == mode)

    out: dict[str, object] = {"users": args.users, "rounds": args.rounds, "vendor": args.vendor,
                              "concurrency": args.concurrency,
                              "plain_items_s": round(median("plain", lambda x: x.rate)),
                              "plain_cpu_ms": median("plain", lambda x: 1000 * x.cpu / x.items)}
    for mode in modes:
        rate = median(mode, lambda x: x.rate)
        out[f"{mode}_items_s"] = round(rate)
        out[f"{mode}_cpu_ms"] = median(mode, lambda x: 1000 * x.cpu / x.items)
        out[f"{mode}_plan_s"] = median(mode, lambda x: x.plan_s)
        # Paired (each engine run over the plain run beside it), so a load
        # change on the machine between rounds cancels out.
        out[f"{mode}_ratio"] = statistics.median(pairs[mode])
        # Client CPU per item, plain over engine: what the ratio tends to when
        # the client side is CPU-bound (2 shared cores), less sensitive to load.
        out[f"{mode}_cpu_ratio"] = out["plain_cpu_ms"] / out[f"{mode}_cpu_ms"]
    out["target_ratio"] = 0.8
    out["load1"] = f"{load:.1f}-{os.getloadavg()[0]:.1f}"  # at start and end: the machine is shared
    return out
