"""Recurring schedules on the days the clocks change, on a fake clock (as
tests/jobs/test_schedules.py), by Vixie/ISC cron's rule (issue 21, items 20
and 21): an entry with a wildcard hour keeps its interval on the new time,
so it fires in the repeated autumn hour again and not at times that do not
exist; an entry at a fixed hour fires once in a repeated hour and at the
skipped-over instant (03:30) on a spring-forward day, and so does `--at`."""

from typer.testing import CliRunner

from imshift.cli import app
from imshift.jobs import schedules
from imshift.jobs.schedules import parse_at

from test_schedules import HELLO, NY, ctx, firing, fires_of, job_count, run_clock  # noqa: F401  (pytest fixtures, used by name)


def test_a_wildcard_hour_fires_through_the_repeated_autumn_hour(ctx):
    start = parse_at("2026-11-01 00:30", NY)
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="*/20 * * * *", tz=NY, now=start)
    run_clock(firing(ctx), start, start + 3 * 3600, 60)  # 00:30 EDT to 02:30 EST
    assert fires_of(ctx, sid) == [
        ("2026-11-01 00:40:00-04:00", "fired"),
        ("2026-11-01 01:00:00-04:00", "fired"), ("2026-11-01 01:20:00-04:00", "fired"),
        ("2026-11-01 01:40:00-04:00", "fired"),
        ("2026-11-01 01:00:00-05:00", "fired"), ("2026-11-01 01:20:00-05:00", "fired"),
        ("2026-11-01 01:40:00-05:00", "fired"),
        ("2026-11-01 02:00:00-05:00", "fired"), ("2026-11-01 02:20:00-05:00", "fired")]
    assert job_count(ctx) == 9


def test_a_wildcard_hour_down_in_the_repeat_fires_its_latest_and_records_the_one_before_missed(ctx):
    start = parse_at("2026-11-01 01:30", NY)  # EDT, the first pass
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="*/20 * * * *", tz=NY, now=start)
    f = firing(ctx)
    schedules.fire_due(f, start + 11 * 60)  # 01:41 EDT: the 01:40 EDT fire
    schedules.fire_due(f, start + 3600 + 3 * 60)  # 01:33 EST: 01:20 EST is the latest
    assert fires_of(ctx, sid) == [("2026-11-01 01:40:00-04:00", "fired"),
                                  ("2026-11-01 01:00:00-05:00", "missed"),
                                  ("2026-11-01 01:20:00-05:00", "fired")]
    assert schedules.get(ctx.engine, sid).next_at == parse_at("2026-11-01 06:40", "UTC")  # 01:40 EST


def test_a_wildcard_hour_skips_the_times_spring_forward_removes(ctx):
    start = parse_at("2026-03-08 01:10", NY)
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        cron="*/20 * * * *", tz=NY, now=start)
    run_clock(firing(ctx), start, start + 3600, 60)  # 01:10 EST to 03:10 EDT
    assert fires_of(ctx, sid) == [("2026-03-08 01:20:00-05:00", "fired"),
                                  ("2026-03-08 01:40:00-05:00", "fired"),
                                  ("2026-03-08 03:00:00-04:00", "fired")]


def test_a_fixed_hour_still_fires_once_in_autumn_and_at_the_skipped_instant_in_spring(ctx):
    start = parse_at("2026-10-31 12:00", NY)
    once = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                         cron="*/30 1 * * *", tz=NY, now=start)  # a fixed hour, minutes apart
    run_clock(firing(ctx), start, start + 86400, 300)
    assert fires_of(ctx, once) == [("2026-11-01 01:00:00-04:00", "fired"),
                                   ("2026-11-01 01:30:00-04:00", "fired")]


def test_at_a_time_the_clocks_skip_fires_at_the_shifted_time(ctx):
    at = parse_at("2027-03-14T02:30:00", NY)  # no such wall time in New York
    assert schedules.local(at, NY) == "2027-03-14 03:30:00-04:00"
    sid = schedules.add(ctx.engine, ctx.target("ne"), command="broadcast", params=HELLO,
                        at=at, tz=NY, now=at - 3600)
    run_clock(firing(ctx), at - 600, at + 600, 60)
    assert fires_of(ctx, sid) == [("2027-03-14 03:30:00-04:00", "fired")]


def test_schedule_add_at_a_skipped_time_is_taken(env):
    result = CliRunner().invoke(app, ["schedule", "add", "--at", "2027-03-14T02:30:00", "--tz", NY,
                                      "--", "broadcast", "--app", "new", "--content", '{"k": 1}'])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "at 2027-03-14 03:30:00-04:00" in output, output
