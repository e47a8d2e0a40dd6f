"""Test helpers for the job engine: input files, contexts, waiting."""

from __future__ import annotations

import csv
import time
from pathlib import Path

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


def wait_until_done(ctx: Context, job_id: int, timeout: float) -> Progress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = progress(ctx.engine, job_id)
        if p.status != "running":
            return p
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running after {timeout} s: {progress(ctx.engine, job_id)}")
