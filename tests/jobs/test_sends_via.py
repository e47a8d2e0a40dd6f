"""Sends after a migration (issue 21 item 8): `--via R<n>` maps the
sender's, the recipients' and the groups' ids through the run's id map,
into a target that gave its own group ids (NetEase's tid); an id not in
the map is refused at planning, naming it. Both sandboxes over HTTP, the
commands as a user types them."""

import sqlite3
import subprocess
import sys

import pytest

from bridge_support import bridged


def imshift(env, *args):
    done = subprocess.run([sys.executable, "-m", "imshift.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def items(db, job):
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, state || ' ' || coalesce(message, '') FROM items "
                                 "WHERE job_id = ?", (job,)).fetchall())


def fire_unstarted(env, schedule_id):
    """Fire the schedule as a scheduler would, on a fake clock, its job planned, not started."""
    from imshift.context import Context
    from imshift.jobs import schedules

    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        ctx = Context()
        due = schedules.get(ctx.engine, schedule_id).next_at
        firing = schedules.Firing(ctx.engine, ctx.target, lambda job_id: None, ctx.settings.chunk_size)
        (fired,) = schedules.fire_due(firing, due + 1)
        ctx.engine.dispose()
    return fired


def test_sends_through_a_runs_id_map_reach_the_targets_own_ids(tmp_path):
    db = tmp_path / "imshift.db"
    with bridged(tmp_path, f"sqlite:///{db}", "rongcloud", "netease", users=4, groups=2,
                 group_size=4) as b:  # user 0 in every group
        old, new, env = b.old, b.new, b.env
        assert new.groups != old.groups  # NetEase gave its own tids
        groups = tmp_path / "groups.txt"
        groups.write_text("\n".join([*old.groups, "never-made"]) + "\n")
        code, out = imshift(env, "send", "--app", "new", "--sender", old.users[0], "--to-groups",
                            str(groups), "--text", "after the move", "--via", "R1")
        assert code == 3, out  # one row refused
        assert "2 to send, 1 invalid" in out and "not in run R1's id map" in out, out
        job = int(out.split("job ")[1].split(":")[0])
        got = items(db, job)
        assert {got[tid].split()[0] for tid in new.groups} == {"ok"}, got
        assert got["never-made"] == "rejected group_id: not in run R1's id map", got

        to = tmp_path / "to.txt"
        to.write_text("\n".join(old.users[1:]) + "\n")
        code, out = imshift(env, "send", "--app", "new", "--sender", old.users[0], "--to", str(to),
                            "--text", "hello", "--via", "R1")
        assert code == 0 and "ok=3" in out, out
        for user in old.users[1:]:
            assert any("hello" in str(m) for m in new.inbox(b.ids["user"][user])), user
        code, out = imshift(env, "broadcast", "--app", "new", "--sender", old.users[0],
                            "--text", "all", "--via", "R1")
        assert code == 0 and "ok=1" in out, out

        # Refused in one line before anything exists: an unmigrated sender, no such
        # run, a run into another app, something not a run.
        for args, line in (
                (["--sender", "stranger", "--via", "R1"],
                 "error: --sender 'stranger': not in run R1's id map. Nothing was created."),
                (["--sender", old.users[0], "--via", "R9"],
                 "error: --via R9: there is no run R9 (`imshift status` lists the runs). "
                 "Nothing was created."),
                (["--sender", old.users[0], "--via", "7"], "error: --via takes a run, R<n>, not '7'")):
            code, out = imshift(env, "send", "--app", "new", "--to", str(to), "--text", "x", *args)
            assert code == 2 and out == line, out
        code, out = imshift(env, "send", "--app", "old", "--sender", "x", "--to", str(to),
                            "--text", "x", "--via", "R1")
        assert code == 2 and "--via R1: that run migrated into new, not old" in out, out

        # A schedule keeps --via and maps when it fires.
        code, out = imshift(env, "schedule", "add", "--at", "2099-01-01T09:00", "--", "send",
                            "--app", "new", "--sender", old.users[0], "--to-groups", str(groups),
                            "--text", "later", "--via", "R1")
        assert code == 0 and "schedule 1:" in out, out
        code, out = imshift(env, "schedule", "show", "1")
        assert "ids mapped through run R1's id map" in out, out
        fired = fire_unstarted(env, 1)
        assert fired.state == "fired", fired
        got = items(db, fired.job_id)
        assert {got[tid].split()[0] for tid in new.groups} == {"pending"}, got
        assert got["never-made"].startswith("rejected group_id: not in run R1's id map"), got
        code, out = imshift(env, "schedule", "add", "--at", "2099-01-01T09:00", "--", "broadcast",
                            "--app", "new", "--text", "later", "--via", "R4")
        assert code == 2 and "--via R4: there is no run R4" in out, out
