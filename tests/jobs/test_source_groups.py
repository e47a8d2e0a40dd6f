"""A run given neither --users nor --groups: an OpenIM v3 source lists its
accounts and its groups with their members through its own API, and the
groups and members stages are planned from them as from groups.jsonl (an
unknown member rejected on its own row, a group over the target's size
limit refused whole at planning). A source that cannot list groups says so
in one line of the plan. Both sandboxes are served on loopback and the CLI
runs in this process (embedded mode)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from imshift.cli import app
from imshift.clibase import EXIT_FAILURES
from imshift.jobs import run_control
from imshift.jobs.progress import results
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.serve import served
from testsupport import app_environment

from helpers import context

pytestmark = pytest.mark.loopback

MEMBERS_OF = 40  # the five ordinary groups draw their people from the first 40 users
USERS = 220  # the sixth group needs 201 people to be over NetEase's 200
FAST = {op: 2000.0 for op in ("register", "update_profile", "get_profiles", "list_users", "list_groups",
                              "get_members", "create_group", "add_members", "get_friends")}


def user(i: int) -> str:
    return f"src_{i:04d}"


def source_groups(admin: str) -> dict[str, tuple[str, list[str]]]:
    """group id -> (owner, members but the owner); grp_2 also holds the
    OpenIM admin, whom the user listing leaves out (so not an account)."""
    groups = {f"grp_{n}": (user(n), [user((n + k) % MEMBERS_OF) for k in range(1, 2 + n * 8)])
              for n in range(5)}
    groups["grp_2"][1].append(admin)
    groups["grp_big"] = (user(0), [user(i) for i in range(1, 201)])  # 201 with the owner
    return groups


def configure(monkeypatch, database_url, source, source_url, target, target_url):
    monkeypatch.setenv("IMSHIFT_APPS__NEW__SANDBOX", "false")
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", database_url)
    for key, value in {**app_environment("old", "openim", source.config(source_url)),
                       **app_environment("new", "netease", target.config(target_url)),
                       "IMSHIFT_APPS__OLD__RATES": json.dumps(FAST),
                       "IMSHIFT_APPS__NEW__RATES": json.dumps(FAST)}.items():
        monkeypatch.setenv(key, value)
    return context(database_url)


def test_an_openim_source_gives_its_groups_and_every_membership_lands_once(env, database_url, monkeypatch):
    source, target = OpenIMSandbox(), NeteaseSandbox()
    for i in range(USERS):
        source._add_user({"userID": user(i), "nickname": f"Ünï {i}"})
    groups = source_groups(source.admin_user_id)
    for n, (group_id, (owner, members)) in enumerate(groups.items()):
        source.add_group(group_id, f"Grüppe {group_id}", owner, members,
                         faceURL=f"https://a.example/{group_id}.png", introduction=f"about {n}")
    with served(source) as source_url, served(target) as target_url:
        ctx = configure(monkeypatch, database_url, source, source_url, target, target_url)
        result = CliRunner().invoke(app, ["migrate", "run", "--from", "old", "--to", "new", "--verify"])
    out = " ".join(result.output.split())
    assert result.exit_code == EXIT_FAILURES, out  # finished, with rows that did not make it
    assert "groups: none given" not in out
    p = run_control.run_progress(ctx.engine, 1)
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert p.status == "finished" and [s for s, _ in p.stages] == ["accounts", "groups", "members", "verify"]
    assert counts["accounts"] == {"ok": USERS}
    assert counts["groups"] == {"ok": 5, "rejected": 1}
    stage_jobs = {stage: sp.job_id for stage, sp in p.stages}
    [refused] = results(ctx.engine, stage_jobs["groups"], "rejected")
    assert refused.key == "grp_big" and "201 with the owner, the target allows at most 200" in refused.message
    assert refused.row == 1  # the newest group comes first in OpenIM's listing
    members = {i.key: i for i in results(ctx.engine, stage_jobs["members"])}
    admin_row = members[f"grp_2/{source.admin_user_id}"]
    assert admin_row.state == "rejected" and "is not in the accounts listed from " in admin_row.message
    assert {i.state for k, i in members.items() if k.startswith("grp_big/")} <= {"rejected"}
    assert set(counts["verify"]) == {"ok"}  # read back through NetEase's own endpoints
    with ctx.engine.connect() as conn:
        [payload] = conn.execute(text("SELECT payload FROM items WHERE job_id = :j AND key = 'grp_1'"),
                                 {"j": stage_jobs["groups"]}).scalars()
        assert conn.execute(text("SELECT count(*) FROM listed_groups")).scalar() == 0  # planned whole
    payload = json.loads(payload) if isinstance(payload, str) else payload
    assert (payload["avatar"], payload["intro"]) == ("https://a.example/grp_1.png", "about 1")

    # At the target: every account once, each group once with exactly its members.
    mapped = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, 1)}
    assert sorted(u for u in target.users) == sorted(user(i) for i in range(USERS))
    assert len(target.teams) == 5 and ("group", "grp_big") not in mapped
    for group_id, (owner, group_members) in groups.items():
        if group_id == "grp_big":
            continue
        want = {owner, *group_members} - {source.admin_user_id}
        assert target.group_members(mapped[("group", group_id)]) == want, group_id
        assert target.teams[mapped[("group", group_id)]].tname == f"Grüppe {group_id}"
    assert {op: n for op, n in target.duplicates.items() if n} == {}
    ctx.engine.dispose()


def test_a_source_that_cannot_list_groups_says_so_in_one_line_of_the_plan(env, monkeypatch):
    source, target = OpenIMSandbox(api_version="v2"), NeteaseSandbox()
    for i in range(3):
        source._add_user({"userID": user(i), "nickname": f"N {i}"})
    with served(source) as source_url, served(target) as target_url:
        ctx = configure(monkeypatch, f"sqlite:///{env}/imshift.db", source, source_url, target, target_url)
        result = CliRunner().invoke(app, ["migrate", "run", "--from", "old", "--to", "new", "--dry-run"])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    assert "groups: none given, and OpenIM v2 cannot list them: pass --groups groups.jsonl" in out
    p = run_control.run_progress(ctx.engine, 1)
    assert [s for s, _ in p.stages] == ["accounts"]
    assert "list_groups" not in source.calls
    ctx.engine.dispose()


def test_a_planning_killed_while_groups_are_listed_resumes_from_the_last_stored_page(tmp_path):
    """The command SIGKILLed while its second page of groups is held at the
    source's door (the first stored with its cursor); `imshift resume R1`
    keeps the accounts planned whole, lists the groups on from the second
    page, and the target gets each group once."""
    import subprocess
    import sys

    from imshift.vendors.sandbox.rongcloud import RongCloudSandbox

    from helpers import command_env, kill
    from test_listing_crash import CountingDoor, imshift, wait_for

    source, target = OpenIMSandbox(), RongCloudSandbox()
    for i in range(30):
        source._add_user({"userID": user(i), "nickname": f"N {i}"})
    made = {f"grp_{n:03d}": (user(n % 30), [user((n + 1) % 30), user((n + 2) % 30)]) for n in range(210)}
    for group_id, (owner, members) in made.items():  # 210 groups: three pages of 100
        source.add_group(group_id, f"G {group_id}", owner, members)
    source.app = door = CountingDoor(source.app)
    db = f"sqlite:///{tmp_path / 'imshift.db'}"
    log = tmp_path / "commands.log"
    with served(source) as source_url, served(target) as target_url:
        env = command_env(tmp_path, db, {"old": ("openim", source.config(source_url), FAST),
                                         "new": ("rongcloud", target.config(target_url), FAST)})
        ctx = context(db)
        door.hold({"/group/get_groups"}, after=1)  # page 1 goes through, page 2 is held
        command = imshift(["migrate", "run", "--from", "old", "--to", "new"], env, log)
        try:
            wait_for(lambda: door.held is not None, "the second page of groups",
                     lambda: command.poll() is None, log)
            kill(command)
        finally:
            door.release()
            kill(command)
        with ctx.engine.connect() as conn:
            cut = conn.exec_driver_sql("SELECT stage, status FROM jobs WHERE run_id = 1 ORDER BY id").all()
            run = conn.exec_driver_sql("SELECT status, group_cursor, group_state FROM runs").one()
            stored = conn.exec_driver_sql("SELECT group_id FROM listed_groups ORDER BY seq").scalars().all()
        assert [tuple(r) for r in cut] == [("accounts", "planned")]  # the groups' job comes once listed
        assert tuple(run) == ("planning", "100", "listing")
        assert stored == [f"grp_{n:03d}" for n in range(209, 109, -1)]  # page 1: the newest 100
        resumed = subprocess.run([sys.executable, "-m", "imshift.cli", "resume", "R1"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    assert door.seen["/group/get_groups"] == 2 + 2  # pages 1-2 by the killed command, 2-3 by resume
    assert door.seen["/user/get_all_users_uid"] == 1  # the accounts were kept, not listed again
    p = run_control.run_progress(ctx.engine, 1)
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert p.status == "finished" and counts["groups"] == {"ok": 210}, counts
    assert sorted(target.groups) == sorted(made)
    for group_id, (owner, members) in made.items():
        assert target.group_members(group_id) == {owner, *members}, group_id
    assert {op: n for op, n in target.duplicates.items() if n} == {}
    assert target.calls["create_group"] == 210
    items = results(ctx.engine, dict(p.stages)["groups"].job_id)
    assert sorted(i.row for i in items) == list(range(1, 211))  # each listed once, in its place
    with ctx.engine.connect() as conn:  # planned whole: the stored listing is gone
        assert conn.exec_driver_sql("SELECT count(*) FROM listed_groups").scalar() == 0
    ctx.engine.dispose()
