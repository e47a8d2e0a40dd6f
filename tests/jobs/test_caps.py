"""Caps over longer windows (RongCloud: 3 broadcasts a day) hold across
processes: two `imshift worker` processes on a private Redis, and commands
in embedded mode sharing the limits folder; a RongCloud sandbox served over
HTTP counts what reaches "the vendor". The caps are the vendor's rules
overridden by the app's config, the way a user sets their plan's."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.jobs.progress import progress, results
from imshift.models.tables import Job
from imshift.settings import AppSettings, Settings
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox
from imshift.vendors.sandbox.serve import served
from imshift.vendors.sandbox.store import Record
from imshift.vendors.vocabulary import Message
from imshift.workers.embedded import in_process_workers
from testsupport import app_environment

from helpers import made_database, wait_until_done

pytestmark = pytest.mark.loopback

# The app's plan: RongCloud's 3 a day, the hourly cap lifted (0) so that all
# five calls fall in one window, and a fast per-second rate.
DAY_ONLY = {"broadcast": {"hour": 0, "day": 3}}
RATES = {"broadcast": 20}
CAP_REASON = "rate limited: RongCloud (app rc) allows 3 broadcasts a day; not sent: the next window opens at "


def clear_of_midnight() -> str:
    """Wait out the last 30 s of a UTC day (a test's five calls must share
    one day); the next window's opening as a refusal names it."""
    now = time.time()
    if 86400 - now % 86400 < 30:
        time.sleep(86400 - now % 86400 + 0.5)
    return datetime.fromtimestamp((time.time() // 86400 + 1) * 86400,
                                  timezone.utc).strftime("%Y-%m-%d 00:00 UTC")


def sandbox() -> RongCloudSandbox:
    box = RongCloudSandbox(caps={"broadcast": {"day": 3}}, rate_limits=RATES)
    box.store.users["u1"] = Record(name="U1")
    return box


def app_env(tmp_path, config, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "IMSHIFT_REDIS_URL")}
    return {**env, "IMSHIFT_CONFIG": str(tmp_path / "none.toml"),
            "IMSHIFT_DATABASE_URL": database_url,
            "IMSHIFT_APPS__RC__CAPS": '{"broadcast": {"hour": 0, "day": 3}}',
            "IMSHIFT_APPS__RC__RATES": '{"broadcast": 20}',
            **app_environment("rc", "rongcloud", config)}


def broadcast_items(ctx: Context) -> list:
    with ctx.engine.connect() as conn:
        job_ids = list(conn.execute(select(Job.__table__.c.id).order_by(Job.__table__.c.id)).scalars())
    return [item for job_id in job_ids for item in results(ctx.engine, job_id)]


def assert_three_sent_two_refused(box: RongCloudSandbox, items: list, opens: str) -> None:
    assert box.calls["broadcast"] == 3, box.stats()  # the sandbox saw exactly three calls
    assert len(box.inbox("u1")) == 3
    assert sorted(i.state for i in items) == ["failed", "failed", "ok", "ok", "ok"], items
    for item in items:
        if item.state == "failed":
            assert item.code == "cap" and item.message.startswith(CAP_REASON + opens), item.message


def test_three_a_day_holds_across_two_worker_processes(tmp_path, redis_server):
    box = sandbox()
    database_url = f"sqlite:///{tmp_path}/imshift.db"
    with served(box) as url:
        config = box.config(url)
        env = {**app_env(tmp_path, config, database_url), "REDIS_URL": redis_server.url}
        ctx = Context(Settings(database_url=database_url, redis_url=redis_server.url,
                               apps={"rc": AppSettings(vendor="rongcloud", caps=DAY_ONLY, rates=RATES,
                                                       **dataclasses.asdict(config))}))
        opens = clear_of_midnight()
        job_ids = [kinds.plan_broadcast(ctx.engine, ctx.target("rc"), sender="boss",
                                        message=Message(text=f"news {n}"), chunk_size=1).report.job_id
                   for n in range(5)]
        log = open(tmp_path / "workers.log", "a")
        workers = [subprocess.Popen([sys.executable, "-m", "imshift.cli", "worker", "--processes", "1",
                                     "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True) for _ in range(2)]
        try:
            for job_id in job_ids:
                control.start(ctx.engine, ctx.broker, job_id)
            deadline = time.monotonic() + 60
            for job_id in job_ids:
                while progress(ctx.engine, job_id).status == "running":
                    assert time.monotonic() < deadline, (tmp_path / "workers.log").read_text()[-2000:]
                    time.sleep(0.1)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            log.close()
        assert_three_sent_two_refused(box, broadcast_items(ctx), opens)


def test_three_a_day_holds_across_embedded_commands_sharing_the_limits_folder(tmp_path):
    box = sandbox()
    database_url = made_database(f"sqlite:///{tmp_path}/imshift.db")
    with served(box) as url:
        env = {**app_env(tmp_path, box.config(url), database_url), "COLUMNS": "300"}
        opens = clear_of_midnight()
        commands = [subprocess.Popen([sys.executable, "-m", "imshift.cli", "broadcast", "--app", "rc",
                                      "--sender", "boss", "--text", f"news {n}"], env=env, cwd=tmp_path,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for n in range(5)]
        outputs = [command.communicate(timeout=90)[0] for command in commands]
    ctx = Context(Settings(database_url=database_url))
    assert_three_sent_two_refused(box, broadcast_items(ctx), opens)
    refused = [out for out in outputs if "allows 3 broadcasts a day" in out]
    assert len(refused) == 2, outputs


def test_the_vendors_own_cap_reply_ends_failed_with_its_words(tmp_path, database_url):
    """The app's config says its plan allows 5 an hour, the vendor keeps to 2:
    the sandbox refuses the third broadcast of the hour with RongCloud's 1008,
    and that item ends failed at once, not retried hours later."""
    box = RongCloudSandbox(rate_limits=RATES)  # RongCloud's own caps: 2 an hour, 3 a day
    box.store.users["u1"] = Record(name="U1")
    with served(box) as url:
        ctx = Context(Settings(database_url=database_url, apps={"rc": AppSettings(
            vendor="rongcloud", caps={"broadcast": {"hour": 5}}, rates=RATES,
            **dataclasses.asdict(box.config(url)))}))
        assert ctx.caps("rc") == {"broadcast": {"hour": 5, "day": 3}}
        ctx.runtime  # noqa: B018  (configures the workers)
        clear_of_midnight()
        with in_process_workers(ctx.broker, threads=2):
            done = []
            for n in range(3):
                planned = kinds.plan_broadcast(ctx.engine, ctx.target("rc"), sender="boss",
                                               message=Message(text=f"news {n}"), chunk_size=1)
                control.start(ctx.engine, ctx.broker, planned.report.job_id)
                done.append(wait_until_done(ctx, planned.report.job_id, 30))
    assert [p.counts for p in done] == [{"ok": 1}, {"ok": 1}, {"failed": 1}]
    assert box.calls["broadcast"] == 3 and box.over_limit["broadcast"] == 1  # asked once, not again
    [item] = results(ctx.engine, done[2].job_id)
    assert item.code == "1008"
    assert item.message.startswith("rate limited: the vendor answered 1008 "
                                   "'The call frequency exceeds the limit.")
    assert "not retried later" in item.message
    assert f"`imshift retry {done[2].job_id}` sends it once the window has opened" in item.message
