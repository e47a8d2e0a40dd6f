"""`imshift schedule ...` as a user types it (embedded defaults)."""

from typer.testing import CliRunner

from imshift.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def test_add_list_show_pause_resume_remove(env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the list's rows on one line each
    (env / "to.txt").write_text("alice\n")
    result, output = run("schedule", "add", "--at", "2099-12-24 09:00", "--tz", "Asia/Shanghai",
                         "--", "send", "--app", "new", "--sender", "boss", "--to", "to.txt",
                         "--text", "Merry")
    assert result.exit_code == 0, output
    assert "schedule 1: send on new, at 2099-12-24 09:00:00+08:00" in output
    result, output = run("schedule", "add", "--cron", "0 9 * * MON", "--tz", "Asia/Shanghai",
                         "--", "broadcast", "--app", "new", "--content", '{"k": 1}')
    assert result.exit_code == 0 and "schedule 2: broadcast on new" in output, output
    result, output = run("schedule", "list")
    assert "cron '0 9 * * MON' in Asia/Shanghai" in output and "active" in output
    result, output = run("schedule", "show", "1")
    assert f"recipients from {env / 'to.txt'}" in output and '{"text": "Merry"}' in output
    for command, done in (("pause", "paused"), ("resume", "resumed"), ("remove", "removed")):
        result, output = run("schedule", command, "2")
        assert result.exit_code == 0 and f"schedule 2 {done}" in output, output
    result, output = run("schedule", "resume", "2")
    assert result.exit_code == 2 and "schedule 2 is removed; cannot make it active" in output
    result, output = run("schedule", "history", "1")
    assert result.exit_code == 0 and "fires of schedule 1" in output


def test_local_time_takes_a_cron_read_on_each_recipients_clock(env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    (env / "to.csv").write_text("user_id,tz\nli,Asia/Shanghai\nbob,America/New_York\nx,\n")
    send = ("--", "send", "--app", "new", "--sender", "boss", "--to", "to.csv", "--text", "早")
    result, output = run("schedule", "add", "--cron", "0 9 * * MON", "--local-time", *send)
    assert result.exit_code == 0, output
    assert ("schedule 1: send on new, cron '0 9 * * MON' on each recipient's clock (3 zones; "
            "1 rows without a known zone use UTC)") in output
    result, output = run("schedule", "add", "--local-time", *send)
    assert result.exit_code == 2 and "--local-time needs --at" in output and "or --cron" in output
    result, output = run("schedule", "add", "--at", "09:00", "--cron", "0 9 * * *", "--local-time",
                         *send)
    assert result.exit_code == 2 and "one of --at or --cron" in output, output


def test_add_refuses_with_one_line_and_schedules_nothing(env):
    cases = [
        (["--at", "2099-01-01 09:00", "--", "send", "--app", "new", "--sender", "b", "--to",
          "nope.txt", "--text", "x"], "nope.txt: no such file"),
        (["--at", "tomorrow", "--", "broadcast", "--app", "new", "--text", "x"],
         "is not an ISO 8601 time"),
        (["--cron", "0 9 * *", "--", "broadcast", "--app", "new", "--text", "x"],
         "not a cron expression of five fields"),
        (["--at", "2099-01-01 09:00", "--", "broadcast", "--app", "nope", "--text", "x"],
         "no vendor app named 'nope'"),
        (["--at", "2099-01-01 09:00", "--", "broadcast", "--app", "new", "--txt", "x"],
         "broadcast: No such option: --txt"),
        (["--at", "2099-01-01 09:00", "--", "migrate", "users"], "after `--` give the command"),
        (["--at", "2099-01-01 09:00", "--", "broadcast", "--app", "new"],
         "exactly one of --text or --content"),
    ]
    for args, message in cases:
        result, output = run("schedule", "add", *args)
        assert result.exit_code == 2 and message in output, (args, output)
        assert "Traceback" not in output
    result, output = run("schedule", "list")
    assert "broadcast" not in output and "send" not in output


def test_rongcloud_broadcasts_over_the_cap_are_refused_at_add(env, monkeypatch):
    from datetime import datetime, timedelta, timezone

    monkeypatch.setenv("IMSHIFT_APPS__RC__VENDOR", "rongcloud")
    monkeypatch.setenv("IMSHIFT_APPS__RC__SANDBOX", "true")
    broadcast = ("--", "broadcast", "--app", "rc", "--sender", "boss", "--text", "x")
    # Three fires in one hour, three a day: over the hourly cap only, whatever the time now.
    result = runner.invoke(app, ["schedule", "add", "--cron", "0,1,2 9 * * *", "--tz", "UTC",
                                 *broadcast])
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if "allows" in line]
    assert "RongCloud (app rc) allows 2 broadcasts an hour and this schedule would make more" in line
    assert "Nothing was scheduled" in result.output
    result, output = run("schedule", "add", "--cron", "0 9,15 * * *", "--tz", "UTC", *broadcast)
    assert result.exit_code == 0 and "schedule 1: broadcast on rc" in output, output  # 2 a day
    # A one-off broadcast counts with the daily ones: a third on a day fits, a fourth does not.
    day = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%d")
    result, output = run("schedule", "add", "--at", f"{day} 20:00", "--tz", "UTC", *broadcast)
    assert result.exit_code == 0 and "schedule 2: broadcast on rc" in output, output
    result, output = run("schedule", "add", "--at", f"{day} 21:00", "--tz", "UTC", *broadcast)
    assert result.exit_code == 2, output
    assert (f"RongCloud (app rc) allows 3 broadcasts a day and this schedule with the app's other "
            f"broadcast schedules (1, 2) would make more in the day from {day} 00:00 UTC") in output
    result, output = run("schedule", "list")
    assert "21:00" not in output
