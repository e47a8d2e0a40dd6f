"""Benchmark 3, plan: plan and start a user migration from a generated CSV
(100k and 1M rows) on SQLite and PostgreSQL; rows/s and the producer's peak
memory.

Each (rows, database) case runs in its own child process, so its peak RSS
(ru_maxrss from wait4) is its own and not the largest of all cases. The
parent writes the CSVs, starts a private Redis and creates the databases;
the child does only what `imshift migrate users` + `imshift start` do:
read, check and store every row, then enqueue the chunk messages (real
Redis enqueues; nobody consumes them).

    python -m bench plan                 # 100k and 1M rows, SQLite and PostgreSQL
    python -m bench plan --quick         # 2k and 20k rows
    python -m bench plan --rows 100000 --db sqlite
    python -m bench plan --baseline main # each case also with main's code, side by side

With `--baseline REF` each case runs twice in a row, once with the code of
git revision REF (extracted into a temporary directory and put first on
the child's PYTHONPATH, ahead of this checkout's editable install) and once
with this checkout's, on the same input and a fresh database each.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, figures, peak_rss_mb

NAMES = ["李雷", "Zoë", "Мария", "محمد", "さくら", "🚀 Rocket", "Jean-Luc", "김민준", "Ngô Bảo Châu"]
PEAK_TARGET_MB = 200
RATE_TARGETS = {"sqlite": 100_000, "postgres": 60_000}  # rows/s (issue 22)


def write_users(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """A users export with Unicode names, ~0.1% invalid rows (bad id, name
    too long, wrong field count) and ~0.2% repeated ids, some far apart so
    they cross planning batches. Returns what it put in."""
    rng = random.Random(seed)
    made = {"invalid": 0, "duplicates": 0}
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "name", "avatar"])
        for i in range(rows):
            uid = f"user_{i:07d}"
            name = f"{NAMES[i % len(NAMES)]} {i}"
            avatar = f"https://cdn.example.com/avatars/{i % 9973}/{i}.png"
            roll = rng.random()
            if roll < 0.0004:
                uid = f"bad id {i}"  # spaces: not a NetEase accid
                made["invalid"] += 1
            elif roll < 0.0008:
                name = "名" * 80  # over NetEase's 64 characters
                made["invalid"] += 1
            elif roll < 0.001:
                out.writerow([uid, name])  # a short row
                made["invalid"] += 1
                continue
            elif roll < 0.003 and i:
                uid = f"user_{rng.randrange(i):07d}"  # repeats an earlier id, maybe much earlier
                made["duplicates"] += 1
            out.writerow([uid, name, avatar])
    return made


# ---------------------------------------------------------------- child: one case

def run_case(args) -> int:
    """Plan + start one job; print one JSON line with its timings."""
    before = peak_rss_mb()
    from imshift.context import Context
    from imshift.jobs import control, kinds
    from imshift.settings import AppSettings, Settings

    settings = Settings(database_url=args.database_url, redis_url=args.redis_url,
                        apps={"new": AppSettings(vendor="netease", sandbox=True)},
                        chunk_size=args.chunk_size)
    ctx = Context(settings)
    _ = ctx.engine, ctx.broker  # schema and broker set up before the clock starts, as a user's would be
    target = ctx.target("new")
    ready = peak_rss_mb()
    import imshift.jobs.plan
    code = Path(imshift.jobs.plan.__file__).resolve().parents[2]  # which checkout's code runs
    t0, cpu0 = time.perf_counter(), time.process_time()
    planned = kinds.plan_user_migration(ctx.engine, target, args.input, source_app=None,
                                           chunk_size=args.chunk_size)
    t1 = time.perf_counter()
    messages = control.start(ctx.engine, ctx.broker, planned.report.job_id)
    t2, cpu = time.perf_counter(), time.process_time() - cpu0
    r = planned.report
    print(json.dumps({"rows": r.total, "pending": r.pending, "invalid": r.invalid,
                      "duplicates": r.duplicates, "messages": messages, "plan_s": t1 - t0,
                      "start_s": t2 - t1, "cpu_s": cpu, "rss_start_mb": before, "rss_ready_mb": ready,
                      "peak_self_mb": peak_rss_mb(), "code": str(code)}), flush=True)
    ctx.engine.dispose()
    return 0


def child(args_list: list[str], profile_to: Path | None,
          code: Path | None = None) -> tuple[dict, float]:
    """Run one case in a child; returns its JSON line and its peak RSS (MB).
    `code`: a directory holding another revision's `imshift` package."""
    command = [sys.executable, "-m", "bench", "plan", *args_list]
    if profile_to:  # pyinstrument (pip install pyinstrument): text report per case
        command = [sys.executable, "-m", "pyinstrument", "-o", str(profile_to),
                   "-m", "bench", "plan", *args_list]
    env, cwd = None, ROOT
    if code is not None:  # run from `code`: `python -m` puts the working directory first
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(code), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        cwd = code
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        out = process.stdout.read() if process.stdout else ""  # stdout=PIPE: always there
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"case {args_list} exited with {process.returncode}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), usage.ru_maxrss / 1024


# Where the repository's top folders go in the installed package (pyproject.toml).
PACKAGE_DIRS = {"imshift": "imshift", "vendors": "imshift/vendors", "models": "imshift/models",
                "workers": "imshift/workers", "jobs": "imshift/jobs"}


def checkout(ref: str, into: Path) -> Path:
    """Revision `ref`'s `imshift` package, laid out as installed, under `into`."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, *PACKAGE_DIRS], cwd=ROOT,
                             check=True, capture_output=True).stdout
    import io
    import tarfile
    source = into / "source"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    site = into / "site"
    for top, where in PACKAGE_DIRS.items():
        (site / where).parent.mkdir(parents=True, exist_ok=True)
        (source / top).rename(site / where)
    return site


@contextlib.contextmanager
def database(kind: str, tmp: Path, name: str):
    if kind == "sqlite":
        yield f"sqlite:///{tmp / (name + '.db')}"
    else:
        from testsupport import throwaway_database
        with throwaway_database(prefix="imshift_bench_plan") as url:
            yield url


def queued(redis_url: str) -> int:
    """Chunk messages waiting in Redis (Dramatiq keeps them in a hash per queue)."""
    import redis
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.hlen(k) for k in client.scan_iter("dramatiq:*.msgs"))
    finally:
        client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="row counts, comma-separated")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--chunk-size", type=int, default=200, help="items per chunk message")
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows")
    parser.add_argument("--profile", metavar="DIR", help="pyinstrument each case, reports into DIR")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run each case with git revision REF's code, side by side")
    # child mode (one case), used by the parent
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        return run_case(args)

    from testsupport import RedisServer

    sizes = [2_000, 20_000] if args.quick else [int(n) for n in args.rows.split(",")]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.db.split(",")]
    results: dict[tuple[str, int, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="imshift-bench-plan-") as tmp_name, \
            RedisServer() as redis_server:
        tmp = Path(tmp_name)
        inputs = {}
        for n in sizes:
            inputs[n] = tmp / f"users_{n}.csv"
            t = time.perf_counter()
            made = write_users(inputs[n], n)
            print(f"wrote {n:,} rows ({inputs[n].stat().st_size / 1e6:.1f} MB, {made['invalid']} "
                  f"invalid, {made['duplicates']} duplicates) in {time.perf_counter() - t:.1f} s",
                  flush=True)
        versions: list[tuple[str, Path | None]] = [("", None)]
        if args.baseline:
            versions = [(args.baseline, checkout(args.baseline, tmp / "baseline")), ("", None)]
        for kind in kinds:
            for n in sizes:
                for label, code in versions:
                    with database(kind, tmp, f"{kind}_{n}{'_base' if code else ''}") as url:
                        redis_server_flush(redis_server.url)
                        case_args = ["--case", "--input", str(inputs[n]), "--database-url", url,
                                     "--redis-url", redis_server.url, "--chunk-size", str(args.chunk_size)]
                        profile_to = (Path(args.profile) / f"plan_{kind}_{n}{'_base' if code else ''}.txt"
                                      if args.profile else None)
                        info, peak = child(case_args, profile_to, code)
                        if code is not None and not info["code"].startswith(str(code)):
                            raise RuntimeError(f"the baseline case ran the code in {info['code']}")
                        info["peak_mb"] = peak
                        info["queued"] = queued(redis_server.url)
                        info["rate"] = info["rows"] / (info["plan_s"] + info["start_s"])
                        results[(kind, n, label)] = info
                        print(f"{kind:8} {n:>9,} rows{' ' + label if label else ''}: {info['rate']:>8,.0f} rows/s "
                              f"(plan {info['plan_s']:.1f} s, start {info['start_s']:.2f} s, producer CPU {info['cpu_s']:.1f} s, "
                              f"{info['messages']} messages, {info['queued']} in Redis), "
                              f"peak {peak:.0f} MB (at start {info['rss_start_mb']:.0f} MB, "
                              f"ready {info['rss_ready_mb']:.0f} MB); {info['pending']:,} pending, "
                              f"{info['invalid']} invalid, {info['duplicates']} duplicates", flush=True)
                if args.baseline:
                    before, after = results[(kind, n, args.baseline)], results[(kind, n, "")]
                    same = all(before[k] == after[k] for k in ("rows", "pending", "invalid", "duplicates"))
                    if not same:
                        raise RuntimeError(f"{kind} {n}: the baseline planned {before} and this code {after}")

    print(f"\n{'':20}" + "".join(f"{n:>22,}" for n in sizes))
    for kind in kinds:
        for label, _ in versions:
            print(f"{kind + (' ' + label if label else ''):20}" + "".join(
                f"{results[(kind, n, label)]['rate']:>11,.0f} r/s {results[(kind, n, label)]['peak_mb']:>5.0f} MB"
                for n in sizes))
    ours = {(k, n): r for (k, n, label), r in results.items() if not label}
    peak_max = max(r["peak_mb"] for r in ours.values())
    rates = {kind: [r["rate"] for (k, _), r in ours.items() if k == kind] for kind in kinds}
    verdicts = [f"peak < {PEAK_TARGET_MB} MB: {'met' if peak_max < PEAK_TARGET_MB else 'MISSED'}"]
    for kind, target in RATE_TARGETS.items():
        if rates.get(kind):
            verdicts.append(f">= {target:,} rows/s on {kind}: {'met' if min(rates[kind]) >= target else 'MISSED'}")
    print("targets: " + "; ".join(verdicts), flush=True)
    values = {}
    for (kind, n, label), r in results.items():
        size = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        prefix = f"{kind}_{size}" + ("_base" if label else "")
        values[f"{prefix}_rows_per_s"] = round(r["rate"])
        values[f"{prefix}_peak_mb"] = round(r["peak_mb"])
        values[f"{prefix}_cpu_s"] = round(r["cpu_s"], 2)
    figures(**values, peak_max_mb=round(peak_max), load=os.getloadavg()[0])
    return 0


def redis_server_flush(url: str) -> None:
    import redis
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
