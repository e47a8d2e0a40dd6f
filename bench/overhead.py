"""Benchmark 2, overhead: what the engine and the vendor client cost over
the bare HTTP calls.

The same user registrations, against one NetEase sandbox served in its own
process with no latency and no rate limit, five ways, alternately in each
round, all with the same number of calls in flight (--concurrency; the
engine's per-process cap, `Tuning.concurrency`):

  aiohttp   the floor: an aiohttp session posting NetEase's signed form
            (vendors/netease.py `checksum`), reply read as JSON; no httpx,
            no vendor client.
  httpx     the same signed posts through the HTTP client the stack uses
            (`http_client()` in vendors/http.py: httpx over the aiohttp
            transport); no vendor client.
  plain     asyncio + the vendor client (`register_users([profile])`) over
            that same HTTP client, results kept in a list.
  embedded  imshift's engine in this process: the in-process broker and
            workers (Dramatiq StubBroker), SQLite, the embedded limiter.
  worker    imshift's engine in ONE real `imshift worker` process, fed
            through a private Redis (limiter schedule in Redis too), SQLite.

Each figure is CPU ms per call of the process under test (user + system,
which the machine's load disturbs less than wall time) and calls/s. The
engine figure is items over the job's own clock, started_at -> finished_at:
queue, claims, calls, per-item results and counts in the database. Planning
(reading the CSV and storing the item rows) is excluded from it and
reported apart (plan_s). The app's rate for the operation is overridden
(--engine-rate, default 1e9 calls/s), so the limiter stays in the path, as
it always is in the engine, but the quota itself never holds a call back.

Ratios are medians over rounds of runs made side by side: engine CPU per
call over the plain loop's right after it (target <= 1.25), and the plain
loop's over each floor's in the same round (target <= 1.2 over httpx).

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

from imshift.workers import heap
from bench.common import figures, job_progress, netease_register, sandbox_process, sandbox_stats, worker_processes

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
    path = setup.users(mode)
    calls_before = setup.calls()
    planned = kinds.plan_user_migration(ctx.engine, ctx.target("new"), path, source_app=None,
                                           chunk_size=setup.args.chunk_size)
    job_id = planned.report.job_id
    cpu0, box0 = cpu_of(), setup.sandbox_cpu()
    control.start(ctx.engine, ctx.broker, job_id)
    deadline = time.monotonic() + setup.args.timeout
    while (p := job_progress(ctx.engine, job_id)).status == "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mode}: job {job_id} still running after {setup.args.timeout} s: {p}")
        # The figure is the job's own clock, so polling once a second costs it
        # nothing; at 0.25 s the polls were 3% of the embedded engine's CPU.
        time.sleep(1.0)
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


# -- (c) the floors: signed posts with no vendor client ---------------------------------------

def read_profiles(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8") as f:
        return [(r["user_id"], r["name"], r["avatar"]) for r in csv.DictReader(f)]


async def lanes(setup: Setup, users: list[tuple[str, str, str]], post) -> tuple[int, float]:
    """`post(user) -> body` for every user, C lanes of one call at a time."""
    todo, ok = iter(users), 0

    async def lane() -> None:
        nonlocal ok
        for user in todo:
            body = await post(user)
            ok += body.get("code") == 200 and "info" in body

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(setup.args.concurrency)))
    return ok, time.perf_counter() - started


async def aiohttp_loop(setup: Setup, path: Path) -> tuple[int, float]:
    import aiohttp

    users, url = read_profiles(path), f"{setup.config.url}/user/create.action"
    connector = aiohttp.TCPConnector(limit=setup.args.concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def post(user: tuple[str, str, str]) -> dict:
            headers, form = netease_register(setup.config, *user)
            async with session.post(url, data=form, headers=headers) as response:
                return json.loads(await response.read())

        return await lanes(setup, users, post)


async def httpx_loop(setup: Setup, path: Path) -> tuple[int, float]:
    from imshift.vendors.http import http_client

    users, url = read_profiles(path), f"{setup.config.url}/user/create.action"
    async with http_client(max_connections=setup.args.concurrency) as http:

        async def post(user: tuple[str, str, str]) -> dict:
            headers, form = netease_register(setup.config, *user)
            response = await http.post(url, content=form, headers=headers)
            return json.loads(response.content)

        return await lanes(setup, users, post)


def run_loop(setup: Setup, mode: str) -> Run:
    """One of the in-process loops (plain, aiohttp, httpx) on fresh users."""
    loop = {"plain": plain_loop, "aiohttp": aiohttp_loop, "httpx": httpx_loop}[mode]
    path = setup.users(mode)
    calls_before = setup.calls()
    cpu0, box0 = time.process_time(), setup.sandbox_cpu()
    ok, seconds = asyncio.run(loop(setup, path))
    cpu, box = time.process_time() - cpu0, setup.sandbox_cpu() - box0
    calls = setup.calls() - calls_before
    if ok != setup.args.users or calls != setup.args.users:
        raise RuntimeError(f"{mode}: {ok} ok, {calls} vendor calls")
    return Run(mode, ok, seconds, cpu, box)


# -- the measurement --------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000, help="users per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vendor", default="netease", choices=["netease", "rongcloud"],
                        help="a vendor with one account per call, so the per-item cost shows "
                             "(the floors sign NetEase's way: netease only)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="vendor calls in flight, every side (the engine's default per process)")
    parser.add_argument("--threads", type=int, default=8, help="Dramatiq worker threads (chunks at once)")
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--engine-rate", type=float, default=1e9,
                        help="register calls/s the engine is told the app allows (never reached)")
    parser.add_argument("--modes", default="embedded,worker",
                        help="engine variants to compare with the plain loop ('' for none)")
    parser.add_argument("--floors", default="aiohttp,httpx",
                        help="loops with no vendor client to compare the plain loop with ('' for none)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--quick", action="store_true", help="2,000 users, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.rounds = 2_000, 2
    modes = [m for m in args.modes.split(",") if m]
    floors = [m for m in args.floors.split(",") if m]
    if set(modes) - {"embedded", "worker"}:
        parser.error("--modes takes embedded and/or worker")
    if set(floors) - {"aiohttp", "httpx"} or (floors and args.vendor != "netease"):
        parser.error("--floors takes aiohttp and/or httpx, with --vendor netease")
    # `timeout` and process managers stop with SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out = measure(args, modes, floors)
    except KeyboardInterrupt:  # everything started is stopped by the context managers
        print("interrupted", flush=True)
        return 130
    figures(**out)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cpu_ms(run: Run) -> float:
    return 1000 * run.cpu / run.items


def measure(args, modes: list[str], floors: list[str]) -> dict[str, object]:
    engines = {"embedded": embedded_engine, "worker": worker_engine}
    load = os.getloadavg()[0]
    runs: list[Run] = []
    # Per round, side by side: engine CPU over the plain run right after it,
    # and the round's plain runs (median) over each floor's run.
    pairs: dict[str, list[float]] = {m: [] for m in modes + floors}
    with tempfile.TemporaryDirectory(prefix="imshift-bench-overhead-") as tmp, \
            sandbox_process(args.vendor) as base_url, contextlib.ExitStack() as stack:
        setup = Setup(args, base_url, Path(tmp))
        runners = {m: stack.enter_context(engines[m](setup)) for m in modes}
        # The loops run in a process settled like a worker (workers/heap.py), as
        # they did only when an embedded engine had settled it first: without
        # it, full collections of the bench's own heap were a third of a loop's CPU.
        heap.settle()
        for mode in ["plain", *floors]:  # warm-up: the sandbox's and clients' first calls
            run_loop(setup, mode)
        for r in range(args.rounds):
            done: list[Run] = []
            for mode in floors:
                done.append(run_loop(setup, mode))
            for mode in modes:  # a, plain, b, plain ...: engine and plain alternate
                engine_run = runners[mode]()
                done.append(engine_run)
                done.append(run_loop(setup, "plain"))
                pairs[mode].append(cpu_ms(engine_run) / cpu_ms(done[-1]))
            if not modes:
                done.append(run_loop(setup, "plain"))
            plain = statistics.median(cpu_ms(x) for x in done if x.mode == "plain")
            for run in done:
                if run.mode in floors:
                    pairs[run.mode].append(plain / cpu_ms(run))
                runs.append(run)
                print(f"round {r + 1} {run.mode:8} {run.rate:7.0f} calls/s  "
                      f"{run.seconds:6.2f} s  cpu {cpu_ms(run):.3f} ms/call  "
                      f"sandbox cpu {run.sandbox_cpu / run.seconds:.0%}"
                      + (f"  plan {run.plan_s:.2f} s" if run.plan_s else "")
                      + f"  load {os.getloadavg()[0]:.1f}", flush=True)

    def median(mode: str, value) -> float:
        return statistics.median(value(run) for run in runs if run.mode == mode)

    out: dict[str, object] = {"users": args.users, "rounds": args.rounds, "vendor": args.vendor,
                              "concurrency": args.concurrency}
    for mode in [*floors, "plain", *modes]:
        out[f"{mode}_calls_s"] = round(median(mode, lambda x: x.rate))
        out[f"{mode}_cpu_ms"] = median(mode, cpu_ms)
    for mode in modes:
        out[f"{mode}_plan_s"] = median(mode, lambda x: x.plan_s)
        # Paired (each engine run over the plain run beside it), so a load
        # change on the machine between rounds cancels out.
        out[f"{mode}_cpu_x_plain"] = statistics.median(pairs[mode])
    for mode in floors:
        out[f"plain_cpu_x_{mode}"] = statistics.median(pairs[mode])
    out["targets"] = "engine<=1.25xplain,plain<=1.2xhttpx"
    out["load1"] = f"{load:.1f}-{os.getloadavg()[0]:.1f}"  # at start and end: the machine is shared
    return out
