"""The edges a script touches: every documented `--format` and `--json`
output parses, on a job and on a run; exports keep machine values exact;
exit codes follow one rule."""

import csv
import io
import json
import re

import pytest
from typer.testing import CliRunner

from imshift.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def migrated_job_and_run(env):
    """Job 1 (migrate users, one row refused at planning) and run R1 (accounts and friends)."""
    (env / "users.csv").write_text("user_id,name\nalice,Alice\nbob,Bob\nbad id,Carol\n", encoding="utf-8")
    (env / "friends.csv").write_text("user_id,friend_id\nalice,bob\n", encoding="utf-8")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", str(env / "users.csv"))
    assert result.exit_code in (0, 3), output
    result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users",
                         str(env / "users.csv"), "--friends", str(env / "friends.csv"))
    assert result.exit_code in (0, 3), output


def test_every_format_and_json_output_parses_on_a_job_and_a_run(env):
    migrated_job_and_run(env)
    for ref in ("1", "R1"):
        for fmt in ("csv", "jsonl"):
            out = env / f"out-{ref}.{fmt}"
            result, output = run("results", ref, "--format", fmt, "--output", str(out))
            assert result.exit_code == 0, (ref, fmt, output)
            text = out.read_text(encoding="utf-8")
            result, _ = run("results", ref, "--format", fmt)
            assert result.exit_code == 0 and result.output == text, (ref, fmt)
            if fmt == "csv":
                rows = list(csv.DictReader(io.StringIO(text)))
            else:
                rows = [json.loads(line) for line in text.splitlines()]
            assert {r["id"] for r in rows} >= {"alice", "bob"}, (ref, fmt, rows)
            if ref == "R1":
                assert {r["stage"] for r in rows} == {"accounts", "friends"}
    for fmt in ("csv", "jsonl"):
        result, _ = run("idmap", "R1", "--format", fmt)
        assert result.exit_code == 0, result.output
        rows = (list(csv.DictReader(io.StringIO(result.output))) if fmt == "csv"
                else [json.loads(line) for line in result.output.splitlines()])
        assert {r["source_id"] for r in rows} == {"alice", "bob"}
    for args in (["status", "--json"], ["status", "1", "--json"], ["status", "R1", "--json"]):
        result, _ = run(*args)
        assert result.exit_code == 0, result.output
        json.loads(result.output)
    listed = json.loads(run("status", "--json")[0].output)
    assert [r["id"] for r in listed["runs"]] == ["R1"]  # runs beside the jobs
    assert [s["stage"] for s in listed["runs"][0]["stages"]] == ["accounts", "friends"]
    (env / "to.txt").write_text("alice\n", encoding="utf-8")
    result, output = run("schedule", "add", "--at", "2099-01-01T09:00", "--", "send", "--app", "new",
                         "--sender", "alice", "--to", str(env / "to.txt"), "--text", "hi")
    assert result.exit_code == 0, output
    result, _ = run("schedule", "list", "--json")
    assert [(s["id"], s["command"], s["message"]) for s in json.loads(result.output)["schedules"]] \
        == [(1, "send", {"text": "hi"})]
    result, _ = run("schedule", "show", "1", "--json")
    assert json.loads(result.output)["next_fire"].startswith("2099-01-01 09:00")
    result, _ = run("schedule", "history", "1", "--json")
    assert json.loads(result.output) == {"fires": []}


def test_tokens_passwords_and_ids_round_trip_exactly_through_a_csv_export(env, monkeypatch):
    """A secret or id that starts like a formula is a machine value: the CSV
    keeps it exact; only free text (the message column) is defused."""
    from cryptography.fernet import Fernet
    from sqlalchemy import select, update

    from imshift.models import make_engine
    from imshift.models.tables import Item

    key = Fernet.generate_key()
    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", key.decode())
    starts = ["-", "=", "+", "@"]
    (env / "users.csv").write_text("accid,name\n" + "".join(f"{c}u{n},N{n}\n" for n, c in enumerate(starts))
                                   + "=bad id,Evil\n", encoding="utf-8")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", str(env / "users.csv"))
    assert result.exit_code in (0, 3), output
    items = Item.__table__
    engine = make_engine(f"sqlite:///{env}/imshift.db")
    secrets = {}
    with engine.begin() as conn:  # the secrets a vendor could hand out (base64, url-safe, ...)
        for seq, key_ in conn.execute(select(items.c.seq, items.c.key).where(items.c.job_id == 1)):
            c = starts[seq % len(starts)]
            secrets[key_] = {"token": f"{c}tok/{seq}==", "password": f"{c}pw_{seq}"}
            conn.execute(update(items).where(items.c.job_id == 1, items.c.seq == seq).values(
                secret=Fernet(key).encrypt(json.dumps(secrets[key_]).encode())))
    engine.dispose()
    result, output = run("results", "1", "--format", "csv", "--output", str(env / "out.csv"))
    assert result.exit_code == 0, output
    with open(env / "out.csv", encoding="utf-8", newline="") as f:
        exported = list(csv.DictReader(f))
    assert [r["id"] for r in exported] == ["-u0", "=u1", "+u2", "@u3", "=bad id"]
    for r in exported:
        assert {"token": r["token"], "password": r["password"]} == secrets[r["id"]]
    rejected = exported[-1]
    assert rejected["outcome"] == "rejected" and rejected["message"]
    assert not rejected["message"].startswith(("=", "+", "-", "@"))


def test_one_exit_code_rule_for_jobs_and_runs(env):
    """0 only when every input row ended ok or exists, 3 otherwise, for a job
    and for a run alike; --help says so."""
    (env / "good.csv").write_text("user_id,name\nalice,Alice\nbob,Bob\n", encoding="utf-8")
    (env / "bad.csv").write_text("user_id,name\ncarol,Carol\nbad id,Bad\n", encoding="utf-8")
    for command in (("migrate", "users", "--input"), ("migrate", "run", "--users")):
        result, output = run(*command[:2], "--from", "new", "--to", "new", command[2], str(env / "good.csv"))
        assert result.exit_code == 0, (command, output)
        result, output = run(*command[:2], "--from", "new", "--to", "new", command[2], str(env / "bad.csv"))
        assert result.exit_code == 3, (command, output)  # a row refused at planning
    result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users",
                         str(env / "bad.csv"), "--dry-run")
    assert result.exit_code == 0, output
    result, output = run("start", "R3")
    assert result.exit_code == 3, output
    result, output = run("--help")
    assert "0 it finished and every input row ended ok or exists" in output


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_an_embedded_start_stopped_by_a_signal_pauses_its_job(env, signame):
    """SIGTERM (a service manager) or SIGHUP (a closed terminal) ends an
    embedded run as Ctrl-C does: the job paused, one line, resumable."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from imshift.jobs.progress import progress
    from imshift.models import make_engine

    (env / "users.csv").write_text("user_id,name\n" + "".join(f"u{i},U{i}\n" for i in range(40)),
                                   encoding="utf-8")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input",
                         str(env / "users.csv"), "--dry-run")
    assert result.exit_code == 0, output
    command = subprocess.Popen([sys.executable, "-m", "imshift.cli", "start", "1"],
                               env={**os.environ, "IMSHIFT_APPS__NEW__RATES": '{"register": 5}'},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = make_engine(f"sqlite:///{env}/imshift.db")
    try:
        deadline = time.monotonic() + 30
        while True:
            p = progress(engine, 1)
            if p.status == "running" and p.completed >= 2:
                break
            assert time.monotonic() < deadline and command.poll() is None, command.communicate()
            time.sleep(0.1)
        command.send_signal(getattr(signal, signame))
        out, err = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    sig = getattr(signal, signame)
    assert command.returncode == 128 + sig, (out, err)
    assert "Traceback" not in out + err
    assert "Paused job 1; `imshift resume 1` continues it." in " ".join(out.split())
    p = progress(engine, 1)
    assert p.status == "paused" and p.completed < 40
    engine.dispose()
    result, output = run("resume", "1")
    assert result.exit_code == 0 and "finished, 40/40 items done" in output, output


def test_h_is_help_everywhere(env):
    for args in (["-h"], ["migrate", "-h"], ["migrate", "run", "-h"], ["status", "-h"],
                 ["schedule", "add", "-h"], ["schedule", "history", "-h"], ["results", "-h"]):
        result, output = run(*args)
        assert result.exit_code == 0 and "Usage: " in output, (args, output)


def test_progress_into_a_pipe_is_a_line_every_few_seconds(env):
    """Not a terminal: plain lines while the job runs, not one bar at the end."""
    import os
    import subprocess
    import sys

    (env / "users.csv").write_text("user_id,name\n" + "".join(f"u{i},U{i}\n" for i in range(40)),
                                   encoding="utf-8")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input",
                         str(env / "users.csv"), "--dry-run")
    assert result.exit_code == 0, output
    command = subprocess.Popen([sys.executable, "-m", "imshift.cli", "start", "1"],
                               env={**os.environ, "IMSHIFT_APPS__NEW__RATES": '{"register": 6}'},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []  # (line, the command still running when it arrived)
    try:
        for line in command.stdout:
            seen.append((line.strip(), command.poll() is None))
    finally:
        command.wait(30)
    assert command.returncode == 0, seen
    live = [line for line, running in seen if running and line.startswith("job 1: ")]
    assert len(live) >= 2, seen  # one at the start, more every few seconds
    assert any(line.startswith("job 1: 40/40 ") for line, _ in seen), seen


def test_a_delta_runs_friend_calls_count_only_the_pairs_it_sends(env):
    (env / "users.csv").write_text("user_id,name\n" + "".join(f"u{i},U{i}\n" for i in range(12)),
                                   encoding="utf-8")
    pairs = [f"u{i},u{i + 1}\n" for i in range(10)]
    (env / "f1.csv").write_text("user_id,friend_id\n" + "".join(pairs), encoding="utf-8")
    (env / "f2.csv").write_text("user_id,friend_id\n" + "".join(pairs) + "u0,u11\nu11,u5\n",
                                encoding="utf-8")
    result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users",
                         str(env / "users.csv"), "--friends", str(env / "f1.csv"))
    assert result.exit_code == 0, output
    result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users",
                         str(env / "users.csv"), "--friends", str(env / "f2.csv"), "--since", "R1",
                         "--dry-run")
    assert result.exit_code == 0, output
    # stage, job, items, to send, rejected, done before, vendor calls (one pair a NetEase call)
    assert re.search(r"│ friends │ \d+ │ 12 │ 2 │ 0 │ 10 │ 2 │", output), output


def test_cancel_says_how_many_items_ended_cancelled_and_how_many_unknown(env):
    from sqlalchemy import text

    from imshift.models import make_engine

    (env / "to.txt").write_text("".join(f"u{i}\n" for i in range(40)), encoding="utf-8")
    result, output = run("send", "--app", "new", "--sender", "admin", "--to", str(env / "to.txt"),
                         "--text", "hi", "--dry-run")
    assert result.exit_code == 0, output
    engine = make_engine(f"sqlite:///{env}/imshift.db")
    with engine.begin() as conn:  # as a killed worker leaves it: one send let go, never recorded
        conn.execute(text("UPDATE items SET state = 'claimed', sent_at = 1 WHERE job_id = 1 AND seq = 0"))
        conn.execute(text("UPDATE job_counts SET n = n - 1 WHERE job_id = 1 AND state = 'pending'"))
        conn.execute(text("INSERT INTO job_counts (job_id, state, n) VALUES (1, 'claimed', 1)"))
    engine.dispose()
    result, output = run("cancel", "1")
    assert result.exit_code == 0, output
    assert "job 1 cancelled: 39 items cancelled, 1 unknown" in output, output
    listed = json.loads(run("status", "1", "--json")[0].output)["jobs"][0]["counts"]
    assert listed == {"cancelled": 39, "unknown": 1}
    (env / "users.csv").write_text("user_id,name\nalice,Alice\nbob,Bob\nbad id,X\n", encoding="utf-8")
    result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users",
                         str(env / "users.csv"), "--dry-run")
    assert result.exit_code == 0, output
    result, output = run("cancel", "R1")
    assert "run R1 cancelled: 2 items cancelled" in output, output  # the refused row was never open
