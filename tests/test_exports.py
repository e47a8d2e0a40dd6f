"""Exports: machine values (ids, tokens, passwords) are exact; a free-text
CSV cell a spreadsheet would run is defused; JSON Lines keep every value as
written."""

import csv
import json

import pytest
from typer.testing import CliRunner

from imshift.cli import app
from imshift.jobs.exports import csv_record, spreadsheet_safe

runner = CliRunner()


@pytest.mark.parametrize("value, cell", [
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"), ("+1", "'+1"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("a=1", "a=1"), (" =1", " =1"), ("", ""), (None, None), (7, 7),
])
def test_only_cells_a_spreadsheet_would_run_get_a_quote(value, cell):
    assert spreadsheet_safe(value) == cell


def test_only_free_text_columns_are_defused():
    assert csv_record({"id": "-x", "token": "=t", "password": "+p", "message": "=1+2"}) == \
        {"id": "-x", "token": "=t", "password": "+p", "message": "'=1+2"}


def test_a_csv_export_keeps_ids_exact_and_jsonl_keeps_the_values(env):
    users = env / "users.csv"
    users.write_text("accid,name\n@home,Home\n-dash,Dash\n\"=cmd|' /C calc'!A0\",Evil\nplain,Plain\n",
                     encoding="utf-8")
    result = runner.invoke(app, ["migrate", "users", "--from", "new", "--to", "new", "--input", str(users)])
    assert result.exit_code in (0, 3), result.output  # one row is rejected
    result = runner.invoke(app, ["results", "1", "--format", "csv", "--output", str(env / "out.csv")])
    assert result.exit_code == 0, result.output
    with open(env / "out.csv", encoding="utf-8", newline="") as f:
        exported = list(csv.DictReader(f))
    assert [r["id"] for r in exported] == ["@home", "-dash", "=cmd|' /C calc'!A0", "plain"]
    assert [r["outcome"] for r in exported] == ["ok", "ok", "rejected", "ok"]
    assert not any(r["message"].startswith(("=", "+", "-", "@", "\t", "\r")) for r in exported)
    result = runner.invoke(app, ["results", "1", "--format", "jsonl"])
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in lines] == ["@home", "-dash", "=cmd|' /C calc'!A0", "plain"]
