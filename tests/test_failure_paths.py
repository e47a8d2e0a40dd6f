"""Commands that cannot do what was asked end in one line naming the cause
and the next command, an exit code a script can act on, and no job that
runs later. Real SQLite, a private Redis, the sandboxes in-process."""

import csv
import json
import re
import time

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from typer.testing import CliRunner

from imshift import __version__
from imshift.cli import app
from imshift.jobs.progress import progress
from imshift.models import make_engine
from imshift.settings import Settings
from imshift.context import Context
from imshift.workers.sweeper import sweep

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def error_lines(result) -> list[str]:
    """What the command printed on stderr, but for the note on tokens not kept
    (these tests run without IMSHIFT_TOKEN_KEY)."""
    return [line for line in result.stderr.splitlines()
            if line.strip() and not line.startswith("note: IMSHIFT_TOKEN_KEY is not set")]


def jobs(tmp_path) -> list[tuple[int, str]]:
    engine = make_engine(f"sqlite:///{tmp_path}/imshift.db")
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("select id, status from jobs order by id"))]


def users_csv(tmp_path, *ids) -> str:
    path = tmp_path / "users.csv"
    path.write_text("user_id,name\n" + "".join(f"{i},N {i}\n" for i in ids), encoding="utf-8")
    return str(path)


# -- settings are checked before any job exists -------------------------------------------


def test_a_typo_in_an_app_field_creates_no_job_and_starts_none(env, monkeypatch):
    path = users_csv(env, "alice", "bob")
    result, _ = run("migrate", "users", "--from", "new", "--to", "new", "--input", path, "--dry-run")
    assert result.exit_code == 0 and jobs(env) == [(1, "planned")]
    monkeypatch.setenv("IMSHIFT_APPS__NEW__APP_SECRT", "s3cret-typo")
    for command in (["migrate", "users", "--from", "new", "--to", "new", "--input", path],
                    ["start", "1"], ["resume", "1"], ["retry", "1"]):
        result, output = run(*command)
        assert result.exit_code == 2, (command, output)
        assert error_lines(result) == [
            "error: configuration: apps.new.app_secrt (environment variable IMSHIFT_APPS__NEW__APP_SECRT) "
            "is not a setting of a NetEase Yunxin app: choose from app_key, app_secret, region, "
            "base_url, team_invite_msg, broadcast_offline, concurrency, vendor, rates, caps, "
            "group_size, sandbox"], command
        assert "s3cret-typo" not in result.output
    assert jobs(env) == [(1, "planned")]  # nothing created, nothing started


def test_redis_without_a_shared_database_is_refused(env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("IMSHIFT_DATABASE_URL")  # the default: imshift.db in this folder
    path = users_csv(env, "alice")
    for command in (["migrate", "users", "--from", "new", "--to", "new", "--input", path],
                    ["status"], ["worker"]):
        result, output = run(*command)
        assert result.exit_code == 2, output
        [line] = error_lines(result)
        assert "REDIS_URL is set" in line and "SQLite file 'imshift.db' in the current folder" in line
        assert "PostgreSQL" in line
    assert not (env / "imshift.db").exists()


# -- Redis down or failing: nothing is left to run later ----------------------------------


@pytest.fixture
def redis_env(env, monkeypatch, redis_server):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server


def test_redis_down_refuses_before_anything_is_queued(env, redis_env):
    path = users_csv(env, "alice", "bob")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", path,
                         "--dry-run")
    assert result.exit_code == 0, output
    redis_env.kill()
    for command in (["migrate", "users", "--from", "new", "--to", "new", "--input", path, "--detach"],
                    ["start", "1", "--detach"]):
        result, output = run(*command)
        assert result.exit_code == 1, output
        [line] = error_lines(result)
        assert f"Redis at 127.0.0.1:{redis_env.port} (REDIS_URL) does not answer" in line
        assert "Nothing was queued" in line
    assert jobs(env) == [(1, "planned")]


def test_a_redis_that_fails_while_queuing_leaves_the_job_paused(env, monkeypatch, tmp_path):
    from testsupport import RedisServer

    with RedisServer(extra_args=["--maxmemory", "1"]) as full:  # answers PING, refuses writes
        monkeypatch.setenv("REDIS_URL", full.url)
        path = users_csv(env, "alice", "bob")
        result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", path,
                             "--detach")
        assert result.exit_code == 1, output
        [line] = error_lines(result)
        assert line.startswith("error: could not queue job 1: Redis said")
        assert "it is paused, so nothing runs it" in line and "imshift resume 1" in line
        assert jobs(env) == [(1, "paused")]
        # A worker's sweeper re-sends only running jobs: this one stays put.
        ctx = Context(Settings())
        assert sweep(ctx.runtime, now=time.time() + 3600) == 0
        assert progress(ctx.engine, 1).counts == {"pending": 2}


# -- exit codes, --json, --version, --outcome ---------------------------------------------


def test_exit_codes_tell_success_from_failures(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", Fernet.generate_key().decode())
    path = users_csv(env, "alice")
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input", path)
    assert result.exit_code == 0, output
    ids = env / "ids.txt"
    ids.write_text("alice\nghost\n")
    result, output = run("tokens", "refresh", "--vendor", "new", "--input", str(ids))
    assert "ok=0" not in output and "rejected=2" in output  # a fresh sandbox per command
    assert result.exit_code == 3, output
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input",
                         users_csv(env, "bad id", "also bad"))
    assert "rejected=2" in output and result.exit_code == 3, output  # no row was valid


def test_status_json_lists_jobs_with_ids_statuses_and_counts(env):
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a", "b c"))
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "d"), "--dry-run")
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)["jobs"]
    assert [(j["id"], j["status"], j["counts"], j["total"], j["done"]) for j in listed] == [
        (2, "planned", {"pending": 1}, 1, 0), (1, "finished", {"ok": 1, "rejected": 1}, 2, 2)]
    result = runner.invoke(app, ["status", "1", "--json"])
    assert [j["id"] for j in json.loads(result.stdout)["jobs"]] == [1]
    result, output = run("status", "1", "--json", "--watch")
    assert result.exit_code == 2 and "does not go with --watch" in output


def test_version_and_a_mistyped_outcome(env):
    result, output = run("--version")
    assert result.exit_code == 0 and output == f"imshift {__version__}"
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a"))
    result, output = run("results", "1", "--outcome", "rejectd")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "--outcome 'rejectd' is not an item state: choose one of pending" in line


# -- status tells what happened -----------------------------------------------------------


def test_a_cancelled_job_does_not_read_as_done(env):
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a", "b"),
        "--dry-run")
    result, _ = run("cancel", "1")
    assert result.exit_code == 0
    result, output = run("status", "1")
    assert "cancelled, 0/2 items done, 2 cancelled" in output, output
    result, output = run("status")
    assert "0/2" in output


def test_a_stalled_job_shows_no_invented_rate(env, monkeypatch):
    from imshift.jobs import control

    monkeypatch.setenv("IMSHIFT_STALE_AFTER", "0.2")
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a", "b"),
        "--dry-run")
    ctx = Context(Settings())
    control.start(ctx.engine, ctx.broker, 1)  # queued in this process's broker; nothing runs it
    time.sleep(0.5)
    result, output = run("status", "1")
    assert result.exit_code == 0, output
    # 0.5 s and the command's own time: whole seconds, 0 or (on a loaded machine) more.
    assert re.search(r"no progress for 0m0\ds: nothing runs it now: `imshift resume 1` carries it on",
                     output), output
    assert "ETA" not in output and "items/s" not in output


def test_resume_on_a_finished_job_points_at_retry(env):
    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a", "b c"))
    result, output = run("resume", "1")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line == ("error: job 1 is finished: `imshift retry 1` runs its rejected and failed "
                    "items again (--unknown: also the unknown sends)")


# -- tokens and the token key -------------------------------------------------------------


def exported_tokens(tmp_path) -> list[str]:
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        return [r["token"] for r in csv.DictReader(f)]


def test_token_key_problems_are_one_line_each(env, monkeypatch):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", key)
    result, output = run("migrate", "users", "--from", "new", "--to", "new", "--input",
                         users_csv(env, "alice", "bob"))
    assert result.exit_code == 0, output
    out = ["results", "1", "--format", "csv", "-o", str(env / "out.csv")]
    result, _ = run(*out)
    assert result.exit_code == 0 and all(exported_tokens(env))

    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", Fernet.generate_key().decode())  # another key
    (env / "out.csv").unlink()
    result, _ = run(*out)
    assert result.exit_code == 2
    assert error_lines(result) == ["error: IMSHIFT_TOKEN_KEY does not open the tokens of job 1: "
                                   "they were stored with another key; set that one (nothing was "
                                   "written)"]
    assert not (env / "out.csv").exists()

    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", key[:-3])  # malformed
    result, _ = run(*out)
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "IMSHIFT_TOKEN_KEY is not a valid key" in line and key[:-3] not in result.output

    monkeypatch.delenv("IMSHIFT_TOKEN_KEY")
    result, _ = run(*out)
    assert result.exit_code == 0
    [line] = error_lines(result)
    assert line.startswith("warning: job 1 holds encrypted tokens or passwords and "
                           "IMSHIFT_TOKEN_KEY is not set: their columns are empty")
    assert exported_tokens(env) == ["", ""]


def test_a_migration_whose_register_returns_passwords_needs_the_key(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_APPS__MX__VENDOR", "maxim")
    monkeypatch.setenv("IMSHIFT_APPS__MX__SANDBOX", "true")
    path = users_csv(env, "alice")
    for extra in ([], ["--dry-run"]):
        result, output = run("migrate", "users", "--from", "new", "--to", "mx", "--input", path, *extra)
        assert result.exit_code == 2, output
        [line] = error_lines(result)
        assert "registering at 'mx' returns each account's password" in line
        assert "IMSHIFT_TOKEN_KEY is not set: run `imshift keygen`" in line
    assert jobs(env) == []
    monkeypatch.setenv("IMSHIFT_TOKEN_KEY", Fernet.generate_key().decode())
    result, output = run("migrate", "users", "--from", "new", "--to", "mx", "--input", path)
    assert result.exit_code == 0, output


def test_a_database_that_does_not_answer_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from testsupport import free_port

    env = {**os.environ, "IMSHIFT_CONFIG": str(tmp_path / "none.toml"),
           "IMSHIFT_DATABASE_URL": f"postgresql://imshift:pw-never-shown@127.0.0.1:{free_port()}/x"}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-m", "imshift.cli", "status"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: the database failed: connection failed") and "Fix it" in line
    assert "pw-never-shown" not in result.stderr + result.stdout


def test_an_export_that_cannot_be_written_is_one_line(env):
    import os
    import subprocess
    import sys

    run("migrate", "users", "--from", "new", "--to", "new", "--input", users_csv(env, "a"))
    result = subprocess.run([sys.executable, "-m", "imshift.cli", "results", "1", "--format", "csv",
                             "-o", str(env / "missing" / "out.csv")], env=dict(os.environ),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: No such file or directory") and "missing/out.csv" in line
