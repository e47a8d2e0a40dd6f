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

    python -m bench api                 # 1M items, SQLite and PostgreSQL
    python -m bench api --quick         # 20k items, 50 repetitions
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

from testsupport import RedisServer, free_port

from .common import figures, percentile, wait_for_port
from .query import build_job, database, writer_process

TARGETS_MS = {"progress": 20.0, "detail": 20.0, "failures": 50.0}
TOKEN = "bench-api-token"


@contextlib.contextmanager
def api_server(database_url: str, redis_url: str, tmp: Path):
    port = free_port()
    env = {**os.environ, "IMSHIFT_DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "IMSHIFT_API_TOKEN": TOKEN, "IMSHIFT_CONFIG": str(tmp / "none.toml")}
    process = subprocess.Popen([sys.executable, "-m", "imshift.cli", "serve", "--port", str(port)],
                               env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
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
    args = parser.parse_args(argv)
    names = ["detail", "failures", "floor"] if args.paths == "old" else [*TARGETS_MS, "floor"]
    if args.quick:
        args.items, args.reps, args.writing_seconds = 20_000, 50, 2

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
                    with api_server(url, redis.url, tmp) as base, \
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
