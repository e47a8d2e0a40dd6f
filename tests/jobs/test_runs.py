"""Migration runs end to end: every stage planned up front, run in order
through the id map, against the sandboxes over HTTP, on SQLite and
PostgreSQL, with the engine's in-process workers."""

import json

import pytest
from cryptography.fernet import Fernet

from imshift.jobs import run_control, runs
from imshift.jobs.progress import results
from imshift.vendors.vocabulary import Operation
from imshift.workers.embedded import in_process_workers

from helpers import context, start_until_held, wait_until_done, write_users


FAST = {op: 500.0 for op in ("register", "update_profile", "get_profiles", "issue_token",
                             "create_group", "add_members", "import_friends", "get_members",
                             "get_friends")}


def write_pairs(path, pairs):
    path.write_text("user_id,friend_id\n" + "".join(f"{a},{b}\n" for a, b in pairs), encoding="utf-8")
    return path


def write_groups(path, groups):
    path.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in groups), encoding="utf-8")
    return path


def user(i):
    return f"user_{i:06d}"


def run_to_the_end(ctx, run_id, timeout=120):
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        run_control.start(ctx.engine, ctx.broker, run_id)
        for _, p in run_control.run_progress(ctx.engine, run_id).stages:
            wait_until_stage(ctx, p.job_id, timeout)
    return run_control.run_progress(ctx.engine, run_id)


def wait_until_stage(ctx, job_id, timeout):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = wait_until_done(ctx, job_id, timeout)
        if p.status == "finished":
            return p
        time.sleep(0.1)
    raise AssertionError(f"stage job {job_id} did not finish")


def by_key(ctx, job_id):
    return {i.key: i for i in results(ctx.engine, job_id)}


def test_a_run_into_maxim_uses_the_ids_maxim_assigns_in_every_later_stage(database_url, tmp_path,
                                                                          monkeypatch):
    ctx = context(database_url, token_key=Fernet.generate_key().decode(),
                  apps={"old": {"vendor": "rongcloud", "sandbox": True},
                        "new": {"vendor": "maxim", "sandbox": True, "rates": FAST}})
    users = write_users(tmp_path / "u.csv", 160, bad_rows={7: {"user_id": "mta_7"}})  # Maxim refuses mta*
    pairs = [(user(i), user(i + 1)) for i in range(0, 40)]
    pairs += [(user(1), user(0)),  # the first pair again, the other way round
              (user(3), "ghost"),  # a user not in the accounts
              ("mta_7", user(9))]  # that account is refused at planning
    friends = write_pairs(tmp_path / "f.csv", pairs)
    big = [user(i) for i in range(10, 160)]  # over Maxim's 100 a call: the rest are the members stage
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": "g_small", "name": "Small", "owner": user(0), "members": [user(1), user(2)]},
        {"group_id": "g_big", "name": "Big", "owner": user(1), "members": big + ["ghost"]},
        {"group_id": "g_orphan", "name": "Orphan", "owner": "mta_7", "members": [user(2)]},
    ])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, friends=friends, groups=groups, tokens=True,
                                         verify=True), chunk_size=50)
    stages = {s.stage: s.report for s in plan.stages}
    assert list(stages) == ["accounts", "friends", "groups", "members", "tokens", "verify"]
    assert (stages["accounts"].pending, stages["accounts"].invalid) == (159, 1)
    assert (stages["friends"].total, stages["friends"].pending, stages["friends"].duplicates,
            stages["friends"].invalid) == (43, 39, 1, 3)  # user_000007 is mta_7 now: 2 pairs dangle
    assert stages["members"].total == 150 - 100 + 1 + 0  # the rest of g_big, and ghost (rejected)

    p = run_to_the_end(ctx, plan.run_id)
    assert p.status == "finished", p
    box = ctx.sandbox("new")
    ids = {source: target for kind, source, target in run_control.id_map_rows(ctx.engine, plan.run_id)
           if kind == "user"}
    groups_map = {source: target for kind, source, target in run_control.id_map_rows(ctx.engine, plan.run_id)
                  if kind == "group"}
    assert len(ids) == 159 and all(t.isdigit() for t in ids.values())
    assert ids[user(0)] != user(0)
    assert {ids[user(1)], ids[user(2)]} <= box.group_members(groups_map["g_small"])
    assert box.group_members(groups_map["g_big"]) == {ids[u] for u in [user(1), *big]}
    assert "g_orphan" not in groups_map
    assert ids[user(1)] in box.friends(ids[user(0)]) and ids[user(0)] in box.friends(ids[user(1)])

    stage_jobs = {s: sp.job_id for s, sp in p.stages}
    friend_items = by_key(ctx, stage_jobs["friends"])
    skipped = friend_items[f"mta_7↔{user(9)}"]
    assert skipped.state == "skipped" and skipped.message.startswith("user mta_7 was not migrated: rejected")
    group_items = by_key(ctx, stage_jobs["groups"])
    assert group_items["g_orphan"].state == "skipped", group_items["g_orphan"]
    tokens = by_key(ctx, stage_jobs["tokens"])
    assert sum(1 for i in tokens.values() if i.state == "ok") == 159
    verify = by_key(ctx, stage_jobs["verify"])
    for never_made in ("group:g_orphan", "friends:mta_7"):  # the owner's account never made it
        assert verify.pop(never_made).state == "skipped"
    assert {i.state for i in verify.values()} == {"ok"}, [
        (i.key, i.state, i.message) for i in verify.values() if i.state != "ok"][:5]
    # Read back through Maxim's own read endpoints: members, friends, profiles.
    assert verify["group:g_big"].result == {"members": 151}
    assert verify[f"friends:{user(1)}"].result == {"friends": 2}
    assert len(verify) == 159 + 2 + 40  # accounts, groups, users with friends
    ctx.engine.dispose()


@pytest.mark.parametrize("vendor", ["rongcloud", "netease", "openim"])
def test_a_run_into_each_vendor_lands_every_account_pair_and_membership_once(vendor, tmp_path):
    # SQLite only: the PostgreSQL path of the same engine is the Maxim test's.
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}", token_key=Fernet.generate_key().decode(),
                  apps={"old": {"vendor": "maxim", "sandbox": True},
                        "new": {"vendor": vendor, "sandbox": True, "rates": FAST}})
    users = write_users(tmp_path / "u.csv", 60)
    pairs = [(user(i), user((i * 7 + 3) % 60)) for i in range(60) if (i * 7 + 3) % 60 != i]
    friends = write_pairs(tmp_path / "f.csv", pairs)
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": f"grp_{n}", "name": f"Grüppe {n}", "owner": user(n),
         "members": [user((n + k) % 60) for k in range(1, 2 + n * 5)]} for n in range(8)])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, friends=friends, groups=groups, tokens=True,
                                         verify=True), chunk_size=50)
    p = run_to_the_end(ctx, plan.run_id)
    assert p.status == "finished"
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert counts["accounts"] == {"ok": 60}
    assert set(counts["friends"]) <= {"ok", "exists", "rejected"}  # repeats of a pair: "duplicate"
    assert counts["groups"] == {"ok": 8}
    box = ctx.sandbox("new")
    mapped = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, plan.run_id)}
    for n in range(8):
        want = {user(n)} | {user((n + k) % 60) for k in range(1, 2 + n * 5)}
        there = box.group_members(mapped[("group", f"grp_{n}")])
        assert {box.key(m) for m in there} == {box.key(u) for u in want}, n
    for a, b in pairs:
        assert box.key(b) in {box.key(f) for f in box.friends(a)}, (a, b)
    assert len([u for u in box.users if str(u).startswith("user_")]) == 60  # once each
    assert counts["tokens"] == {"ok": 60}
    assert set(counts["verify"]) == {"ok"}, [
        (i.key, i.message) for i in results(ctx.engine, dict(p.stages)["verify"].job_id, "rejected")][:3]
    ctx.engine.dispose()


@pytest.mark.parametrize("source", ["openim", "maxim"])
def test_without_an_export_the_accounts_are_listed_from_the_source_with_their_profiles(
        source, tmp_path):
    import asyncio

    from imshift.runcli import source_pages
    from imshift.vendors.vocabulary import Profile

    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": source, "sandbox": True, "rates": FAST},
                        "new": {"vendor": "netease", "sandbox": True, "rates": FAST}})
    names = {f"src_{i:04d}": f"Ünïcode {i}" for i in range(450)}

    async def fill():
        client = ctx.client("old")
        results = await client.register_users([Profile(k, v, f"https://a.example/{k}.png")
                                               for k, v in names.items()])
        await client.http.aclose()
        assert all(r.succeeded for r in results)

    asyncio.run(fill())  # listed by the app's ids (Maxim: the usernames, its numbers kept beside)
    friends = write_pairs(tmp_path / "f.csv", [(a, b) for a, b in zip(list(names)[:10],
                                                                      list(names)[1:11], strict=True)])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(friends=friends, verify=True,
                                         source_pages=source_pages(ctx, "old")), chunk_size=100)
    accounts = plan.stages[0].report
    assert (accounts.total, accounts.pending) == (450, 450)
    p = run_to_the_end(ctx, plan.run_id)
    assert p.status == "finished" and dict((s, sp.counts) for s, sp in p.stages)["verify"] == {"ok": 450 + 11}
    box = ctx.sandbox("new")
    for username, name in names.items():
        assert box.stored_profile(username).name == name
    ctx.engine.dispose()


def test_messy_inputs_give_row_level_reasons_and_hold_nothing_else_back(tmp_path):
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": "netease", "sandbox": True, "rates": FAST}})
    users = tmp_path / "u.csv"  # a BOM, CRLF line ends, a repeat, a case collision, a bad id
    users.write_bytes("\ufeffuser_id,name\r\nann,Ann\r\nBob,Bob\r\nbob,Bobby\r\nann,Ann again\r\n"
                      "b o b,Spaced\r\ncarl,Carl\r\n".encode())
    friends = tmp_path / "f.csv"
    friends.write_bytes(b"user_id,friend_id\r\nann,Bob\r\nann,nobody\r\nb o b,carl\r\ncarl,ann\r\n")
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": "g1", "name": "One", "owner": "b o b", "members": ["ann"]},  # owner refused
        {"group_id": "g2", "name": "Two", "owner": "carl", "members": ["ann", "Bob", "ghost"]}])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, friends=friends, groups=groups, verify=True),
                         chunk_size=50)
    reasons = {s.stage: {row: reason for row, _, reason in s.report.examples} for s in plan.stages}
    assert reasons["accounts"] == {
        4: "same account as row 3 at the target ('Bob' and 'bob' are one id there)",
        5: "duplicate of row 2 (same id 'ann')",
        6: "user_id: 'b o b' is not allowed (letters, digits, _ @ . - only)"}
    assert reasons["friends"][3] == "friend_id: user 'nobody' is not in the accounts (--users)"
    assert reasons["members"] == {2: "member: user 'ghost' is not in the accounts (--users)"}
    p = run_to_the_end(ctx, plan.run_id)
    jobs_of = {stage: sp.job_id for stage, sp in p.stages}
    friend_items = {i.row: i for i in results(ctx.engine, jobs_of["friends"])}
    assert friend_items[4].state == "skipped"
    assert friend_items[4].message.startswith("user b o b was not migrated: rejected")
    assert {friend_items[n].state for n in (2, 5)} == {"ok"}
    g1 = by_key(ctx, jobs_of["groups"])["g1"]
    assert g1.state == "skipped" and g1.message.startswith("user b o b was not migrated")
    box = ctx.sandbox("new")
    g2 = dict(((k, s), t) for k, s, t in run_control.id_map_rows(ctx.engine, plan.run_id))[("group", "g2")]
    assert box.group_members(g2) == {"carl", "ann", "bob"}  # NetEase keeps accids lower-cased
    ctx.engine.dispose()


def test_verify_finds_a_profile_altered_at_the_target_and_says_both_values(tmp_path):
    import threading
    import time

    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "maxim", "sandbox": True},
                        "new": {"vendor": "openim", "sandbox": True,
                                "rates": {**FAST, "issue_token": 20.0}}},
                  token_key=Fernet.generate_key().decode())
    users = write_users(tmp_path / "u.csv", 40)
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, tokens=True, verify=True), chunk_size=50)
    box = ctx.sandbox("new")
    accounts_job = plan.stages[0].job_id

    def alter_once_accounts_are_in():  # while tokens (2 s at 20/s) stand before verify
        from imshift.jobs.progress import progress
        while progress(ctx.engine, accounts_job).status != "finished":
            time.sleep(0.02)
        box.users[user(5)]["nickname"] = "Mallory"

    altering = threading.Thread(target=alter_once_accounts_are_in)
    altering.start()
    p = run_to_the_end(ctx, plan.run_id)
    altering.join()
    verify = by_key(ctx, dict(p.stages)["verify"].job_id)
    found = verify[user(5)]
    assert (found.state, found.code) == ("rejected", "differs")
    assert found.message == f"name is 'Mallory' at the target, '{NAMES_OF(5)}' expected"
    assert sum(1 for i in verify.values() if i.state == "ok") == 39
    ctx.engine.dispose()


def NAMES_OF(i):
    from helpers import NAMES
    return f"{NAMES[i % len(NAMES)]} {i}"


def test_a_delta_re_run_sends_only_what_the_earlier_run_did_not_finish(tmp_path):
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "rongcloud", "sandbox": True},
                        "new": {"vendor": "maxim", "sandbox": True, "rates": FAST,
                                "batch_sizes": {"add_members": 3}}})

    def request(n_users, n_pairs, groups):
        return runs.RunRequest(
            users=write_users(tmp_path / f"u{n_users}.csv", n_users),
            friends=write_pairs(tmp_path / f"f{n_pairs}.csv", [(user(i), user(i + 1)) for i in range(n_pairs)]),
            groups=write_groups(tmp_path / f"g{len(groups)}.jsonl", groups), verify=True)

    g1 = {"group_id": "g1", "name": "One", "owner": user(0), "members": [user(i) for i in range(1, 6)]}
    first = runs.plan_run(ctx.engine, "old", ctx.target("new"), request(30, 20, [g1]), chunk_size=50)
    run_to_the_end(ctx, first.run_id)
    box = ctx.sandbox("new")
    groups_before = len(box.store.groups)

    g1_grown = {**g1, "members": g1["members"] + [user(30), user(31)]}
    g2 = {"group_id": "g2", "name": "Two", "owner": user(35), "members": [user(1)]}
    second = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                           runs.RunRequest(**{**vars(request(40, 30, [g1_grown, g2])), "since": first.run_id}),
                           chunk_size=50)
    planned = {s.stage: s.report for s in second.stages}
    assert (planned["accounts"].pending, planned["accounts"].done) == (10, 30)
    assert (planned["friends"].pending, planned["friends"].done) == (10, 20)
    assert (planned["groups"].pending, planned["groups"].done) == (1, 1)
    assert (planned["members"].pending, planned["members"].done) == (2, 5)  # g1's 2 new, its 5 old
    p = run_to_the_end(ctx, second.run_id)
    assert p.status == "finished"
    assert dict((s, sp.counts) for s, sp in p.stages)["verify"] == {"ok": 40 + 2 + 31}
    assert len(box.store.groups) == groups_before + 1  # g2 only: g1 was not made again
    assert box.duplicates.get("register", 0) == 0
    ids = {s: t for k, s, t in run_control.id_map_rows(ctx.engine, second.run_id) if k == "user"}
    g1_there = {t for k, s, t in run_control.id_map_rows(ctx.engine, second.run_id)
                if k == "group" and s == "g1"}.pop()
    assert box.group_members(g1_there) == {ids[u] for u in [g1["owner"], *g1_grown["members"]]}
    ctx.engine.dispose()


@pytest.mark.parametrize("vendor, stage, op", [("maxim", "tokens", "issue_token"),
                                               ("maxim", "friends", "import_friends"),
                                               ("rongcloud", "groups", "create_group")])
def test_the_dry_runs_vendor_calls_are_the_calls_the_run_makes(vendor, stage, op, tmp_path):
    """Maxim's token is two calls (a password reset, then a login), and its
    friends a call per owner's run of pairs plus one a pair for the other
    side; RongCloud creates one group a call whatever its members' batch size."""
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}", token_key=Fernet.generate_key().decode(),
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": vendor, "sandbox": True, "rates": FAST}})
    users = write_users(tmp_path / "u.csv", 30)
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": f"grp_{n}", "name": f"G {n}", "owner": user(n), "members": [user(n + 1), user(n + 2)]}
        for n in range(7)])
    pairs = [(user(n), user(n + k)) for n in range(0, 20, 4) for k in (1, 2, 3)]  # 5 owners' runs of 3
    friends = write_pairs(tmp_path / "f.csv", pairs)
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, friends=friends, groups=groups, tokens=True),
                         chunk_size=50)
    estimated = {s.stage: s.calls for s in plan.stages}
    box = ctx.sandbox("new")
    before = box.calls[op]
    p = run_to_the_end(ctx, plan.run_id)
    assert p.status == "finished"
    assert dict(p.stages)[stage].counts == {"ok": {"tokens": 30, "friends": 15, "groups": 7}[stage]}
    assert box.calls[op] - before == estimated[stage], (box.calls[op] - before, estimated)
    ctx.engine.dispose()


@pytest.mark.parametrize("vendor, sizes", [
    # NetEase's team/create takes the members whose JSON fits 1024 bytes, 73
    # of these ids; team/add the rest of the first 200: 199 is a create and
    # 2 adds, 100 a create and 1, 73 and 30 a create alone.
    ("netease", [199, 100, 73, 30]),
    # RongCloud's create takes 1000 userIds with the owner: 1000 members is
    # a create and a join, 999 a create alone.
    ("rongcloud", [1000, 999]),
])
def test_the_groups_stage_counts_the_adds_a_create_makes_for_its_first_members(vendor, sizes, tmp_path):
    rates = {**FAST, "create_group": 400.0}  # apart, so the seconds say which rate counted
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": vendor, "sandbox": True, "rates": rates}})
    users = write_users(tmp_path / "u.csv", max(sizes) + len(sizes))
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": f"grp_{n}", "name": f"G {n}", "owner": user(n),
         "members": [user(i) for i in range(len(sizes), len(sizes) + size)]}
        for n, size in enumerate(sizes)])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, groups=groups), chunk_size=1000)
    planned = {s.stage: s for s in plan.stages}
    adds = {"netease": 3, "rongcloud": 1}[vendor]
    assert planned["groups"].calls == len(sizes) + adds
    assert planned["groups"].seconds == pytest.approx(max(len(sizes) / 400, adds / 500))
    box = ctx.sandbox("new")
    p = run_to_the_end(ctx, plan.run_id)
    assert dict(p.stages)["groups"].counts == {"ok": len(sizes)}
    assert (box.calls["create_group"], box.calls["add_members"]) == (
        planned["groups"].report.pending, planned["groups"].calls - planned["groups"].report.pending
        + planned["members"].calls)
    ctx.engine.dispose()


def test_the_members_stage_is_estimated_a_group_at_a_time_as_the_client_adds_them(tmp_path):
    """Each group's members go in calls of their own: 250 members at 100 a
    call are 3 calls, 10 groups of 5 are 10 calls (not 300 / 100 = 3)."""
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": "maxim", "sandbox": True, "rates": FAST}})
    users = write_users(tmp_path / "u.csv", 400)
    first = ctx.target("new").batch_size(Operation.ADD_MEMBERS)
    assert first == 100  # the create takes the owner and 100; the members stage the rest
    big = {"group_id": "big", "name": "Big", "owner": user(0),
           "members": [user(i) for i in range(1, 1 + first + 250)]}
    small = [{"group_id": f"small_{n}", "name": f"Small {n}", "owner": user(n),
              "members": [user(n + 1 + i) for i in range(first + 5)]} for n in range(10)]
    groups = write_groups(tmp_path / "g.jsonl", [big, *small])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, groups=groups), chunk_size=1000)
    members = next(s for s in plan.stages if s.stage == "members")
    assert (members.report.pending, members.calls) == (250 + 10 * 5, 3 + 10)
    box = ctx.sandbox("new")
    p = run_to_the_end(ctx, plan.run_id)
    assert dict(p.stages)["members"].counts == {"ok": 300}
    assert box.calls["add_members"] == members.calls  # the creates' slices took no invite
    ctx.engine.dispose()


def test_verifys_member_checks_are_claimed_within_their_own_reads_rate(tmp_path):
    """A member check is a get_members call at its own (low) rate: while one
    is held at the vendor's door, the verify stage holds claimed only what
    that rate serves in claim_seconds, not get_profiles' budget of items."""
    from sqlalchemy import func, select

    from imshift.models.tables import Item
    from test_run_crash import Door

    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "maxim", "sandbox": True},
                        "new": {"vendor": "openim", "sandbox": True,
                                "rates": {**FAST, "get_profiles": 100.0, "get_members": 4.0}}})
    users = write_users(tmp_path / "u.csv", 40)
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": f"grp_{n}", "name": f"G {n}", "owner": user(n), "members": [user(n + 1)]}
        for n in range(30)])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, groups=groups, verify=True), chunk_size=100)
    verify_job = plan.stages[-1].job_id
    box = ctx.sandbox("new")
    box.app = door = Door(box.app)
    door.hold({"/group/get_group_member_list"}, after=2)
    items = Item.__table__
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        start_until_held(ctx, plan.run_id, door)
        with ctx.engine.connect() as conn:
            states = dict(conn.execute(
                select(items.c.state, func.count()).where(
                    items.c.job_id == verify_job, items.c.key.like("group:%"))
                .group_by(items.c.state)).all())
        reached = box.calls["get_members"]  # read after the states: never fewer than then
        door.release()
        for _, p in run_control.run_progress(ctx.engine, plan.run_id).stages:
            wait_until_stage(ctx, p.job_id, 60)
    # Claimed are the checks waiting for a slot, the one held at the door,
    # and those past it not yet recorded. Waiting for a slot: 4 calls/s x
    # 0.5 s of quota, at most 2 (30 before, on get_profiles' budget); what
    # is counted here as waiting may also hold the one check that has its
    # slot (they come 0.25 s apart) and is still on its way to the vendor.
    claimed = states.get("claimed", 0)
    recorded = sum(n for state, n in states.items() if state not in ("claimed", "pending"))
    waiting = claimed - 1 - (reached - recorded)
    assert claimed >= 1 and waiting <= 2 + 1, (states, reached)
    counts = dict(run_control.run_progress(ctx.engine, plan.run_id).stages)["verify"].counts
    assert counts == {"ok": 40 + 30}
    ctx.engine.dispose()
