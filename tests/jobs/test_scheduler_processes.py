"""Two real `imshift scheduler` processes (embedded: each runs the jobs it
fires) share one database and a NetEase sandbox on loopback: a one-off
schedule due in 3 s fires once and each recipient gets one copy; a
recurring schedule fires once per period across a scheduler's SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from imshift.jobs import schedules
from imshift.jobs.progress import progress
from imshift.vendors.vocabulary import Message, Profile
from imshift.vendors.operations import encode_message
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from testsupport import app_environment

from helpers import context

pytestmark = pytest.mark.loopback
USERS = [f"user{i}" for i in range(6)]


class Scheduler:
    def __init__(self, env, log):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imshift.cli", "scheduler", "--poll", "0.2"], env=env,
            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def world(database_url, tmp_path):
    box = NeteaseSandbox()
    with served(box) as base_url:
        config = box.config(base_url)
        assert all(r.succeeded for r in asyncio.run(
            box.client().register_users([Profile(u) for u in ["boss", *USERS]])))
        env = {**os.environ, "IMSHIFT_DATABASE_URL": database_url,
               "IMSHIFT_CONFIG": str(tmp_path / "none.toml"),
               **app_environment("new", "netease", config)}
        for name in ("REDIS_URL", "IMSHIFT_REDIS_URL"):
            env.pop(name, None)
        ctx = context(database_url, apps={"new": {"vendor": "netease",
                                                  **{k: getattr(config, k) for k in
                                                     config.__dataclass_fields__}}})
        to = tmp_path / "to.txt"
        to.write_text("".join(f"{u}\n" for u in USERS))
        started = []
        try:
            yield box, ctx, env, to, started
        finally:
            for s in started:
                s.kill()


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def send_params(to):
    return {"sender": "boss", "to": str(to), "message": encode_message(Message(text="09:00 news"))}


def finished_fires(ctx, sid, count):
    fired = [f for f in schedules.history(ctx.engine, sid) if f.state == "fired"]
    done = [f for f in fired if progress(ctx.engine, f.job_id).status == "finished"]
    return fired if len(done) >= count else None


def test_two_schedulers_fire_a_one_off_once(world, tmp_path):
    box, ctx, env, to, started = world
    at = time.time() + 3
    sid = schedules.add(ctx.engine, ctx.target("new"), command="send", params=send_params(to),
                        at=at, tz="UTC")
    started += [Scheduler(env, tmp_path / f"s{i}.log") for i in range(2)]
    [fire] = wait_for(lambda: finished_fires(ctx, sid, 1), 60, "the fire's job finished")
    time.sleep(1.5)  # the other scheduler had several looks meanwhile
    assert [f.state for f in schedules.history(ctx.engine, sid)] == ["fired"]
    assert progress(ctx.engine, fire.job_id).counts == {"ok": len(USERS)}
    for user in USERS:
        assert [m["text"] for m in box.inbox(user)] == ["09:00 news"]


def test_a_recurring_schedule_fires_once_per_period_across_a_scheduler_kill(world, tmp_path):
    box, ctx, env, to, started = world
    sid = schedules.add(ctx.engine, ctx.target("new"), command="send", params=send_params(to),
                        cron="*/3 * * * * *", tz="UTC")
    first = Scheduler(env, tmp_path / "s0.log")
    started += [first, Scheduler(env, tmp_path / "s1.log")]
    wait_for(lambda: finished_fires(ctx, sid, 2), 60, "two fires finished")
    first.kill()
    started.append(Scheduler(env, tmp_path / "s2.log"))
    wait_for(lambda: finished_fires(ctx, sid, 5), 60, "five fires finished")
    schedules.pause(ctx.engine, sid)
    time.sleep(1)  # fires committed before the pause finish their jobs
    wait_for(lambda: all(progress(ctx.engine, f.job_id).status == "finished"
                         for f in schedules.history(ctx.engine, sid) if f.job_id), 60,
             "every fired job finished")
    history = schedules.history(ctx.engine, sid)
    times = [f.fire_at for f in history]
    assert len(times) == len(set(times))  # one row per period
    assert all(datetime.fromtimestamp(t, timezone.utc).second % 3 == 0 for t in times)
    fired = [f for f in history if f.state == "fired"]
    for user in USERS:  # one copy per fire, none twice
        assert len(box.inbox(user)) == len(fired)
