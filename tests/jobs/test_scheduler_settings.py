"""A running `imshift scheduler` reads the app a fire needs when it fires
(issue 21 item 17): an app removed from the config file while the
scheduler runs is not sent through again; its next fire is recorded
`failed`, naming the reason. A real scheduler process, a NetEase sandbox
on loopback, the config file edited under it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from imshift.jobs import schedules
from imshift.vendors.operations import encode_message
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from imshift.vendors.vocabulary import Message

from helpers import context

pytestmark = pytest.mark.loopback


def toml_of(config) -> str:
    return ('[apps.shop]\nvendor = "netease"\nrates = { broadcast = 100 }\n'
            + "".join(f'{k} = "{getattr(config, k)}"\n' for k in ("app_key", "app_secret", "base_url")))


def fires(ctx, schedule_id):
    return [(f.state, f.note or "") for f in schedules.history(ctx.engine, schedule_id)]


def wait_for(check, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


@contextlib.contextmanager
def scheduler_on(tmp_path, base_url: str, config):
    """A broadcast schedule firing every second for app `shop` (the config
    file's), and a real `imshift scheduler` on it: (ctx, schedule id, log)."""
    db = f"sqlite:///{tmp_path}/imshift.db"
    toml = tmp_path / "imshift.toml"
    toml.write_text(toml_of(config))
    ctx = context(db, apps={"shop": {"vendor": "netease", "app_key": config.app_key,
                                     "app_secret": config.app_secret, "base_url": base_url}})
    sid = schedules.add(ctx.engine, ctx.target("shop"), command="broadcast", cron="* * * * * *",
                        params={"sender": "", "message": encode_message(Message(text="tick"))})
    env = {**os.environ, "IMSHIFT_DATABASE_URL": db, "IMSHIFT_CONFIG": str(toml)}
    for name in ("REDIS_URL", "IMSHIFT_REDIS_URL", "DATABASE_URL"):
        env.pop(name, None)
    log = tmp_path / "scheduler.log"
    process = subprocess.Popen([sys.executable, "-m", "imshift.cli", "scheduler", "--poll", "0.2"],
                               env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield ctx, sid, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_an_app_removed_while_the_scheduler_runs_fails_its_next_fire(tmp_path):
    box = NeteaseSandbox()
    with served(box) as base_url, scheduler_on(tmp_path, base_url, box.config(base_url)) as (ctx, sid, log):
        toml = tmp_path / "imshift.toml"
        wait_for(lambda: box.calls.get("broadcast", 0) >= 1, lambda: (fires(ctx, sid), log.read_text()))
        toml.write_text("# the shop app is gone\n")
        removed = time.time()
        wait_for(lambda: any(s == "failed" for s, _ in fires(ctx, sid)),
                 lambda: (fires(ctx, sid), log.read_text()))
        # A fire made before the edit may still be sending: wait for its job.
        wait_for(lambda: all(f.job_status != "running" for f in schedules.history(ctx.engine, sid)),
                 lambda: (fires(ctx, sid), log.read_text()))
        calls = box.calls.get("broadcast", 0)
        time.sleep(2.5)  # more fires fall due: none sends
        assert box.calls.get("broadcast", 0) == calls, fires(ctx, sid)
    # The scheduler has stopped: its record.
    after = [f for f in schedules.history(ctx.engine, sid) if f.fire_at > removed + 0.5]
    assert after and all(f.state == "failed" for f in after), fires(ctx, sid)
    assert "no vendor app named 'shop'" in after[0].note, after[0].note
    assert "failed: no vendor app named 'shop'" in log.read_text()


def test_an_app_changed_while_the_scheduler_runs_sends_through_its_new_settings(tmp_path):
    """The scheduler's in-process workers made a client for the app at its
    first fire: after the file points the app at another server, the next
    fires go there (the workers' clients are made again from the new settings)."""
    first, second = NeteaseSandbox(), NeteaseSandbox()
    with served(first) as first_url, served(second) as second_url, \
            scheduler_on(tmp_path, first_url, first.config(first_url)) as (ctx, sid, log):
        wait_for(lambda: first.calls.get("broadcast", 0) >= 1, lambda: (fires(ctx, sid), log.read_text()))
        (tmp_path / "imshift.toml").write_text(toml_of(second.config(second_url)))
        wait_for(lambda: second.calls.get("broadcast", 0) >= 2, lambda: (fires(ctx, sid), log.read_text()))
        calls = first.calls.get("broadcast", 0)
        time.sleep(1.5)
        assert first.calls.get("broadcast", 0) <= calls + 1  # at most one fire already on its way
