"""Benchmark 6, api: the HTTP API's progress and failed-items requests on a
1,000,000-item job, SQLite and PostgreSQL, idle and while a writer records
1,000 items/s.

The job and the writer are the query benchmark's (bench/query.py). The API
is a real `imshift serve` process (given a private Redis, so it runs no
workers of its own); the requests go over loopback with the bearer token:

  GET /api/jobs/JOB/progress                  progress, rate, ETA (what the page polls)
  GET /api/jobs/JOB                           the same and the first failures (kept 1 s)
  GET /api/jobs/JOB/items?outcome=failed&limit=100   a page of 100 failures

  GET /page/app.css                           the floor: the HTTP stack, no database

interleaved, N times each per phase. Targets: progress and detail p99 <
20 ms, a page of 100 failures p99 < 50 ms. The floor has no target: on a
busy machine its p99 says how much of the others' is the machine's.
`--paths old` leaves out /progress, to time an older checkout the same way.

`--concurrent`: many viewers at once (issue 22). The job is a run's
accounts stage (R1, its five later stages planned), the writer records
1,000 items/s into it, and P pollers (default 50), each with its own
keep-alive connection, ask in a tight loop for

  floor         GET /page/app.css: the HTTP stack alone, what the machine allows now
  progress      GET /api/jobs/JOB/progress
  mixed         GET /api/jobs/JOB/progress and GET /api/runs/R1 in turn

each for S seconds. Printed: requests/s of each path, p50/p99/max, the
server's CPU per request, and replies whose `done` went back (a poller
must never see progress undone). Target: >= 500
progress requests/s in all, p99 < 100 ms. PostgreSQL is a cluster of the
benchmark's own (testsupport.PostgresCluster), not the shared server.
`--baseline REF` serves the same database with git revision REF's code
too, the two servers taking turns, one at a time, side by side.

    python -m bench api                 # 1M items, SQLite and PostgreSQL
    python -m bench api --quick         # 20k items, 50 repetitions
    python -m bench api --concurrent --baseline main
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from testsupport import PostgresCluster, RedisServer, free_port

from .common import figures, percentile, wait_for_port
from .query import build_job, database, writer_process

TARGETS_MS = {"progress": 20.0, "detail": 20.0, "failures": 50.0}
TOKEN = "bench-api-token"


@contextlib.contextmanager
def api_server(database_url: str, redis_url: str, tmp: Path, code: Path | None = None):
    """`imshift serve`; `code`: a directory holding another revision's
    package (bench/plan.py's checkout), put first on its PYTHONPATH."""
    port = free_port()
    env = {**os.environ, "IMSHIFT_DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "IMSHIFT_API_TOKEN": TOKEN, "IMSHIFT_CONFIG": str(tmp / "none.toml")}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    process = subprocess.Popen([sys.executable, "-m", "imshift.cli", "serve", "--port", str(port)],
                               env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def time_requests(http: httpx.Client, job_id: int, reps: int, spread: float,
                  names: list[str]) -> dict[str, list[float]]:
    paths = {"progress": f"/api/jobs/{job_id}/progress", "detail": f"/api/jobs/{job_id}",
             "failures": f"/api/jobs/{job_id}/items?outcome=failed&limit=100",
             "floor": "/page/app.css"}
    paths = {name: paths[name] for name in names}
    timings: dict[str, list[float]] = {name: [] for name in paths}
    began = time.monotonic()
    for rep in range(reps):
        time.sleep(max(0.0, began + spread * rep / reps - time.monotonic()))
        for name, path in paths.items():
            t = time.perf_counter()
            reply = http.get(path)
            timings[name].append((time.perf_counter() - t) * 1000)
            reply.raise_for_status()
    return {name: sorted(ms) for name, ms in timings.items()}


# ------------------------------------------------------------------ many viewers

CONCURRENT_TARGET = {"progress_per_s": 500.0, "p99_ms": 100.0}
LATER_STAGES = ("friends", "groups", "members", "tokens", "verify")


def as_run_stage(engine, job_id: int) -> int:
    """Make the job a running run's accounts stage, its later stages planned
    (empty jobs); returns the run's id."""
    from sqlalchemy import insert, update

    from imshift.models.tables import Job, Run

    jobs, runs = Job.__table__, Run.__table__
    now = time.time()
    with engine.begin() as conn:
        run_id = conn.execute(insert(runs).values(source_app="old", app="new", status="running",
                                                  params={}, created_at=now)
                              .returning(runs.c.id)).scalar_one()
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(run_id=run_id, stage="accounts",
                                                                    source_app="old"))
        for stage in LATER_STAGES:
            conn.execute(insert(jobs).values(kind=f"migrate_{stage}", operation="register", app="new",
                                             source_app="old", status="planned", params={}, total=0,
                                             created_at=now, run_id=run_id, stage=stage))
    return run_id


async def poll(base: str, paths: dict[str, str], pollers: int, seconds: float) -> dict:
    """`pollers` clients, each on its own keep-alive connection, asking for
    `paths` in turn as fast as they are answered, for `seconds`. aiohttp:
    about 0.1 ms of CPU a request (shared/DESIGN.md), so the server's
    cores are not spent on the clients."""
    import asyncio

    import aiohttp
    import orjson

    timings: dict[str, list[float]] = {name: [] for name in paths}
    went_back = 0
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"},
                                     connector=aiohttp.TCPConnector(limit=pollers),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        began = loop.time()

        async def poller(turn: int) -> None:
            nonlocal went_back
            names, seen = list(paths), -1
            while loop.time() < began + seconds:
                name = names[turn % len(names)]
                turn += 1
                t = time.perf_counter()
                async with session.get(paths[name]) as reply:
                    body = await reply.read()
                    if reply.status != 200:
                        raise RuntimeError(f"{paths[name]}: {reply.status} {body[:200]!r}")
                timings[name].append((time.perf_counter() - t) * 1000)
                if name == "progress":
                    done = orjson.loads(body)["done"]
                    went_back += done < seen
                    seen = max(seen, done)

        await asyncio.gather(*(poller(i) for i in range(pollers)))
        elapsed = loop.time() - began
    return {"seconds": elapsed, "went_back": went_back,
            **{name: sorted(ms) for name, ms in timings.items()}}


def concurrent(args, names: list[str]) -> int:
    """The --concurrent mode (see the module's doc)."""
    import asyncio

    from imshift.models import make_engine

    from .plan import checkout

    load_before = os.getloadavg()[0]
    values: dict[str, float] = {}
    worst = {"progress_per_s": float("inf"), "p99_ms": 0.0}
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="imshift-bench-api-") as tmpdir:
        tmp = Path(tmpdir)
        versions: list[tuple[str, Path | None]] = [("", None)]
        if args.baseline:
            versions = [(args.baseline, checkout(args.baseline, tmp / "baseline")), ("", None)]
        for kind in names:
            with own_database(kind, tmp) as url:
                engine = make_engine(url)
                try:
                    job_id, first_pending = build_job(engine, args.items, done_share=0.5)
                    run_id = as_run_stage(engine, job_id)
                finally:
                    engine.dispose()
                paths = {"progress": f"/api/jobs/{job_id}/progress", "run": f"/api/runs/R{run_id}"}
                phases = {"floor": {"floor": "/page/app.css"}, "progress": {"progress": paths["progress"]},
                          "mixed": paths}
                with writer_process(url, job_id, first_pending, args.items, args.writer_rate) as wrote:
                    for label, code in versions * args.rounds:
                        with api_server(url, redis.url, tmp, code) as (base, pid):
                            asyncio.run(poll(base, phases["mixed"], 2, 1.0))  # warm up
                            for phase, asked in phases.items():
                                load, cpu = os.getloadavg()[0], cpu_seconds(pid)
                                got = asyncio.run(poll(base, asked, args.pollers, args.seconds))
                                cpu = cpu_seconds(pid) - cpu
                                line = [f"{kind:8} {label or 'this':10} {phase:8}"]
                                total = 0
                                for name in asked:
                                    ms = got[name]
                                    rate = len(ms) / got["seconds"]
                                    total += len(ms)
                                    p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
                                    line.append(f"{name} {rate:6,.0f}/s p50 {p50:6.1f} ms p99 {p99:7.1f} ms "
                                                f"max {ms[-1]:7.1f} ms")
                                    key = f"{kind}_{phase}_{name}{'_base' if label else ''}"
                                    values[f"{key}_per_s"] = round(rate)
                                    values[f"{key}_p99_ms"] = round(p99, 1)
                                    if phase == "progress" and name == "progress" and not label:
                                        worst["progress_per_s"] = min(worst["progress_per_s"], rate)
                                        worst["p99_ms"] = max(worst["p99_ms"], p99)
                                line.append(f"all {total / got['seconds']:,.0f}/s, server CPU "
                                            f"{cpu / total * 1000:.2f} ms a request, went back "
                                            f"{got['went_back']}, load {load:.1f}")
                                values[f"{kind}_{phase}{'_base' if label else ''}_cpu_ms"] = round(
                                    cpu / total * 1000, 2)
                                print(" | ".join(line), flush=True)
                print(f"{kind}: the writer recorded {wrote.get('written', 0):,} items in "
                      f"{wrote.get('seconds', 0):.0f} s", flush=True)
    met = (worst["progress_per_s"] >= CONCURRENT_TARGET["progress_per_s"]
           and worst["p99_ms"] < CONCURRENT_TARGET["p99_ms"])
    print(f"target: >= {CONCURRENT_TARGET['progress_per_s']:g} progress requests/s, p99 < "
          f"{CONCURRENT_TARGET['p99_ms']:g} ms with {args.pollers} pollers: "
          f"{'met' if met else 'MISSED'} (worst {worst['progress_per_s']:,.0f}/s, "
          f"p99 {worst['p99_ms']:.1f} ms)", flush=True)
    figures(items=args.items, pollers=args.pollers, **values, load_before=load_before,
            load=os.getloadavg()[0])
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def own_database(kind: str, tmp: Path):
    """SQLite in `tmp`, or PostgreSQL in a cluster of our own: a server
    under this load would take the shared one's connections."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'api.db'}"
    else:
        with PostgresCluster() as pg:
            yield pg.url


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--reps", type=int, default=200, help="repetitions of each request per phase")
    parser.add_argument("--writer-rate", type=float, default=1000)
    parser.add_argument("--writing-seconds", type=float, default=8,
                        help="spread the writing phase's repetitions over at least this long")
    parser.add_argument("--paths", choices=["all", "old"], default="all",
                        help="old: all but /progress (an API without it)")
    parser.add_argument("--quick", action="store_true", help="20,000 items, 50 repetitions")
    parser.add_argument("--concurrent", action="store_true", help="many pollers at once (see above)")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15, help="--concurrent: each phase's length")
    parser.add_argument("--rounds", type=int, default=1, help="--concurrent: each version this often")
    parser.add_argument("--baseline", metavar="REF", help="--concurrent: also REF's code, in turn")
    args = parser.parse_args(argv)
    names = ["detail", "failures", "floor"] if args.paths == "old" else [*TARGETS_MS, "floor"]
    if args.quick:
        args.items, args.reps, args.writing_seconds = 20_000, 50, 2
    if args.concurrent:
        return concurrent(args, [k.strip() for k in args.db.split(",")])

    from imshift.models import make_engine

    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    values: dict[str, float] = {}
    worst = {name: 0.0 for name in names if name in TARGETS_MS}
    with RedisServer() as redis:
        for kind in [k.strip() for k in args.db.split(",")]:
            with tempfile.TemporaryDirectory(prefix="imshift-bench-api-") as tmpdir, \
                    database(kind, Path(tmpdir)) as url:
                tmp = Path(tmpdir)
                engine = make_engine(url)
                try:
                    job_id, first_pending = build_job(engine, args.items)
                    with api_server(url, redis.url, tmp) as (base, _), \
                            httpx.Client(base_url=base, timeout=30,
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                        time_requests(http, job_id, 5, 0.0, names)  # warm up: connections, caches
                        for phase in ("idle", "writing"):
                            with contextlib.ExitStack() as stack:
                                if phase == "writing":
                                    stack.enter_context(writer_process(url, job_id, first_pending,
                                                                       args.items, args.writer_rate))
                                timings = time_requests(http, job_id, args.reps,
                                                        args.writing_seconds if phase == "writing" else 0,
                                                        names)
                            line = [f"{kind:8} {phase:7}"]
                            for name, ms in timings.items():
                                p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
                                values[f"{kind}_{phase}_{name}_p50_ms"] = round(p50, 2)
                                values[f"{kind}_{phase}_{name}_p99_ms"] = round(p99, 2)
                                if name in worst:
                                    worst[name] = max(worst[name], p99)
                                line.append(f"{name} p50 {p50:6.2f} ms p99 {p99:6.2f} ms")
                            print(" | ".join(line), flush=True)
                finally:
                    engine.dispose()
    for name in worst:
        target = TARGETS_MS[name]
        print(f"target: {name} p99 < {target:g} ms: {'met' if worst[name] < target else 'MISSED'} "
              f"(worst {worst[name]:.2f} ms)", flush=True)
    figures(items=args.items, reps=args.reps, **values, load_before=load_before,
            load=os.getloadavg()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
