"""Sends and broadcasts at their edges (issue 21): what a vendor needs is
refused before a job exists (item 7)."""

import sqlite3

from typer.testing import CliRunner

from imshift.cli import app
from imshift.vendors.registry import VENDORS
from imshift.vendors.vocabulary import Operation

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def count(env, table):
    with sqlite3.connect(env / "imshift.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_broadcast_without_the_sender_its_vendor_needs_is_refused_before_a_job_exists(env):
    result, output = run("broadcast", "--app", "sandbox-maxim", "--text", "hello all")
    assert result.exit_code == 2, output
    assert "error: Maxim (app sandbox-maxim): broadcast needs --sender. Nothing was created." in output
    assert count(env, "jobs") == 0

    result, output = run("schedule", "add", "--at", "2099-01-01T09:00", "--", "broadcast",
                         "--app", "sandbox-rongcloud", "--text", "hi")
    assert result.exit_code == 2, output
    assert "RongCloud (app sandbox-rongcloud): broadcast needs --sender" in output
    assert count(env, "schedules") == 0

    # NetEase's broadcastMsg takes no sender: it goes on without one.
    result, output = run("broadcast", "--app", "new", "--text", "hello all", "--dry-run")
    assert result.exit_code == 0, output


def test_the_broadcast_help_names_the_vendors_whose_rules_need_a_sender(env):
    result, output = run("broadcast", "--help")
    sender = output[output.index("--sender"):output.index("--text")]
    for v in VENDORS.values():
        needed = "sender" in v.client.rules.needs.get(Operation.BROADCAST, ())
        assert (v.title in sender) == needed, (v.title, sender)
    assert "Maxim" in sender and "NetEase" not in sender
