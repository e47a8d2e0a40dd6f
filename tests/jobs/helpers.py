"""Test helpers for the job engine: input files, contexts, waiting, commands killed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imshift.context import Context
from imshift.jobs.progress import Progress, progress
from imshift.settings import AppSettings, Settings

NAMES = ["李雷", "Zoë", "Мария", "محمد", "さくら", "🚀 Rocket", "Jean-Luc", "김민준"]


def write_users(path: Path, count: int, *, bad_rows: dict[int, dict] | None = None) -> Path:
    """A users CSV; `bad_rows` replaces row i's fields (e.g. an invalid id)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["user_id", "name", "avatar"])
        writer.writeheader()
        for i in range(count):
            row = {"user_id": f"user_{i:06d}", "name": f"{NAMES[i % len(NAMES)]} {i}",
                   "avatar": f"https://cdn.example.com/a/{i}.png"}
            row.update((bad_rows or {}).get(i, {}))
            writer.writerow(row)
    return path


def context(database_url: str, redis_url: str | None = None, **overrides) -> Context:
    apps = overrides.pop("apps", {})
    settings = Settings(database_url=database_url, redis_url=redis_url,
                        apps={name: AppSettings(**app) for name, app in apps.items()}, **overrides)
    return Context(settings)


def made_database(url: str) -> str:
    """Make the database before several commands start on it at once: two
    first commands racing on a fresh SQLite file can fail to switch it to
    WAL ("database is locked", models/db.py _sqlite_pragmas), which is not
    what the tests that start them together are about."""
    from imshift.models import make_engine

    make_engine(url).dispose()
    return url


def wait_until_done(ctx: Context, job_id: int, timeout: float) -> Progress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = progress(ctx.engine, job_id)
        if p.status != "running":
            return p
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running after {timeout} s: {progress(ctx.engine, job_id)}")


def wait_until_settled(ctx: Context, job_id: int, timeout: float) -> Progress:
    """Wait until no item of the job is claimed (its calls under way)."""
    deadline = time.monotonic() + timeout
    while (p := progress(ctx.engine, job_id)).counts.get("claimed"):
        assert time.monotonic() < deadline, f"job {job_id} still has claimed items: {p}"
        time.sleep(0.1)
    return p


@dataclass
class Migration:
    """A run's relations over some accounts: friend pairs, and groups of
    sizes 2 up to the target's limit with one group over it (the last)."""

    pairs: list[tuple[str, str]]
    groups: list[dict]
    friends: Path  # friends.csv
    groups_file: Path  # groups.jsonl

    @property
    def over(self) -> dict:
        return self.groups[-1]

    @property
    def landed_groups(self) -> list[dict]:
        return self.groups[:-1]


def group_sizes(count: int, limit: int) -> list[int]:
    """`count - 1` sizes from 2 up to `limit`, spaced evenly on a log scale
    (most groups small, as in an app, a few near the limit), then limit + 1."""
    n = count - 1
    sizes = [round(2 * (limit / 2) ** (k / (n - 1))) for k in range(n)]
    return sizes + [limit + 1]


def migration(tmp_path: Path, user_ids: list[str], *, limit: int, pairs: int = 10000,
              groups: int = 200) -> Migration:
    """Every pair of the first users that many pairs need (each pair once,
    written low id first), and `groups` groups: group n is owned by user n,
    its members the users after it."""
    k = 2
    while k * (k - 1) // 2 < pairs:
        k += 1
    made = [(user_ids[a], user_ids[b]) for a in range(k) for b in range(a + 1, k)][:pairs]
    assert limit + 1 <= len(user_ids), "not enough accounts for a group over the limit"
    rows = [{"group_id": f"grp_{n}", "name": f"Gruppe {n} {NAMES[n % len(NAMES)]}",
             "owner": user_ids[n],
             "members": [user_ids[(n + 1 + i) % len(user_ids)] for i in range(size - 1)]}
            for n, size in enumerate(group_sizes(groups, limit))]
    friends = tmp_path / "friends.csv"
    friends.write_text("user_id,friend_id\n" + "".join(f"{a},{b}\n" for a, b in made), encoding="utf-8")
    groups_file = tmp_path / "groups.jsonl"
    groups_file.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in rows), encoding="utf-8")
    return Migration(made, rows, friends, groups_file)


def command_env(tmp_path: Path, db: str, apps: dict[str, tuple[str, object, dict]]) -> dict[str, str]:
    """The environment of an `imshift` command as a user runs it: no Redis,
    no config file, database `db`, and each app as (vendor, its config,
    its rates)."""
    from testsupport import app_environment

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "IMSHIFT_REDIS_URL", "DATABASE_URL")}
    env.update({"IMSHIFT_CONFIG": str(tmp_path / "none.toml"), "IMSHIFT_DATABASE_URL": db})
    for name, (vendor, config, rates) in apps.items():
        env.update({f"IMSHIFT_APPS__{name.upper()}__RATES": json.dumps(rates),
                    **app_environment(name, vendor, config)})
    return env


def start_until_held(ctx: Context, run_id: int, door, timeout: float = 60) -> None:
    """Start the run (its workers already running in this process) and
    return once the sandbox's door holds a call."""
    from imshift.jobs import run_control

    run_control.start(ctx.engine, ctx.broker, run_id)
    deadline = time.monotonic() + timeout
    while door.held is None:
        assert time.monotonic() < deadline, run_control.run_progress(ctx.engine, run_id)
        time.sleep(0.01)


def imshift(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`imshift ARGS` as its own process group (so `kill` takes its workers
    too), its output appended to `log` after the command line."""
    with log.open("a") as out:
        out.write(f"\n$ imshift {' '.join(args)}\n")
        out.flush()
        return subprocess.Popen([sys.executable, "-m", "imshift.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill(command: subprocess.Popen, then: Callable[[], object] | None = None) -> None:
    """SIGKILL the command's whole process group, as kill -9 or a closed
    terminal, and wait until it is gone; then `then` (a door's release: the
    call it had sent goes on into the vendor). A command that has ended is
    only waited for."""
    if command.poll() is None:
        os.killpg(command.pid, signal.SIGKILL)
    command.wait(10)
    if then is not None:
        then()
