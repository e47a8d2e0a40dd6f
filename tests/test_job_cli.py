"""The job commands as a user types them, on embedded defaults."""

import csv
import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from imshift.cli import app
from imshift.models import make_engine

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def job_count(tmp_path) -> int:
    engine = make_engine(f"sqlite:///{tmp_path}/imshift.db")
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from jobs")).scalar_one()


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("content, message", [
    (b"user_id,name\nu1,Ann\nu2,\xff\xfeBob\n", "line 3 is not UTF-8 (bytes ff fe"),
    (b"id_of_user,name\nu1,Ann\n", "no id column: expected one of user_id"),
    (b"user_id,name\nu1," + b"x" * (10 << 20) + b"\n", "line 2 is longer than 1 MiB"),
    (b"", "the file is empty"),
])
def test_a_malformed_file_gets_one_clear_error_and_creates_nothing(env, content, message):
    path = write(env / "users.csv", content)
    result, output = run("migrate", "users", "--from", "sandbox-rongcloud", "--to", "new",
                         "--input", path)
    assert result.exit_code == 2
    assert message in output and "Nothing was created" in output
    assert job_count(env) == 0


def test_a_missing_file_and_an_unknown_app_are_named(env):
    result, output = run("migrate", "users", "--from", "old", "--to", "new", "--input", "nope.csv")
    assert result.exit_code == 2 and "no vendor app named 'old'" in output
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", "nope.csv")
    assert result.exit_code == 2 and "nope.csv: no such file" in output


def test_dry_run_then_start_then_results(env):
    rows = ["user_id,name,gender,favourite_colour", "alice,Alice,1,blue", "bob,Bób,2,red",
            "bad id,Carol,1,green", "alice,Alice again,1,blue"]
    path = write(env / "users.csv", ("\n".join(rows) + "\n").encode())
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", path,
                         "--dry-run")
    assert result.exit_code == 0, output
    assert "4 rows read" in output and "2 to send, 1 invalid, 1 duplicate" in output
    assert "ignored): favourite_colour" in output
    assert "estimated run time at 100 calls/s" in output
    assert "Start it with `imshift start 1`" in output
    result, output = run("start", "1")
    assert result.exit_code == 3, output  # two rows were refused at planning
    assert "finished, 4/4 items done" in output and "ok=2 rejected=2" in output
    result, output = run("results", "1", "--format", "csv", "--output", str(env / "out.csv"))
    assert result.exit_code == 0, output
    with open(env / "out.csv", encoding="utf-8") as f:
        exported = list(csv.DictReader(f))
    assert [(r["row"], r["id"], r["outcome"]) for r in exported] == [
        ("2", "alice", "ok"), ("3", "bob", "ok"), ("4", "bad id", "rejected"),
        ("5", "alice#row5", "rejected")]
    assert exported[3]["message"] == "duplicate of row 2 (same id 'alice')"
    result, _ = run("results", "1", "--outcome", "rejected", "--format", "jsonl")
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["id"], r["code"]) for r in lines] == [("bad id", "invalid"), ("alice#row5", "duplicate")]
    result, output = run("results", "1", "--outcome", "rejected")
    assert result.exit_code == 0 and "job 1, rejected" in output
    result, output = run("status")
    assert "finished" in output and "4/4" in output


def test_send_needs_exactly_one_kind_of_content(env):
    to = write(env / "to.txt", b"alice\n")
    result, output = run("send", "--vendor", "new", "--sender", "a", "--to", to)
    assert result.exit_code == 2 and "exactly one of --text or --content" in output
    result, output = run("send", "--vendor", "new", "--sender", "a", "--to", to, "--content", "[1]")
    assert result.exit_code == 2 and "must be a JSON object" in output


def test_token_refresh_refuses_to_run_without_a_key(env, monkeypatch):
    monkeypatch.delenv("IMSHIFT_TOKEN_KEY", raising=False)
    ids = write(env / "ids.txt", b"alice\n")
    result, output = run("tokens", "refresh", "--vendor", "new", "--input", ids)
    assert result.exit_code == 2 and "IMSHIFT_TOKEN_KEY is not set" in output
    assert job_count(env) == 0


def test_steering_an_unknown_job_is_a_clear_error(env):
    for command in ("pause", "resume", "cancel", "retry", "start"):
        result, output = run(command, "42")
        assert result.exit_code == 2 and "no job 42" in output, command


def test_status_shows_first_problems_only_when_there_are_some(env):
    """`status JOB` and `status R<n>` without --watch: a job with a rejected
    row shows it with its reason; a clean one and a clean run show no
    problems table, empty or not."""
    good = write(env / "good.csv", b"user_id,name\nu1,Ann\nu2,Bob\n")
    bad = write(env / "bad.csv", b"user_id,name\nu3,Cy\nbad id,Dee\n")
    for path in (good, bad):
        result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", path)
        assert result.exit_code in (0, 3), output
    result, output = run("status", "1")
    assert result.exit_code == 0 and "finished, 2/2 items done" in output, output
    assert "problems" not in output and "reason" not in output and "did not make it" not in output
    result, output = run("status", "2")
    assert "first problems (all: imshift results 2 --outcome rejected)" in output, output
    assert "bad id" in output and "'bad id' is not allowed" in output  # the row and its reason

    for path in (good, bad):
        result, output = run("migrate", "run", "--from", "new", "--to", "new", "--users", path)
        assert result.exit_code in (0, 3), output
    result, output = run("status", "R1")
    assert "run R1: new -> new, finished" in output, output
    assert "problems" not in output and "did not make it" not in output
    result, output = run("status", "R2")
    assert "what did not make it: `imshift results R2 --stage accounts --outcome rejected`" in output
