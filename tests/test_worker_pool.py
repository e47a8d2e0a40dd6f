"""`imshift worker --processes N` keeps N worker processes: real processes,
a private Redis, SQLite, a NetEase sandbox served on loopback."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.jobs.progress import progress
from imshift.models import make_engine
from imshift.settings import AppSettings, Settings
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from testsupport import app_environment

pytestmark = pytest.mark.loopback


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def wait_for(condition, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def pool(tmp_path, redis_server):
    box = NeteaseSandbox()
    with served(box) as url:
        database_url = f"sqlite:///{tmp_path}/imshift.db"
        # Made before its two processes open it at once: on a fresh file one
        # can fail to switch it to WAL (models/db.py _sqlite_pragmas).
        make_engine(database_url).dispose()
        config = box.config(url)
        env = {**os.environ, "IMSHIFT_DATABASE_URL": database_url, "REDIS_URL": redis_server.url,
               "IMSHIFT_CONFIG": str(tmp_path / "none.toml"), **app_environment("new", "netease", config)}
        log = open(tmp_path / "pool.log", "a")
        process = subprocess.Popen([sys.executable, "-m", "imshift.cli", "worker", "--processes", "2",
                                    "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        ctx = Context(Settings(database_url=database_url, redis_url=redis_server.url,
                               apps={"new": AppSettings(vendor="netease",
                                                        **dataclasses.asdict(config))}))
        try:
            yield process, ctx, tmp_path / "pool.log"
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            log.close()


def ready(log: Path) -> int:
    return log.read_text().count("Worker process is ready")


def test_a_killed_worker_process_is_replaced_and_the_pool_keeps_working(pool, tmp_path):
    process, ctx, log = pool
    first = wait_for(lambda: len(children(process.pid)) == 2 and ready(log) == 2 and children(process.pid),
                     "two worker processes ready")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (lambda c: c if len(c) == 2 and victim not in c else None)(children(process.pid)),
                     "a new process in place of the killed one")
    assert process.poll() is None, log.read_text()[-2000:]
    assert after & first == first - {victim}
    wait_for(lambda: ready(log) == 3, "the new process ready")
    text = log.read_text()
    assert f"process {victim} exited (signal 9)" in text

    users = tmp_path / "users.csv"
    users.write_text("user_id,name\n" + "".join(f"u{i},N{i}\n" for i in range(50)))
    planned = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app="new",
                                        chunk_size=10)
    control.start(ctx.engine, ctx.broker, planned.report.job_id)
    p = wait_for(lambda: (lambda p: p if p.status != "running" else None)(
        progress(ctx.engine, planned.report.job_id)), "the job finished")
    assert p.status == "finished" and p.counts == {"ok": 50}, log.read_text()[-2000:]

    process.terminate()  # the pool stops its workers and exits
    assert process.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in after)


def test_a_pool_whose_settings_cannot_work_stops_with_one_line(tmp_path, redis_server):
    env = {**os.environ, "IMSHIFT_DATABASE_URL": f"sqlite:///{tmp_path}/imshift.db",
           "REDIS_URL": redis_server.url, "IMSHIFT_CONFIG": str(tmp_path / "none.toml"),
           "IMSHIFT_APPS__NEW__VENDOR": "netease", "IMSHIFT_APPS__NEW__APP_KEY": "k",
           "IMSHIFT_APPS__NEW__APP_SECRT": "s"}
    result = subprocess.run([sys.executable, "-m", "imshift.cli", "worker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and ("apps.new.app_secrt (environment variable "
                                           "IMSHIFT_APPS__NEW__APP_SECRT) is not a setting of a NetEase "
                                           "Yunxin app: choose from app_key, app_secret,") in line, line
