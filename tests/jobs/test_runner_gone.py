"""Real processes killed mid-job: an embedded command (no Redis), whose job
`resume` takes over only once its runner is gone, and workers killed while
sends wait for the rate limiter (only batches let go end `unknown`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from imshift.jobs import control, kinds
from imshift.jobs.progress import progress, results
from imshift.vendors.vocabulary import Message, Profile
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from imshift.workers.embedded import in_process_workers
from testsupport import app_environment

from helpers import context, wait_until_done, write_users
from test_workers import Workers, setup  # noqa: F401  (the fixture)

pytestmark = pytest.mark.loopback


def test_resume_takes_over_a_killed_embedded_command_but_not_a_live_one(tmp_path):
    db = f"sqlite:///{tmp_path}/imshift.db"
    box = NeteaseSandbox()
    with served(box) as url:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "IMSHIFT_REDIS_URL")}
        env.update({"IMSHIFT_CONFIG": str(tmp_path / "none.toml"), "IMSHIFT_DATABASE_URL": db,
                    "IMSHIFT_APPS__NEW__RATES": json.dumps({"register": 40}),
                    **app_environment("new", "netease", box.config(url))})
        command = subprocess.Popen(
            [sys.executable, "-m", "imshift.cli", "migrate", "users", "--from", "new", "--to", "new",
             "--input", str(write_users(tmp_path / "u.csv", 600))], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ctx = context(db, apps={"new": {"vendor": "netease", "rates": {"register": 40},
                                        **dataclasses.asdict(box.config(url))}})
        try:
            deadline = time.monotonic() + 60
            while (p := progress(ctx.engine, 1)) is None or p.done < 100:
                assert time.monotonic() < deadline and command.poll() is None, p
                time.sleep(0.05)
            with pytest.raises(control.JobError, match="is running in .*imshift pause 1"):
                control.resume(ctx.engine, ctx.broker, 1)  # its runner is alive
        finally:
            os.killpg(command.pid, signal.SIGKILL)  # as a closed terminal or kill -9
            command.wait(10)
        assert progress(ctx.engine, 1).status == "running"
        with pytest.raises(control.JobError, match="runner .* is gone: `imshift resume 1`"):
            control.start(ctx.engine, ctx.broker, 1)
        ctx.runtime  # noqa: B018  (configures the workers)
        with in_process_workers(ctx.broker):
            control.resume(ctx.engine, ctx.broker, 1)
            p = wait_until_done(ctx, 1, 60)
    # What the dead command had sent but not recorded is sent again: `exists`.
    assert p.status == "finished" and set(p.counts) <= {"ok", "exists"}, p
    assert sum(p.counts.values()) == 600
    assert sum(1 for i in results(ctx.engine, 1) if box.stored_profile(i.key) is not None) == 600


def test_sends_waiting_for_the_limiter_when_workers_die_are_sent_not_unknown(setup, tmp_path):
    box = NeteaseSandbox()
    recipients = [f"user_{i:06d}" for i in range(3000)]

    async def register_everyone():
        return await box.client().register_users([Profile(r, r) for r in recipients])

    assert all(r.succeeded for r in asyncio.run(register_everyone()))
    ctx, workers = setup(box, rates={"send": 1})  # one batch call of 500 a second
    workers.env["IMSHIFT_CLAIM_SECONDS"] = "10"  # claim far more than the limiter lets go
    to = tmp_path / "to.txt"
    to.write_text("\n".join(recipients), encoding="utf-8")
    job_id = kinds.plan_send(ctx.engine, ctx.target("new"), to, sender="user_000000",
                             message=Message(text="once only"), chunk_size=500).report.job_id
    control.start(ctx.engine, ctx.broker, job_id)
    workers.start()
    deadline = time.monotonic() + 30
    while box.calls["send"] < 1 or progress(ctx.engine, job_id).counts.get("claimed", 0) < 1500:
        assert time.monotonic() < deadline, (box.calls, progress(ctx.engine, job_id))
        time.sleep(0.01)
    workers.kill()  # every worker: sends were claimed, most waiting for the limiter
    let_go = box.calls["send"]
    workers.start()
    p = wait_until_done(ctx, job_id, 90)
    assert p.status == "finished", (tmp_path / "workers.log").read_text()[-3000:]
    inboxes = {r: len(box.inbox(r)) for r in recipients}
    assert max(inboxes.values()) == 1  # nothing was sent twice
    items = list(results(ctx.engine, job_id))
    unknown = [i.key for i in items if i.state == "unknown"]
    assert {i.state for i in items} <= {"ok", "unknown"}
    # Unknown: only batches the dead workers had let go (500 each), not the
    # ones that were waiting; those were sent by the next worker.
    assert len(unknown) <= 500 * (let_go + 1), (len(unknown), let_go)
    assert sum(1 for k in unknown if inboxes[k] == 0) <= 500
    assert all(inboxes[i.key] == 1 for i in items if i.state == "ok")
