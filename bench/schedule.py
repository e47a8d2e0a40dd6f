"""Benchmark 8, schedule: N one-off schedules due within a window, fired by
two real `imshift scheduler` processes, their jobs run by `imshift worker`
processes (Redis), into a Maxim sandbox in its own process on loopback.

Each schedule sends one text ("bench schedule K") to the same small
recipient file (one /message/send call a fire). Maxim documents no rate
limits, so the app's send rate is set (and enforced by the sandbox too) high
enough that the limiter does not queue fires. The sandbox records when each
send call arrives and which schedule's text it carries, so the lag is
measured where the vendor sees it. Figures:

  lag        a schedule's due time -> its first send call at the sandbox:
             p50 / p99 / max, and p99 / 1 s (the target)
  fired      fire rows in the database per schedule: how many schedules
             fired 0, 1 and more than 1 times (missed / failed counted apart)
  calls      send calls at the sandbox per schedule: 0, 1, more than 1
  commit     due time -> its fire row committed by a scheduler (p50 / p99)
  queue      fire committed -> the first call (job start, queue, worker)

    python -m bench schedule [--schedules 1000] [--window 60]
                             [--database sqlite|postgresql] [--schedulers 2]
                             [--processes 2] [--threads 8] [--rate 200]
                             [--poll S] [--timeout 120] [--quick]

--quick is 50 schedules in 10 s. The schedules are added (by this process,
as `imshift schedule add` does) while the schedulers run, in due order,
starting a few seconds before the first is due; `late_adds` counts any
added after its due time (it should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

import httpx

from bench.common import ROOT, figures, free_port, percentile, wait_for_port, worker_processes
from bench.quota import wait_ready
from bench.run import app_fields, database

APP = "new"
ARRIVALS = "/_bench/arrivals"
SEND_PATH = "/message/send"
MARK = re.compile(r"bench schedule (\d+)")
TARGET_LAG = 1.0  # seconds: the p99 target
SETTLE = 2.0  # seconds to wait after the last fire for any repeated call


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench schedule", description=__doc__.split("\n\n")[0])
    p.add_argument("--schedules", type=int, default=1000)
    p.add_argument("--window", type=float, default=60.0, help="seconds over which they fall due")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--schedulers", type=int, default=2, help="`imshift scheduler` processes")
    p.add_argument("--processes", type=int, default=2, help="`imshift worker` processes")
    p.add_argument("--threads", type=int, default=8, help="chunks in flight per worker process")
    p.add_argument("--recipients", type=int, default=3, help="recipients of each send")
    p.add_argument("--rate", type=float, default=200.0, help="send calls/s (app rate and sandbox limit)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds per call")
    p.add_argument("--poll", type=float, default=None,
                   help="the schedulers' --poll (default: the command's own)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds after the window to wait for the fires' jobs")
    p.add_argument("--quick", action="store_true", help="50 schedules in 10 s")
    args = p.parse_args(argv)
    if args.quick:
        args.schedules, args.window = 50, 10.0
    return args


# -- the sandbox, in its own process, recording each send's arrival and schedule ---------------

def serve_recording(port: int, rate: float, latency: float, names: list[str], ids_file: str) -> None:
    """Runs in the sandbox's process: a Maxim sandbox holding the accounts
    `names` (their ids written to ids_file) whose send calls are recorded as
    (arrival time, K of "bench schedule K"); GET ARRIVALS answers them."""
    from imshift.vendors.sandbox.common import Faults
    from imshift.vendors.sandbox.maxim import MaximSandbox
    from imshift.vendors.sandbox.serve import serve

    box = MaximSandbox(rate_limits={"send": rate}, faults=Faults(latency=latency))
    ids = {}
    for name in names:
        user = box._register(name, "bench-password")
        if isinstance(user, tuple):  # (code, reason)
            raise SystemExit(f"the Maxim sandbox refused user {name!r}: {user[1]}")
        ids[name] = str(user.user_id)
    Path(ids_file).write_text(json.dumps(ids))
    arrivals: list[tuple[float, int | None]] = []
    inner = box.app

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == ARRIVALS:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(arrivals).encode()})
            return
        if scope["type"] == "http" and scope["path"] == SEND_PATH:
            arrived = time.time()
            parts = [await receive()]
            while parts[-1].get("more_body"):
                parts.append(await receive())
            body = b"".join(m.get("body", b"") for m in parts).decode("utf-8", "replace")
            found = MARK.search(unquote_plus(body))
            arrivals.append((arrived, int(found.group(1)) if found else None))
            replay = iter(parts)

            async def again():  # the body once more for the sandbox, then the rest
                return next(replay, None) or await receive()

            await inner(scope, again, send)
            return
        await inner(scope, receive, send)

    box.app = app  # type: ignore[assignment]  # any ASGI app serves; vendors/sandbox types it Starlette
    asyncio.run(serve([(box, port)]))


@contextlib.contextmanager
def recording_sandbox(tmp: Path, rate: float, latency: float,
                      names: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """The sandbox process: yields its base URL and the accounts' ids."""
    port = free_port()
    ids_file = tmp / "ids.json"
    code = (f"import bench.schedule as s; s.serve_recording({port}, {rate!r}, {latency!r}, "
            f"{names!r}, {str(ids_file)!r})")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, seconds=60)
        yield f"http://127.0.0.1:{port}", json.loads(ids_file.read_text())
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- scheduler processes ----------------------------------------------------------------------

@contextlib.contextmanager
def scheduler_processes(env: dict[str, str], count: int, tmp: Path,
                        poll: float | None) -> Iterator[list[Path]]:
    """`imshift scheduler` processes as a user starts them, each its own
    session (Ctrl-C here does not reach them: the finally stops them)."""
    command = [sys.executable, "-m", "imshift.cli", "scheduler"]
    if poll is not None:
        command += ["--poll", str(poll)]
    logs = [tmp / f"scheduler-{k}.log" for k in range(count)]
    started: list[subprocess.Popen] = []
    try:
        for log in logs:
            started.append(subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                                            stdout=open(log, "a"), stderr=subprocess.STDOUT,
                                            start_new_session=True))
        yield logs
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_schedulers(logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [log.read_text(errors="replace") if log.exists() else "" for log in logs]
        if all("looking for due schedules" in t for t in texts):
            return
        time.sleep(0.1)
    raise RuntimeError(f"schedulers not ready in {timeout} s:\n" + "\n".join(t[-1000:] for t in texts))


# -- the run ----------------------------------------------------------------------------------

def settings_and_env(base_url: str, db_url: str, redis_url: str, rate: float):
    """Settings for this process (it adds the schedules) and the same as the
    environment of the scheduler and worker processes."""
    from imshift.settings import AppSettings, Settings
    from imshift.vendors.sandbox.maxim import MaximSandbox
    from testsupport import app_environment

    config = MaximSandbox().config(base_url)  # the served sandbox's demo credentials
    rates = {"send": rate}
    settings = Settings(database_url=db_url, redis_url=redis_url,
                        apps={APP: AppSettings(vendor="maxim", rates=rates, **app_fields(config))})
    env = {"IMSHIFT_DATABASE_URL": db_url, "REDIS_URL": redis_url,
           f"IMSHIFT_APPS__{APP.upper()}__RATES": json.dumps(rates),
           **app_environment(APP, "maxim", config)}
    return settings, env


def add_schedules(ctx, to: Path, sender: str, count: int, first_due: float,
                  window: float) -> tuple[dict[int, tuple[int, float]], int, float]:
    """Schedule K due at first_due + window * K / count: {K: (id, due)},
    how many were added after their due time, and the seconds adding took."""
    from imshift.jobs import schedules
    from imshift.vendors.operations import encode_message
    from imshift.vendors.vocabulary import Message

    target, made, late = ctx.target(APP), {}, 0
    t0 = time.time()
    for k in range(count):
        due = first_due + window * k / count
        params = {"sender": sender, "to": str(to),
                  "message": encode_message(Message(text=f"bench schedule {k}"))}
        made[k] = (schedules.add(ctx.engine, target, command="send", params=params, at=due,
                                 tz="UTC"), due)
        late += time.time() > due
    return made, late, time.time() - t0


def wait_fired(ctx, ids: list[int], deadline: float) -> bool:
    """Until every schedule has a fire row and no fired job is unsettled."""
    from sqlalchemy import func, select

    from imshift.models.tables import Job, ScheduleFire

    fires, jobs = ScheduleFire.__table__, Job.__table__
    while time.time() < deadline:
        with ctx.engine.connect() as conn:
            with_fire = conn.execute(select(func.count(func.distinct(fires.c.schedule_id)))
                                     .where(fires.c.schedule_id.in_(ids))).scalar_one()
            open_jobs = conn.execute(select(func.count()).select_from(
                fires.join(jobs, jobs.c.id == fires.c.job_id)).where(
                jobs.c.status.in_(("planning", "planned", "running")))).scalar_one()
        if with_fire == len(ids) and open_jobs == 0:
            return True
        time.sleep(0.5)
    return False


def fire_rows(ctx, ids: list[int]) -> list:
    from sqlalchemy import select

    from imshift.models.tables import ScheduleFire

    fires = ScheduleFire.__table__
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(fires).where(fires.c.schedule_id.in_(ids))))


def spread(counts: list[int]) -> tuple[int, int, int]:
    """How many of `counts` are 0, 1 and more than 1."""
    return (sum(c == 0 for c in counts), sum(c == 1 for c in counts), sum(c > 1 for c in counts))


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # the context managers have stopped every process by now
        print("interrupted: its sandbox, Redis, schedulers and workers are stopped", flush=True)
        return 130


def run(args: argparse.Namespace) -> int:
    from imshift.context import Context
    from testsupport import RedisServer

    names = ["bench_sender", *(f"bench_rcpt_{i}" for i in range(args.recipients))]
    with tempfile.TemporaryDirectory(prefix="imshift-bench-schedule-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["IMSHIFT_CONFIG"] = str(tmp / "no-config.toml")  # ignore any imshift.toml here
        with RedisServer() as redis, database(args.database, tmp) as db_url, \
                recording_sandbox(tmp, args.rate, args.latency, names) as (base_url, ids):
            settings, env = settings_and_env(base_url, db_url, redis.url, args.rate)
            ctx = Context(settings)
            ctx.engine  # noqa: B018  (creates the tables before the other processes start)
            to = tmp / "recipients.txt"
            to.write_text("".join(f"{ids[n]}\n" for n in names[1:]), encoding="utf-8")
            log = tmp / "workers.log"
            with worker_processes(env, args.processes, threads=args.threads, log=log), \
                    scheduler_processes(env, args.schedulers, tmp, args.poll) as logs:
                wait_ready(log, args.processes)
                wait_schedulers(logs)
                first_due = time.time() + 3 + args.schedules * 0.002
                made, late_adds, add_s = add_schedules(ctx, to, ids[names[0]], args.schedules,
                                                       first_due, args.window)
                print(f"{args.schedules} schedules added in {add_s:.1f} s, due from "
                      f"{first_due - time.time():.1f} s on over {args.window:g} s; "
                      f"{args.schedulers} schedulers, {args.processes} worker processes, "
                      f"{args.database}", flush=True)
                sids = [sid for sid, _ in made.values()]
                settled = wait_fired(ctx, sids, first_due + args.window + args.timeout)
                time.sleep(SETTLE)  # a repeated fire or call would show by now
            with httpx.Client(timeout=30) as http:
                arrivals = http.get(f"{base_url}{ARRIVALS}").json()
            rows = fire_rows(ctx, sids)
            ctx.engine.dispose()
    by_sid = {sid: k for k, (sid, _) in made.items()}
    states = Counter(r.state for r in rows)
    fired = Counter(by_sid[r.schedule_id] for r in rows if r.state == "fired")
    committed = {by_sid[r.schedule_id]: r.created_at for r in rows if r.state == "fired"}
    first_call: dict[int, float] = {}
    calls: Counter[int] = Counter()
    for t, k in arrivals:
        if k is not None:
            calls[k] += 1
            first_call[k] = min(t, first_call.get(k, t))
    lags = sorted(first_call[k] - due for k, (_, due) in made.items() if k in first_call)
    commit = sorted(committed[k] - made[k][1] for k in committed)
    queue = sorted(first_call[k] - committed[k] for k in committed if k in first_call)
    f0, f1, fmore = spread([fired[k] for k in made])
    c0, c1, cmore = spread([calls[k] for k in made])
    p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
    lag_max = lags[-1] if lags else float("nan")
    if not settled:
        print(f"not every fire's job settled within {args.timeout:g} s after the window", flush=True)
    print(f"lag due -> first call at the sandbox: p50 {p50:.3f} s, p99 {p99:.3f} s, max "
          f"{lag_max:.3f} s over {len(lags)} schedules (target p99 < {TARGET_LAG:g} s: "
          f"{'met' if p99 < TARGET_LAG and not c0 else 'missed'})", flush=True)
    print(f"  of which due -> fire committed p50 {percentile(commit, 0.5):.3f} s, p99 "
          f"{percentile(commit, 0.99):.3f} s; committed -> first call p50 "
          f"{percentile(queue, 0.5):.3f} s, p99 {percentile(queue, 0.99):.3f} s", flush=True)
    print(f"fires per schedule: 0 -> {f0}, 1 -> {f1}, >1 -> {fmore} (fire rows by state: "
          f"{dict(states)}); send calls per schedule: 0 -> {c0}, 1 -> {c1}, >1 -> {cmore}; "
          f"late adds {late_adds}", flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    figures(schedules=args.schedules, window=args.window, db=args.database,
            schedulers=args.schedulers, processes=args.processes, lag_p50=p50, lag_p99=p99,
            lag_max=lag_max, p99_ratio=p99 / TARGET_LAG, fired0=f0, fired1=f1, fired_more=fmore,
            missed=states.get("missed", 0), failed=states.get("failed", 0), calls0=c0,
            calls1=c1, calls_more=cmore, commit_p99=percentile(commit, 0.99),
            queue_p99=percentile(queue, 0.99), late_adds=late_adds)
    return 0 if f1 == c1 == args.schedules else 1
