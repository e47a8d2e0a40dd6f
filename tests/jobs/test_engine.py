"""The job engine end to end: a private Redis as the broker, a real database
(SQLite and PostgreSQL), workers in this process, vendor sandboxes behind
real HTTP (in-process ASGI)."""

import threading

from imshift.jobs import control, kinds
from imshift.jobs.progress import progress, results
from imshift.models import store
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox
from imshift.workers.embedded import in_process_workers

from helpers import NAMES, context, wait_until_done, write_users


def run_migration(ctx, users, target="new", timeout=120, threads=8):
    planned = kinds.plan_user_migration(ctx.engine, ctx.target(target), users, source_app="old",
                                           chunk_size=ctx.settings.chunk_size)
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker, threads=threads):
        control.start(ctx.engine, ctx.broker, planned.report.job_id)
        return planned.report.job_id, wait_until_done(ctx, planned.report.job_id, timeout)


def test_ten_thousand_users_are_each_migrated_exactly_once(database_url, redis_server, tmp_path):
    ctx = context(database_url, redis_server.url, chunk_size=500,
                  apps={"old": {"vendor": "rongcloud", "sandbox": True},
                        "new": {"vendor": "openim", "sandbox": True}})
    users = write_users(tmp_path / "users.csv", 10_000)
    job_id, p = run_migration(ctx, users)
    assert p.status == "finished"
    assert p.counts == {"ok": 10_000}
    with ctx.engine.begin() as conn:
        assert store.recount(conn, job_id) == {"ok": 10_000}
    box = ctx.sandbox("new")
    items = list(results(ctx.engine, job_id))
    assert [i.key for i in items] == [f"user_{n:06d}" for n in range(10_000)]
    assert all(i.attempts == 1 for i in items)
    for n in (0, 1, 4_321, 9_999):
        assert box.stored_profile(f"user_{n:06d}").name == f"{NAMES[n % len(NAMES)]} {n}"
    assert box.duplicates["register"] == 0
    assert sum(1 for n in range(10_000) if box.stored_profile(f"user_{n:06d}")) == 10_000


def test_faults_and_rate_limits_end_every_valid_item_done_and_bad_rows_named(
        database_url, redis_server, tmp_path):
    ctx = context(database_url, redis_server.url, chunk_size=20, request_timeout=0.3,
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": "rongcloud", "sandbox": True,
                                "rates": {"register": 80}}})
    # The vendor allows less than we are configured for, and misbehaves.
    ctx.sandboxes["new"] = RongCloudSandbox(
        rate_limits={"register": 40},
        faults=Faults(error_rate=0.15, timeout_rate=0.05, hang_seconds=1.0, seed=3))
    bad = {7: {"user_id": "bad id!"}, 42: {"user_id": ""}, 99: {"user_id": "x" * 65}}
    users = write_users(tmp_path / "users.csv", 200, bad_rows=bad)
    job_id, p = run_migration(ctx, users, timeout=120)
    assert p.status == "finished", p
    box = ctx.sandboxes["new"]
    assert box.faulted["register"] > 0 and box.over_limit["register"] > 0  # the faults happened
    items = {i.row: i for i in results(ctx.engine, job_id)}
    assert len(items) == 200
    for i in bad:
        assert items[i + 2].state == "rejected" and items[i + 2].code == "invalid"
    assert "user_id" in items[9].message and "not allowed" in items[9].message
    assert items[44].message == "user_id: required"
    assert "at most 64 allowed" in items[101].message
    done = [i for row, i in items.items() if row - 2 not in bad]
    assert {i.state for i in done} <= {"ok", "exists"}, {i.state for i in done}
    assert all(box.stored_profile(i.key) is not None for i in done)
    assert p.counts["rejected"] == 3


def test_a_chunks_slices_overlap_while_the_vendor_takes_its_time(tmp_path):
    """One chunk, one thread, a vendor that answers after a second: the
    chunk claims its next slice once the claim budget has room (its calls
    have their slots), not once the slice before it is recorded, so calls
    keep going out at the quota's pace while the first replies are awaited."""
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}", chunk_size=200,
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": "rongcloud", "sandbox": True, "rates": {"register": 100}}})
    box = ctx.sandboxes["new"] = RongCloudSandbox(faults=Faults(latency=1.0))
    users = write_users(tmp_path / "users.csv", 200)
    sent_before_any_recorded = []
    watching = threading.Event()

    def watch() -> None:
        # Calls at the vendor while no item of the job has been recorded.
        while not watching.wait(0.02):
            calls = box.calls["register"]
            if progress(ctx.engine, job_id).counts.get("ok"):
                return
            sent_before_any_recorded.append(calls)

    planned = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app="old",
                                        chunk_size=ctx.settings.chunk_size)
    job_id = planned.report.job_id
    ctx.runtime  # noqa: B018  (configures the workers)
    watcher = threading.Thread(target=watch, daemon=True)
    with in_process_workers(ctx.broker, threads=1):
        watcher.start()
        control.start(ctx.engine, ctx.broker, job_id)
        p = wait_until_done(ctx, job_id, 60)
    watching.set()
    watcher.join(5)
    assert p.counts == {"ok": 200}
    # The budget is 100/s x 0.5 s = 50 items, claimed 13 at a time: one slice
    # after another would have sent 13 calls before the first was recorded.
    assert max(sent_before_any_recorded) > 40, max(sent_before_any_recorded)
