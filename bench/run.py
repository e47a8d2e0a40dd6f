"""Benchmark 7, run: a whole migration run (accounts, friends, groups,
members, tokens, verify) into one vendor's sandbox, served over HTTP on
loopback in its own process, adding 50 ms to every call and holding each
operation to a rate (the app's `rates`, enforced by the sandbox too). The
question: does the run take the time its vendor calls need at those rates,
or does the engine lose time between and inside the stages?

Inputs are generated: 20,000 users (user_id,name,avatar), 40,000 friend
pairs written under the lower id, each user's pairs together (as an export
lists them), and 500 groups whose sizes spread geometrically from 2 up to
the target's group size limit (200 when it has none). The run is planned
(timed apart) and run by the in-process workers, as `imshift migrate run`
does without Redis. Figures per stage:

  items     the stage's items; outcomes in brackets when not all ok
  calls     vendor calls that reached the sandbox while the stage ran, per
            operation (each call's arrival is recorded by the sandbox process)
  wall      the stage job's started_at -> finished_at
  need      the time its calls need at the configured rates: the largest
            calls / rate of its operations, which work at once (verify: the
            sum, as its profile, group and friend checks run in turn)
  first     stage start -> its first call arrives (queue and claim)
  tail      its last call arrives -> stage finished (the last record)
  planned   the calls and seconds the plan estimated for it

and for the run: wall (first stage's start -> the run's finished_at), sum
(the stages' need added up) and ratio = wall / sum (target <= 1.10). The
limiter keeps rate_margin (2%) under each rate, so about 1.02 is the floor.

    python -m bench run [--users 20000] [--pairs 40000] [--groups 500]
                        [--vendor maxim] [--database sqlite|postgresql]
                        [--latency 0.05] [--rate OP=R ...] [--claim-seconds S]
                        [--no-tokens] [--no-verify] [--timeline] [--keep DIR]
                        [--timeout 600] [--quick]

--pairs 0 or --groups 0 leave those stages out; --timeline prints each
operation's calls per second; --keep DIR keeps the inputs, the SQLite
database and the arrivals (arrivals.json) for a closer look.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Iterator

import httpx

from bench.common import ROOT, figures, free_port, sandbox_stats, wait_for_port

APP, SOURCE = "new", "old"
ARRIVALS = "/_bench/arrivals"
NO_LIMIT_GROUP_SIZE = 200  # the largest group when the target names no limit
# Stages whose items of different kinds run one kind after another (verify:
# profiles, then groups, then friends), so their operations' limits are
# used in turn; in the other stages one item's calls follow each other
# (Maxim's register, then its profile writes) and their limits work at once.
IN_TURN = {"verify"}

# Calls per second per operation key, per target vendor: chosen so the
# default sizes take one to two minutes (the vendors' batch sizes differ,
# so their call counts do too). Every key a stage's calls go under is here,
# so each call counts against a known rate.
RATES: dict[str, dict[str, float]] = {
    "maxim": {"register": 20, "update_profile": 60, "import_friends": 300, "create_group": 50,
              "add_members": 20, "issue_token": 500, "get_profiles": 400, "get_members": 50,
              "get_friends": 400},
    "netease": {"register": 300, "update_profile": 300, "import_friends": 400, "create_group": 50,
                "add_members": 50, "issue_token": 300, "get_profiles": 50, "get_members": 50,
                "get_friends": 400},
    "rongcloud": {"register": 300, "update_profile": 300, "import_friends": 400, "create_group": 50,
                  "add_members": 50, "issue_token": 300, "get_profiles": 300, "get_members": 50,
                  "get_friends": 400},
    "openim": {"register": 20, "update_profile": 300, "import_friends": 400, "create_group": 50,
               "add_members": 50, "issue_token": 300, "get_profiles": 50, "get_members": 50,
               "get_friends": 400, "auth": 10},
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--pairs", type=int, default=40_000, help="friend pairs (0: no friends stage)")
    p.add_argument("--groups", type=int, default=500, help="groups (0: no groups or members stage)")
    p.add_argument("--vendor", default="maxim", choices=sorted(RATES),
                   help="the target (maxim assigns its own ids, so every later stage reads the id map)")
    p.add_argument("--database", default="sqlite", choices=["sqlite", "postgresql"],
                   help="a SQLite file in a temp dir, or a throwaway PostgreSQL database")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the sandbox adds per call")
    p.add_argument("--rate", action="append", default=[], metavar="OP=R",
                   help="override one operation's calls/s (repeatable)")
    p.add_argument("--threads", type=int, default=8, help="in-process worker threads")
    p.add_argument("--chunk-size", type=int, default=200, help="items per chunk message")
    p.add_argument("--claim-seconds", type=float, default=None,
                   help="the engine's claim_seconds (default: the settings' default)")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds the run may take; then it is cancelled and the benchmark fails")
    p.add_argument("--no-tokens", action="store_true", help="leave out the tokens stage")
    p.add_argument("--no-verify", action="store_true", help="leave out the verify stage")
    p.add_argument("--timeline", action="store_true",
                   help="also print each operation's calls per second of the run")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the inputs, the SQLite database and the call arrivals in DIR")
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.pairs, args.groups = args.users // 10, args.pairs // 10, args.groups // 10
    if args.pairs > args.users * (args.users - 1) // 2:
        p.error("--pairs: more than the users can make")
    args.rates = dict(RATES[args.vendor])
    for text in args.rate:
        op, _, value = text.partition("=")
        try:
            args.rates[op] = float(value)
        except ValueError:
            p.error(f"--rate {text!r}: OP=calls per second")
    return args


# -- inputs -----------------------------------------------------------------------------------

def user(i: int) -> str:
    return f"u_{i:07d}"


def write_inputs(tmp: Path, users: int, pairs: int, groups: int, group_limit: int,
                 seed: int = 7) -> tuple[Path, Path, Path, int]:
    """users.csv, friends.csv, groups.jsonl; and the members the groups hold."""
    rnd = random.Random(seed)
    users_csv = tmp / "users.csv"
    with users_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "name", "avatar"])
        for i in range(users):
            writer.writerow([user(i), f"Zoë {i}", f"https://cdn.example.com/a/{i}.png"])
    # Each pair once, under its lower id; each user's pairs on consecutive rows.
    chosen: dict[int, set[int]] = defaultdict(set)
    made = 0
    while made < pairs:
        a, b = rnd.randrange(users), rnd.randrange(users)
        low, high = min(a, b), max(a, b)
        if low != high and high not in chosen[low]:
            chosen[low].add(high)
            made += 1
    friends_csv = tmp / "friends.csv"
    with friends_csv.open("w", newline="", encoding="utf-8") as f:
        f.write("user_id,friend_id\n")
        for low in sorted(chosen):
            f.writelines(f"{user(low)},{user(high)}\n" for high in sorted(chosen[low]))
    groups_jsonl = tmp / "groups.jsonl"
    members = 0
    limit = min(group_limit, users)
    with groups_jsonl.open("w", encoding="utf-8") as f:
        for g in range(groups):
            # 2 .. limit, geometrically: many small groups, a few at the limit.
            size = round(2 * (limit / 2) ** (g / max(1, groups - 1))) if limit > 2 else limit
            people = rnd.sample(range(users), size)
            members += size
            f.write(json.dumps({"group_id": f"g_{g:05d}", "name": f"Group {g} 群",
                                "owner": user(people[0]),
                                "members": [user(m) for m in people[1:]]}, ensure_ascii=False) + "\n")
    return users_csv, friends_csv, groups_jsonl, members


# -- the sandbox, in its own process, recording when each call arrives -------------------------

def serve_recording(vendor_name: str, port: int, rates: dict[str, float], latency: float) -> None:
    """Runs in the sandbox's process: the vendor's sandbox with `rates` as
    its limits and `latency` per call; GET ARRIVALS answers each
    operation's call arrival times (epoch seconds)."""
    from imshift.vendors.registry import vendor
    from imshift.vendors.sandbox.common import Faults
    from imshift.vendors.sandbox.serve import serve

    box = vendor(vendor_name).sandbox(rate_limits=rates, faults=Faults(latency=latency))
    ops = {ep.path: ep.op for ep in box.endpoints() if isinstance(ep.op, str)}
    arrivals: dict[str, list[float]] = defaultdict(list)
    inner = box.app

    async def app(scope, receive, send):
        if scope["type"] == "http":
            if scope["path"] == ARRIVALS:
                body = json.dumps(arrivals).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            op = ops.get(scope["path"])
            if op is not None:
                arrivals[op].append(time.time())
        await inner(scope, receive, send)

    box.app = app
    asyncio.run(serve([(box, port)]))


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def recording_sandbox(vendor_name: str, rates: dict[str, float],
                      latency: float) -> Iterator[tuple[str, int]]:
    """The sandbox process: yields its base URL and pid."""
    port = free_port()
    code = (f"import bench.run as r; r.serve_recording({vendor_name!r}, {port}, "
            f"{rates!r}, {latency!r})")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, seconds=60)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def app_fields(config) -> dict:
    """The config's fields that differ from their defaults (see bench/overhead.py)."""
    fields = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            fields[f.name] = value
    return fields


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "postgresql":
        from testsupport import throwaway_database
        with throwaway_database(prefix="imshift_bench_run") as url:
            yield url
    else:
        yield f"sqlite:///{tmp / 'bench.db'}"


# -- the run ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Stage:
    name: str
    items: int
    counts: dict[str, int]
    started: float
    finished: float
    calls: dict[str, int]
    need: float  # sum over operations of calls / rate
    first: float  # seconds from the stage's start to its first call
    tail: float  # seconds from its last call to its finish

    @property
    def wall(self) -> float:
        return self.finished - self.started


def follow(ctx, run_id: int, timeout: float):
    """Wait for the run to end; past `timeout` cancel it (the workers stop)."""
    from imshift.jobs import run_control

    deadline = time.monotonic() + timeout
    while True:
        p = run_control.run_progress(ctx.engine, run_id)
        if p is None:
            raise SystemExit(f"run {run_id} is gone")
        if p.status not in ("running", "planned"):
            return p
        if time.monotonic() > deadline:
            run_control.cancel(ctx.engine, run_id)
            print(f"run still {p.status} after {timeout:.0f} s: cancelled", flush=True)
            return run_control.run_progress(ctx.engine, run_id)
        time.sleep(0.25)


def stages_of(p, arrivals: dict[str, list[float]], rates: dict[str, float]) -> list[Stage]:
    """Each stage with the calls that arrived while it ran: stages never
    overlap (the next starts in the transaction that finishes one)."""
    listed = [(s, sp) for s, sp in p.stages if sp.started_at is not None]
    out = []
    for k, (name, sp) in enumerate(listed):
        end = listed[k + 1][1].started_at if k + 1 < len(listed) else math.inf
        times = {op: [t for t in ts if sp.started_at <= t < end] for op, ts in arrivals.items()}
        calls = {op: len(ts) for op, ts in times.items() if ts}
        flat = [t for ts in times.values() for t in ts]
        finished = sp.finished_at or time.time()
        each = [n / rates[op] if rates.get(op) else math.nan for op, n in calls.items()]
        need = (sum(each) if name in IN_TURN else max(each)) if each else 0.0
        out.append(Stage(name, sp.total, dict(sp.counts), sp.started_at, finished, calls, need,
                         (min(flat) - sp.started_at) if flat else math.nan,
                         (finished - max(flat)) if flat else math.nan))
    return out


def timeline(arrivals: dict[str, list[float]], start: float) -> str:
    lines = []
    for op, ts in sorted(arrivals.items()):
        per = Counter(int(t - start) for t in ts)
        if per:
            last = max(per)
            lines.append(f"  {op:15} " + " ".join(str(per.get(s, 0)) for s in range(last + 1)))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse(argv)
    from cryptography.fernet import Fernet

    from imshift.context import Context
    from imshift.jobs import run_control, runs
    from imshift.settings import AppSettings, Settings
    from imshift.vendors.registry import vendor
    from imshift.workers.embedded import in_process_workers

    target_vendor = vendor(args.vendor)
    with tempfile.TemporaryDirectory(prefix="imshift-bench-run-") as tmpdir:
        tmp = Path(tmpdir)
        if args.keep:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=True)
        os.environ["IMSHIFT_CONFIG"] = str(tmp / "no-config.toml")  # ignore any imshift.toml here
        with database(args.database, tmp) as db_url, \
                recording_sandbox(args.vendor, args.rates, args.latency) as (base_url, box_pid):
            config = target_vendor.sandbox().config(base_url)  # the served sandbox's demo credentials
            settings = Settings(
                database_url=db_url, redis_url=None, chunk_size=args.chunk_size,
                **({"claim_seconds": args.claim_seconds} if args.claim_seconds else {}),
                token_key=Fernet.generate_key().decode(),
                apps={SOURCE: AppSettings(vendor="rongcloud", sandbox=True),
                      APP: AppSettings(vendor=args.vendor, rates=args.rates, **app_fields(config))})
            ctx = Context(settings)
            target = ctx.target(APP)
            group_limit = target.rules.group_size or NO_LIMIT_GROUP_SIZE
            users_csv, friends_csv, groups_jsonl, members = write_inputs(
                tmp, args.users, args.pairs, args.groups, group_limit)
            print(f"{args.vendor}: {args.users:,} users, {args.pairs:,} pairs, {args.groups:,} groups "
                  f"of 2..{min(group_limit, args.users)} ({members:,} memberships); "
                  f"latency {args.latency * 1000:.0f} ms; {args.database}", flush=True)
            print("rates (calls/s): " + ", ".join(f"{op}={r:g}" for op, r in args.rates.items()),
                  flush=True)
            t0 = time.perf_counter()
            plan = runs.plan_run(ctx.engine, SOURCE, target,
                                 runs.RunRequest(users=users_csv,
                                                 friends=friends_csv if args.pairs else None,
                                                 groups=groups_jsonl if args.groups else None,
                                                 tokens=not args.no_tokens, verify=not args.no_verify),
                                 chunk_size=args.chunk_size)
            plan_s = time.perf_counter() - t0
            print(f"planned run R{plan.run_id} in {plan_s:.1f} s: " + ", ".join(
                f"{s.stage} {s.report.pending:,}" + (f" (+{s.report.total - s.report.pending:,} refused)"
                                                     if s.report.total != s.report.pending else "")
                for s in plan.stages), flush=True)
            ctx.runtime  # noqa: B018  (configures the in-process workers)
            cpu0, box0 = time.process_time(), process_cpu(box_pid)
            with in_process_workers(ctx.broker, threads=args.threads):
                run_control.start(ctx.engine, ctx.broker, plan.run_id)
                p = follow(ctx, plan.run_id, args.timeout)
            cpu, box_cpu = time.process_time() - cpu0, process_cpu(box_pid) - box0
            with httpx.Client(timeout=30) as http:
                arrivals = http.get(f"{base_url}{ARRIVALS}").json()
            if args.keep:
                (tmp / "arrivals.json").write_text(json.dumps(arrivals))
            stats = sandbox_stats(base_url)
            with ctx.engine.connect() as conn:
                from sqlalchemy import select

                from imshift.models.tables import Run
                finished_at = conn.execute(select(Run.__table__.c.finished_at).where(
                    Run.__table__.c.id == plan.run_id)).scalar()
            ctx.engine.dispose()
    stages = stages_of(p, arrivals, args.rates)
    recorded = sum(len(ts) for ts in arrivals.values())
    counted = sum(stats["calls"].values())
    planned = {s.stage: s for s in plan.stages}
    for s in stages:
        outcomes = "" if s.counts.get("ok") == s.items else \
            " (" + " ".join(f"{k}={v}" for k, v in sorted(s.counts.items())) + ")"
        print(f"{s.name:9} {s.items:7,} items{outcomes}  {sum(s.calls.values()):7,} calls "
              f"[{', '.join(f'{op} {n:,}' for op, n in s.calls.items())}]  wall {s.wall:6.2f} s  "
              f"need {s.need:6.2f} s  first {s.first:5.2f} s  tail {s.tail:5.2f} s  "
              f"(planned: {planned[s.name].calls:,} calls, {planned[s.name].seconds or 0:.2f} s)",
              flush=True)
    start = stages[0].started if stages else time.time()
    wall = (finished_at or stages[-1].finished) - start if stages else math.nan
    need = sum(s.need for s in stages)
    gaps = sum(b.started - a.finished for a, b in pairwise(stages))
    print(f"run R{plan.run_id} {p.status}: wall {wall:.2f} s, sum of calls/rate {need:.2f} s, "
          f"ratio {wall / need:.3f}; between stages {gaps:.3f} s; planning {plan_s:.1f} s (apart)",
          flush=True)
    over = sum(stats["over_limit"].values())
    print(f"sandbox: {counted:,} calls ({recorded:,} recorded by arrival), {over} over the limit "
          f"{stats['over_limit'] or ''}; most in one second: "
          + ", ".join(f"{op} {n}" for op, n in sorted(stats["max_per_second"].items())), flush=True)
    print(f"CPU: this process (the engine) {cpu:.1f} s, {1000 * cpu / counted:.2f} ms a call; "
          f"the sandbox {box_cpu:.1f} s, {1000 * box_cpu / counted:.2f} ms a call", flush=True)
    if args.timeline:
        print("calls per second of the run, by operation:\n" + timeline(arrivals, start), flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    figures(vendor=args.vendor, users=args.users, pairs=args.pairs, groups=args.groups,
            db=args.database, status=p.status, calls=counted, plan_s=plan_s, wall_s=wall,
            sum_s=need, ratio=wall / need if need else math.nan, over=over,
            cpu_ms=1000 * cpu / counted, box_cpu_ms=1000 * box_cpu / counted,
            **{f"{s.name}_s": s.wall for s in stages})
    ok = p.status == "finished" and recorded == counted
    return 0 if ok else 1
