"""The edges a script touches: every documented `--format` and `--json`
output parses, on a job and on a run; exports keep machine values exact;
exit codes follow one rule."""

import csv
import io
import json

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
