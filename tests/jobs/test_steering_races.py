"""Jobs that must not run, and changes that race: a producer SIGKILLed while
planning, two commands changing one job at the same moment, a cancel while
chunks run, retry on a paused job, and a vendor that cannot be reached."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
from sqlalchemy import func, select

from imshift.jobs import control, kinds
from imshift.jobs.progress import progress
from imshift.models import Item, Job
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from imshift.workers.embedded import in_process_workers
from imshift.workers.sweeper import sweep
from testsupport import free_port

from helpers import context, wait_until_done, write_users

SANDBOX = {"new": {"vendor": "netease", "sandbox": True}}


def cli_env(database_url: str, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "IMSHIFT_REDIS_URL")}
    return {**env, "IMSHIFT_CONFIG": str(tmp_path / "none.toml"), "IMSHIFT_DATABASE_URL": database_url,
            "IMSHIFT_APPS__NEW__VENDOR": "netease", "IMSHIFT_APPS__NEW__SANDBOX": "true"}


def stored_items(ctx, job_id: int) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Item.__table__)
                            .where(Item.__table__.c.job_id == job_id)).scalar_one()


def test_a_producer_killed_mid_plan_leaves_a_job_that_never_runs_and_cancel_removes(
        database_url, tmp_path):
    users = write_users(tmp_path / "u.csv", 150_000)
    producer = subprocess.Popen(
        [sys.executable, "-m", "imshift.cli", "migrate", "users", "--from", "new", "--to", "new",
         "--input", str(users), "--detach"], env=cli_env(database_url, tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ctx = context(database_url, apps=SANDBOX)
    try:
        deadline = time.monotonic() + 60
        while True:  # a few batches are stored: kill it mid-plan
            assert time.monotonic() < deadline and producer.poll() is None
            with ctx.engine.connect() as conn:
                job_id = conn.execute(select(func.max(Job.__table__.c.id))).scalar()
            if job_id and stored_items(ctx, job_id) >= 10_000:
                break
            time.sleep(0.05)
    finally:
        os.killpg(producer.pid, signal.SIGKILL)
        producer.wait(10)
    p = progress(ctx.engine, job_id)
    assert p.status == "planning" and 0 < stored_items(ctx, job_id) < 150_000
    for attempt in (lambda: control.start(ctx.engine, ctx.broker, job_id),
                    lambda: control.resume(ctx.engine, ctx.broker, job_id),
                    lambda: control.mark_planned(ctx.engine, job_id)):
        with pytest.raises(control.JobError, match="never planned whole.*imshift cancel"):
            attempt()
    assert sweep(ctx.runtime, now=time.time() + 3600) == 0  # the sweeper never runs it
    assert progress(ctx.engine, job_id).status == "planning"
    shown = subprocess.run([sys.executable, "-m", "imshift.cli", "status", str(job_id)],
                           env=cli_env(database_url, tmp_path), capture_output=True, text=True,
                           timeout=60)
    assert "never planned whole" in shown.stdout and f"imshift cancel {job_id}" in shown.stdout
    stored = stored_items(ctx, job_id)
    assert control.cancel(ctx.engine, job_id) == stored
    assert progress(ctx.engine, job_id) is None and stored_items(ctx, job_id) == 0
    assert ctx.broker.queues["imshift"].qsize() == 0  # nothing was ever queued


def planned_job(ctx, tmp_path, users: int) -> int:
    report = kinds.plan_user_migration(ctx.engine, ctx.target("new"),
                                       write_users(tmp_path / f"u{time.monotonic_ns()}.csv", users),
                                       source_app="new", chunk_size=10).report
    control.mark_planned(ctx.engine, report.job_id)
    return report.job_id


def race(*calls) -> list[object]:
    """Run the calls at the same moment, one thread each: what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001  (collected for the assertions)
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_of_two_racing_starts_or_resumes_exactly_one_wins(database_url, tmp_path):
    ctx = context(database_url, apps=SANDBOX)
    queue = ctx.broker.queues["imshift"]
    for _ in range(10):
        job_id = planned_job(ctx, tmp_path, 30)
        before = queue.qsize()
        outcomes = race(partial(control.start, ctx.engine, ctx.broker, job_id),
                        partial(control.start, ctx.engine, ctx.broker, job_id))
        wins = [o for o in outcomes if isinstance(o, int)]
        assert len(wins) == 1 and wins[0] > 0, outcomes
        assert queue.qsize() - before == wins[0]  # every chunk queued once
        assert sum(isinstance(o, control.JobError) for o in outcomes) == 1, outcomes
        control.pause(ctx.engine, job_id)
        before = queue.qsize()
        outcomes = race(partial(control.resume, ctx.engine, ctx.broker, job_id),
                        partial(control.resume, ctx.engine, ctx.broker, job_id))
        assert sum(isinstance(o, int) for o in outcomes) == 1, outcomes
        assert sum(isinstance(o, control.JobError) for o in outcomes) == 1, outcomes
        assert queue.qsize() - before == wins[0]
        control.cancel(ctx.engine, job_id)


def test_cancel_racing_resume_always_ends_cancelled(database_url, tmp_path):
    ctx = context(database_url, apps=SANDBOX)
    for _ in range(10):
        job_id = planned_job(ctx, tmp_path, 30)
        control.start(ctx.engine, ctx.broker, job_id)
        control.pause(ctx.engine, job_id)
        outcomes = race(partial(control.cancel, ctx.engine, job_id),
                        partial(control.resume, ctx.engine, ctx.broker, job_id))
        assert isinstance(outcomes[0], int), outcomes  # cancel is allowed from paused and running
        p = progress(ctx.engine, job_id)
        assert p.status == "cancelled" and p.counts == {"cancelled": 30}, (outcomes, p)


def test_cancel_while_chunks_run_leaves_nothing_open(database_url, tmp_path):
    box = NeteaseSandbox(faults=Faults(error_rate=0.3, latency=0.05, seed=7))
    ctx = context(database_url, chunk_size=20,
                  apps={"new": {"vendor": "netease", "sandbox": True, "rates": {"register": 40}}})
    ctx.sandboxes["new"] = box
    report = kinds.plan_user_migration(ctx.engine, ctx.target("new"), write_users(tmp_path / "u.csv", 600),
                                       source_app="new", chunk_size=20).report
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker, threads=8):
        control.start(ctx.engine, ctx.broker, report.job_id)
        while progress(ctx.engine, report.job_id).done < 100:
            time.sleep(0.02)
        assert progress(ctx.engine, report.job_id).counts.get("claimed")  # chunks are mid-call
        control.cancel(ctx.engine, report.job_id)
    # Leaving the block stopped the workers once the chunks in flight had
    # recorded what they got (cancel made their items cancelled; a chunk's
    # answer may still turn some ok).
    p = progress(ctx.engine, report.job_id)
    assert p.status == "cancelled"
    assert not p.counts.get("pending") and not p.counts.get("claimed"), p.counts
    assert sum(p.counts.values()) == 600
    with ctx.engine.connect() as conn:  # the counts are the items'
        from imshift.models import store
        assert store.recount(conn, report.job_id) == p.counts


def test_retry_on_a_paused_job_refuses_with_the_reason(tmp_path):
    ctx = context(f"sqlite:///{tmp_path}/imshift.db", apps=SANDBOX)
    job_id = planned_job(ctx, tmp_path, 20)
    control.start(ctx.engine, ctx.broker, job_id)
    control.pause(ctx.engine, job_id)
    with pytest.raises(control.JobError, match="is paused: `imshift resume"):
        control.retry(ctx.engine, ctx.broker, job_id)
    assert progress(ctx.engine, job_id).status == "paused"


def test_an_unreachable_vendor_stops_the_job_and_resume_continues(tmp_path):
    box = NeteaseSandbox()
    port = free_port()  # nothing listens here yet: every connection is refused
    config = {"vendor": "netease", **dataclasses.asdict(box.config(f"http://127.0.0.1:{port}"))}
    ctx = context(f"sqlite:///{tmp_path}/imshift.db", chunk_size=20, apps={"new": config})
    report = kinds.plan_user_migration(ctx.engine, ctx.target("new"), write_users(tmp_path / "u.csv", 200),
                                       source_app="new", chunk_size=20).report
    ctx.runtime.tuning.unreachable_after = 2.0
    with in_process_workers(ctx.broker):
        control.start(ctx.engine, ctx.broker, report.job_id)
        p = wait_until_done(ctx, report.job_id, 30)
        deadline = time.monotonic() + 30
        while p.counts.get("claimed"):  # chunks mid-call when it stopped record theirs
            assert time.monotonic() < deadline, p
            time.sleep(0.1)
            p = progress(ctx.engine, report.job_id)
    assert p.status == "stopped", p
    assert "could not be reached" in p.stop_reason and f"imshift resume {report.job_id}" in p.stop_reason
    assert p.counts == {"pending": 200}
    assert box.app_secret not in p.stop_reason
    with served(box, port=port), in_process_workers(ctx.broker):
        control.resume(ctx.engine, ctx.broker, report.job_id)
        p = wait_until_done(ctx, report.job_id, 60)
    assert p.status == "finished" and p.counts == {"ok": 200}, p
