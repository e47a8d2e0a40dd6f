"""`imshift send --to-groups` and `imshift broadcast` as a user types them."""

from typer.testing import CliRunner

from imshift.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def test_send_takes_recipients_or_groups_not_both(env):
    (env / "to.txt").write_text("alice\n")
    (env / "groups.txt").write_text("g1\n")
    result, output = run("send", "--app", "new", "--sender", "a", "--text", "hi")
    assert result.exit_code == 2 and "exactly one of --to (recipients) or --to-groups" in output
    result, output = run("send", "--app", "new", "--sender", "a", "--text", "hi", "--to", "to.txt",
                         "--to-groups", "groups.txt")
    assert result.exit_code == 2 and "exactly one of --to" in output


def test_a_group_send_dry_run_counts_groups(env):
    (env / "groups.csv").write_text("group_id,name\n1001,a\n1002,b\n1001,again\n")
    result, output = run("send", "--app", "new", "--sender", "a", "--text", "hi",
                         "--to-groups", "groups.csv", "--dry-run")
    assert result.exit_code == 0, output
    assert "3 rows read" in output and "2 to send, 0 invalid, 1 duplicate" in output


def test_broadcast_runs_one_call_to_the_end(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_APPS__NEW__RATES", '{"broadcast": 5}')
    result, output = run("broadcast", "--app", "new", "--text", "hello all")
    assert result.exit_code == 0, output
    assert "1 rows read" in output and "finished, 1/1 items done" in output and "ok=1" in output
    result, output = run("broadcast", "--app", "new")
    assert result.exit_code == 2 and "exactly one of --text or --content" in output
