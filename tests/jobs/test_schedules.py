"""Schedules with a fake clock: exactly once under racing schedulers,
daylight-saving days, missed fires and the catch-up window, pause and
resume, a recipient file gone at fire time, a fire whose start was lost;
and what `add` refuses. On SQLite and PostgreSQL."""

import threading
import time

import pytest
from sqlalchemy import func, select, text

from imshift.jobs import control, schedules
from imshift.jobs.schedules import Firing, ScheduleError, local, parse_at
from imshift.models.tables import Job
from imshift.vendors.vocabulary import Message
from imshift.vendors.operations import encode_message

from helpers import context

NY = "America/New_York"
HELLO = {"sender": "", "message": encode_message(Message(text="hello"))}  # NetEase needs no sender
FROM_ALICE = {**HELLO, "sender": "alice"}


@pytest.fixture
def ctx(database_url):
    return context(database_url, apps={"ne": {"vendor": "netease", "sandbox": True},
                                       "rc": {"vendor": "rongcloud", "sandbox": True}})


def firing(ctx, started=None):
    """Jobs are started for real; with no worker in this process, none runs."""
    started = [] if started is None else started

    def start(job_id):
        control.start(ctx.engine, ctx.broker, job_id)
        started.append(job_id)

    return Firing(ctx.engine, ctx.target, start, 100)


def job_count(ctx) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Job)).scalar_one()


def fires_of(ctx, schedule_id):
    return [(local(f.fire_at, schedules.get(ctx.engine, schedule_id).tz), f.state)
            for f in schedules.history(ctx.engine, schedule_id)]


def advisory_locks_of(ctx, pid: int) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                 " AND pid = :pid"), {"pid": pid}).scalar_one()


def run_clock(f, start: float, end: float, step: float):
    t = start
    while t <= end:
        schedules.fire_due(f, t)
        t += step


def test_racing_schedulers_fire_a_schedule_once(ctx):
    at = parse_at("2026-12-24 09:00", "Asia/Shanghai")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                        tz="Asia/Shanghai", now=at - 60)
    started, barrier = [], threading.Barrier(4)

    def scheduler():
        barrier.wait()
        schedules.fire_due(firing(ctx, started), at + 1)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fires_of(ctx, sid) == [("2026-12-24 09:00:00+08:00", "fired")]
    [fire] = schedules.history(ctx.engine, sid)
    assert started == [fire.job_id]
    assert job_count(ctx) == 1  # the losers' jobs were discarded
    assert schedules.get(ctx.engine, sid).status == "done"


def test_a_fire_another_scheduler_is_planning_is_left_to_it_until_that_one_dies(ctx, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the claim is PostgreSQL's advisory lock; SQLite plans each fire in every scheduler")
    import psycopg
    from sqlalchemy.engine import make_url

    from imshift.jobs.fire_claim import SCHEDULE_LOCKS

    at = parse_at("2026-12-24 09:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                        now=at - 60)
    url = make_url(database_url)
    other = psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                            dbname=url.database, autocommit=True)  # a scheduler mid-planning
    other.execute("SELECT pg_advisory_lock(%s, %s)", (SCHEDULE_LOCKS, sid))
    [fired] = schedules.fire_due(firing(ctx), at + 1)
    assert (fired.state, job_count(ctx), fires_of(ctx, sid)) == ("elsewhere", 0, [])
    holder = other.info.backend_pid
    other.close()  # that scheduler died: the database drops its claim
    # ... once its server process has ended, which close() does not wait for.
    deadline = time.monotonic() + 30
    while advisory_locks_of(ctx, holder):
        assert time.monotonic() < deadline, "the closed session still holds its lock"
        time.sleep(0.02)
    [fired] = schedules.fire_due(firing(ctx), at + 2)
    assert fired.state == "fired" and job_count(ctx) == 1
    assert fires_of(ctx, sid) == [("2026-12-24 09:00:00+00:00", "fired")]


def test_a_scheduler_sleeps_until_the_next_schedule_is_due_never_past_it(ctx):
    now = parse_at("2026-12-24 08:59", "UTC")
    assert schedules.wait_seconds(ctx.engine, 1.0, now) == 1.0  # nothing to fire
    later = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                          at=now + 30, tz="UTC", now=now)
    assert schedules.wait_seconds(ctx.engine, 1.0, now) == 1.0  # a look each poll meanwhile
    soon = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                         at=now + 0.25, tz="UTC", now=now)
    assert schedules.wait_seconds(ctx.engine, 1.0, now) == pytest.approx(0.25)
    assert schedules.wait_seconds(ctx.engine, 1.0, now + 5) == schedules.MIN_WAIT  # already due
    schedules.pause(ctx.engine, soon)  # only active schedules wake it
    assert schedules.wait_seconds(ctx.engine, 1.0, now) == 1.0
    schedules.fire_due(firing(ctx), now + 30)
    assert schedules.get(ctx.engine, later).status == "done"
    assert schedules.wait_seconds(ctx.engine, 1.0, now + 30) == 1.0


def test_spring_forward_fires_once_when_the_clocks_skip_the_time(ctx):
    start = parse_at("2026-03-07 12:00", NY)
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="30 2 * * *", tz=NY, now=start)
    run_clock(firing(ctx), start, start + 2 * 86400, 600)
    assert fires_of(ctx, sid) == [("2026-03-08 03:30:00-04:00", "fired"),
                                  ("2026-03-09 02:30:00-04:00", "fired")]


def test_the_autumn_repeat_hour_does_not_fire_twice(ctx):
    start = parse_at("2026-10-31 12:00", NY)
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="30 1 * * *", tz=NY, now=start)
    run_clock(firing(ctx), start, start + 2 * 86400, 600)
    assert fires_of(ctx, sid) == [("2026-11-01 01:30:00-04:00", "fired"),
                                  ("2026-11-02 01:30:00-05:00", "fired")]
    assert job_count(ctx) == 2


def test_a_fire_inside_the_catch_up_window_fires_once_and_an_older_one_is_missed(ctx):
    at = parse_at("2026-06-01 09:00", "UTC")
    soon = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                         now=at - 60)
    late = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                         catch_up=300, now=at - 60)
    f = firing(ctx)
    schedules.fire_due(f, at + 600)  # the scheduler starts 10 minutes late
    schedules.fire_due(f, at + 700)
    assert fires_of(ctx, soon) == [("2026-06-01 09:00:00+00:00", "fired")]
    assert fires_of(ctx, late) == [("2026-06-01 09:00:00+00:00", "missed")]
    assert job_count(ctx) == 1
    [missed] = schedules.history(ctx.engine, late)
    assert "catch-up window (300 s; it was 600 s late)" in missed.note


def test_a_recurring_schedule_after_downtime_fires_the_latest_once_never_a_pile(ctx):
    start = parse_at("2026-06-01 09:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="*/5 * * * *", now=start - 1)
    f = firing(ctx)
    schedules.fire_due(f, start + 1)
    schedules.fire_due(f, start + 3600 + 120)  # down for an hour; 10:00 is 2 minutes old
    schedules.fire_due(f, start + 3600 + 130)
    assert fires_of(ctx, sid) == [("2026-06-01 09:00:00+00:00", "fired"),
                                  ("2026-06-01 09:05:00+00:00", "missed"),
                                  ("2026-06-01 10:00:00+00:00", "fired")]
    assert job_count(ctx) == 2
    assert local(schedules.get(ctx.engine, sid).next_at, "UTC") == "2026-06-01 10:05:00+00:00"
    schedules.fire_due(f, start + 86400 + 60)  # down for a day: one record, one fire
    assert fires_of(ctx, sid)[3:] == [("2026-06-01 10:05:00+00:00", "missed"),
                                      ("2026-06-02 09:00:00+00:00", "fired")]
    assert job_count(ctx) == 3
    hourly = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                           cron="0 * * * *", catch_up=60, now=start - 1)
    schedules.fire_due(f, start + 3 * 3600 + 120)  # 12:00 is 2 minutes old: beyond 60 s
    assert fires_of(ctx, hourly) == [("2026-06-01 09:00:00+00:00", "missed"),
                                     ("2026-06-01 12:00:00+00:00", "missed")]
    assert job_count(ctx) == 3


def test_pause_holds_fires_and_resume_does_not_make_them_up(ctx):
    start = parse_at("2026-06-01 09:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="0 * * * *", now=start - 1)
    f = firing(ctx)
    schedules.pause(ctx.engine, sid)
    schedules.fire_due(f, start + 1)
    assert fires_of(ctx, sid) == []
    with pytest.raises(ScheduleError, match="is paused; cannot make it paused"):
        schedules.pause(ctx.engine, sid)
    schedules.resume(ctx.engine, sid, now=start + 7200 + 5)
    schedules.fire_due(f, start + 7200 + 6)
    assert fires_of(ctx, sid) == []
    schedules.fire_due(f, start + 3 * 3600)
    assert fires_of(ctx, sid) == [("2026-06-01 12:00:00+00:00", "fired")]
    schedules.remove(ctx.engine, sid)
    schedules.fire_due(f, start + 4 * 3600)
    assert len(fires_of(ctx, sid)) == 1


def test_a_recipient_file_gone_at_fire_time_is_a_failed_fire_with_the_reason(ctx, tmp_path):
    to = tmp_path / "to.txt"
    to.write_text("alice\n")
    at = parse_at("2026-06-01 09:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="send", at=at, now=at - 60,
                        params={**HELLO, "sender": "boss", "to": str(to)})
    to.unlink()
    [fired] = schedules.fire_due(firing(ctx), at + 1)
    assert fired.state == "failed" and "to.txt: no such file" in fired.note
    assert fires_of(ctx, sid) == [("2026-06-01 09:00:00+00:00", "failed")]
    assert job_count(ctx) == 0


def test_a_fire_whose_start_was_lost_is_started_by_the_next_pass(ctx):
    at = parse_at("2026-06-01 09:00", "UTC")
    schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                  now=at - 60)

    def lost(job_id):
        raise ConnectionError("the scheduler died here")

    with pytest.raises(ConnectionError):
        schedules.fire_due(Firing(ctx.engine, ctx.target, lost, 100), at + 1)
    started = []
    assert schedules.fire_due(firing(ctx, started), at + 2) == []
    assert len(started) == 1


def test_a_planned_job_of_a_fire_never_committed_is_swept(ctx):
    at = parse_at("2026-06-01 09:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO, at=at,
                        now=at - 60)
    # What a scheduler killed between planning and the fire's commit leaves.
    job_id = schedules.plan_job(firing(ctx), schedules.get(ctx.engine, sid), at)
    assert schedules.sweep_orphans(ctx.engine) == []  # it may still be committing
    assert schedules.sweep_orphans(ctx.engine, now=at + 10 ** 9) == [job_id]
    assert job_count(ctx) == 0
    schedules.fire_due(firing(ctx), at + 1)
    assert fires_of(ctx, sid) == [("2026-06-01 09:00:00+00:00", "fired")]


def test_add_refuses_what_cannot_fire(ctx, tmp_path):
    ne, now = ctx.target("ne"), parse_at("2026-06-01 09:00", "UTC")
    with pytest.raises(ScheduleError, match="nope.txt: no such file"):
        schedules.add(ctx.engine, ne, command="send", at=now + 60, now=now,
                      params={**HELLO, "sender": "alice", "to": str(tmp_path / "nope.txt")})
    with pytest.raises(ScheduleError, match="is already past"):
        schedules.add(ctx.engine, ne, command="broadcast", params=HELLO, at=now - 3600, now=now)
    with pytest.raises(ScheduleError, match="not a time zone"):
        schedules.add(ctx.engine, ne, command="broadcast", params=HELLO, at=now, tz="Mars/Base")
    with pytest.raises(ScheduleError, match="not a cron expression"):
        schedules.add(ctx.engine, ne, command="broadcast", params=HELLO, cron="0 9 * *", now=now)
    assert local(parse_at("2026-03-08 02:30", NY), NY) == "2026-03-08 03:30:00-04:00"  # skipped: as cron
    with pytest.raises(ScheduleError, match=r"^RongCloud \(app rc\) allows 2 broadcasts an hour "):
        schedules.add(ctx.engine, ctx.target("rc"), command="broadcast", params=FROM_ALICE,
                      cron="*/10 * * * *", now=now)
    assert schedules.add(ctx.engine, ctx.target("rc"), command="broadcast", params=FROM_ALICE,
                         cron="0 9 * * MON", tz="Asia/Shanghai", now=now)
    assert schedules.add(ctx.engine, ne, command="broadcast", params=HELLO,
                         cron="*/20 * * * * *", now=now)  # six fields: seconds first


def test_local_time_fires_once_per_zone_at_nine_on_each_recipients_own_clock(ctx, tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from imshift.jobs.progress import results

    to = tmp_path / "to.csv"
    to.write_text("user_id,tz\nli,Asia/Shanghai\nwang,Asia/Shanghai\nann,Europe/London\n"
                  "bob,America/New_York\nmoon,Mars/Olympus\nnone,\n", encoding="utf-8")
    params = {"sender": "admin", "message": encode_message(Message(text="早上好")), "to": str(to),
              "local_at": schedules.parse_local_at("2026-12-24 09:00"), "tz_column": "tz"}
    start = parse_at("2026-12-23 12:00", "UTC")
    schedule_id = schedules.add(ctx.engine, ctx.target("ne"), command="send", params=params,
                                tz="UTC", now=start)
    row = schedules.get(ctx.engine, schedule_id)
    assert row.params["zones"] == ["America/New_York", "Asia/Shanghai", "Europe/London", "UTC"]
    assert row.params["fallback_rows"] == 2  # Mars/Olympus and the empty zone: counted, sent in UTC
    run_clock(firing(ctx), start, start + 2 * 86400, 900)
    fired = [f for f in schedules.history(ctx.engine, schedule_id)]
    assert [f.state for f in fired] == ["fired"] * 3  # London is UTC in December: one instant
    recipients = {}
    for f in fired:
        keys = sorted(i.key for i in results(ctx.engine, f.job_id))
        zones = {name for name in ("Asia/Shanghai", "Europe/London", "America/New_York", "UTC")
                 if datetime.fromtimestamp(f.fire_at, ZoneInfo(name)).strftime("%H:%M") == "09:00"}
        recipients[tuple(sorted(zones))] = keys
    assert recipients == {("Asia/Shanghai",): ["li", "wang"],
                          ("America/New_York",): ["bob"],
                          ("Europe/London", "UTC"): ["ann", "moon", "none"]}
    assert schedules.get(ctx.engine, schedule_id).status == "done"


def test_a_local_time_of_day_is_its_next_coming_in_each_zone(ctx, tmp_path):
    to = tmp_path / "to.csv"
    to.write_text("user_id,tz\nli,Asia/Shanghai\nann,Europe/Paris\n", encoding="utf-8")
    now = parse_at("2026-12-02 05:00", "UTC")  # 13:00 in Shanghai, 06:00 in Paris
    schedule_id = schedules.add(ctx.engine, ctx.target("ne"), command="send", tz="UTC", now=now, params={
        "sender": "admin", "message": HELLO["message"], "to": str(to),
        "local_at": schedules.parse_local_at("09:00"), "tz_column": "tz"})
    row = schedules.get(ctx.engine, schedule_id)
    assert sorted(local(t, "UTC") for t in schedules.local_instants(row.params, "UTC")) == [
        "2026-12-02 08:00:00+00:00",  # Paris, today
        "2026-12-02 09:00:00+00:00",  # the fallback zone (UTC), today
        "2026-12-03 01:00:00+00:00"]  # Shanghai, tomorrow: today's 09:00 is past there


def test_a_local_time_cron_fires_at_nine_on_each_zones_clock_each_day_once(ctx, tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from imshift.jobs.progress import results

    to = tmp_path / "to.csv"
    to.write_text("user_id,tz\nli,Asia/Shanghai\nann,Europe/London\nbob,America/New_York\n"
                  "moon,Mars/Olympus\n", encoding="utf-8")
    params = {"sender": "admin", "message": encode_message(Message(text="早上好")), "to": str(to),
              "tz_column": "tz"}
    start = parse_at("2026-12-23 12:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="send", params=params,
                        cron="0 9 * * *", tz="UTC", now=start)
    assert local(schedules.get(ctx.engine, sid).next_at, "UTC") == "2026-12-23 14:00:00+00:00"  # NY
    two = [firing(ctx), firing(ctx)]  # two schedulers look at every step of the fake clock
    t = start
    while t <= start + 2 * 86400:
        for f in two:
            schedules.fire_due(f, t)
        t += 900
    history = schedules.history(ctx.engine, sid)
    assert [f.state for f in history] == ["fired"] * 6  # 3 instants a day (London is UTC now)
    assert job_count(ctx) == 6
    got = []
    for f in history:
        keys = sorted(i.key for i in results(ctx.engine, f.job_id))
        nine = sorted(name for name in ("Asia/Shanghai", "Europe/London", "America/New_York")
                      if datetime.fromtimestamp(f.fire_at, ZoneInfo(name)).hour == 9)
        got.append((local(f.fire_at, "UTC"), nine, keys))
    assert got == [
        ("2026-12-23 14:00:00+00:00", ["America/New_York"], ["bob"]),
        ("2026-12-24 01:00:00+00:00", ["Asia/Shanghai"], ["li"]),
        ("2026-12-24 09:00:00+00:00", ["Europe/London"], ["ann", "moon"]),  # moon: --tz, counted
        ("2026-12-24 14:00:00+00:00", ["America/New_York"], ["bob"]),
        ("2026-12-25 01:00:00+00:00", ["Asia/Shanghai"], ["li"]),
        ("2026-12-25 09:00:00+00:00", ["Europe/London"], ["ann", "moon"])]
    assert schedules.get(ctx.engine, sid).status == "active"


def test_a_local_time_cron_after_downtime_fires_each_zone_inside_the_catch_up_once(ctx, tmp_path):
    from imshift.jobs.progress import results

    to = tmp_path / "to.csv"
    to.write_text("user_id,tz\nli,Asia/Shanghai\npia,Europe/Paris\nann,Europe/London\n",
                  encoding="utf-8")
    start = parse_at("2026-12-23 12:00", "UTC")
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="send", cron="0 9 * * *", tz="UTC",
                        now=start, catch_up=7200, params={**HELLO, "sender": "admin", "to": str(to),
                                                          "tz_column": "tz"})
    # No scheduler ran until 09:30 UTC: Shanghai's 09:00 (01:00 UTC) is older than the
    # 2 h catch-up, Paris's (08:00 UTC) and London's (09:00 UTC) are not.
    for _ in range(4):  # a scheduler's passes at that time, one fire each
        schedules.fire_due(firing(ctx), parse_at("2026-12-24 09:30", "UTC"))
    assert fires_of(ctx, sid) == [("2026-12-24 01:00:00+00:00", "missed"),
                                  ("2026-12-24 08:00:00+00:00", "fired"),
                                  ("2026-12-24 09:00:00+00:00", "fired")]
    jobs = [f.job_id for f in schedules.history(ctx.engine, sid) if f.job_id]
    assert [[i.key for i in results(ctx.engine, j)] for j in jobs] == [["pia"], ["ann"]]
    assert local(schedules.get(ctx.engine, sid).next_at, "UTC") == "2026-12-25 01:00:00+00:00"
    with pytest.raises(ScheduleError, match="one of --at or --cron"):
        schedules.add(ctx.engine, ctx.target("ne"), command="send", cron="0 9 * * *", now=start,
                      params={**HELLO, "to": str(to), "tz_column": "tz",
                              "local_at": schedules.parse_local_at("09:00")})
