"""The issue's full-size runs: 5,000 users, 10,000 friend pairs and 200
groups (sizes 2 up to the target's group size limit, one over it) into each
vendor, from files and from a listing source. Each ends with every account,
pair and membership at the target exactly once, read back from the target
sandbox's store and through its own read endpoints (the verify stage), and
the group over the limit refused at planning with nothing of it sent.

The in-process workers, at sandbox rates far above what the runs need, so
each costs what its vendor calls cost and no more; SQLite, but the OpenIM
run on PostgreSQL."""

import asyncio

from cryptography.fernet import Fernet

from imshift.jobs import run_control, runs
from imshift.runcli import source_pages
from imshift.vendors.vocabulary import Operation, Profile

from helpers import NAMES, context, migration, write_users
from testsupport import throwaway_database
from test_runs import run_to_the_end

USERS = 5000
# Every operation (reads, listings and the admin token's "auth" too) far over
# what a run of this size can ask in a second: the limiter never waits.
QUICK = {**{op.value: 50000.0 for op in Operation}, "auth": 50000.0}
CHUNK = 2000  # items per queue message


def user(i: int) -> str:
    return f"user_{i:06d}"


def profile(i: int) -> Profile:
    """User i as helpers.write_users writes it."""
    return Profile(user(i), f"{NAMES[i % len(NAMES)]} {i}", f"https://cdn.example.com/a/{i}.png")


def run_context(tmp_path, source: str, target: str, database_url: str | None = None, **target_settings):
    return context(database_url or f"sqlite:///{tmp_path / 'imshift.db'}",
                   token_key=Fernet.generate_key().decode(),
                   apps={"old": {"vendor": source, "sandbox": True, "rates": QUICK},
                         "new": {"vendor": target, "sandbox": True, "rates": QUICK, **target_settings}})


def seed_source(ctx) -> list[str]:
    """The source's accounts, registered through its own API; returns the
    ids they are listed by, in the order of `user(i)`: the app's own (a
    Maxim source lists its users by username, its numbers kept beside)."""
    async def fill():
        client = ctx.client("old")
        try:
            results = await client.register_users([profile(i) for i in range(USERS)])
        finally:
            await client.http.aclose()
        assert all(r.succeeded for r in results)
        return [user(i) for i in range(USERS)]

    return asyncio.run(fill())


def run_and_check(ctx, source_ids: list[str], request: runs.RunRequest, m, *,
                  friend_repeats: int = 0) -> dict:
    """Plan and run; check every stage's outcome and the target's state.
    `friend_repeats`: friendships the target is asked for again by design.
    Returns the id map (kind, source id) -> target id."""
    target = ctx.target("new")
    limit = target.rules.group_size
    plan = runs.plan_run(ctx.engine, "old", target, request, chunk_size=CHUNK)
    reports = {s.stage: s.report for s in plan.stages}
    assert reports["accounts"].pending == USERS
    over = m.over["group_id"]
    refused = [reason for _, key, reason in reports["groups"].examples if key == over]
    assert refused and f"at most {limit}" in refused[0], reports["groups"].examples
    assert reports["groups"].pending == len(m.landed_groups)
    # The over-limit group's members beyond the create's slice are refused with it.
    first = target.batch_size(Operation.ADD_MEMBERS)
    rest = {g["group_id"]: max(0, len(g["members"]) - first) for g in m.groups}
    assert reports["members"].pending == sum(rest.values()) - rest[over]
    assert reports["members"].invalid == rest[over]

    box = ctx.sandbox("new")
    p = run_to_the_end(ctx, plan.run_id, timeout=300)
    assert p.status == "finished", p
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert counts["accounts"] == {"ok": USERS}
    assert counts["friends"] == {"ok": len(m.pairs)}
    assert counts["groups"] == {"ok": len(m.landed_groups), "rejected": 1}
    assert counts["members"] == {k: v for k, v in (("ok", reports["members"].pending),
                                                   ("rejected", rest[over])) if v}
    # Read back through the target's own read endpoints: profiles, members, friends.
    befriended = {u for pair in m.pairs for u in pair}
    assert counts["verify"] == {"ok": USERS + len(m.landed_groups) + len(befriended)}

    mapped = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, plan.run_id)}
    ids = {s: t for (kind, s), t in mapped.items() if kind == "user"}
    assert len(ids) == USERS and len(set(map(box.key, ids.values()))) == USERS
    # The target's own store: each account once, with its profile.
    wanted = {box.key(t) for t in ids.values()}
    assert len([k for k in box.users if k in wanted]) == USERS
    for i in (0, 1, USERS - 1):
        assert box.stored_profile(ids[source_ids[i]]).name == profile(i).name
    # Each landed group once, with exactly its members; nothing of the refused one.
    assert box.calls["create_group"] == len(m.landed_groups)
    assert ("group", over) not in mapped
    for g in m.landed_groups:
        there = box.group_members(mapped[("group", g["group_id"])])
        assert there == {str(box.key(ids[u])) for u in [g["owner"], *g["members"]]}, g["group_id"]
    # Each pair once, both sides; no other friendship.
    friends = {u: box.friends(ids[u]) for u in source_ids}
    for a, b in m.pairs:
        assert str(box.key(ids[b])) in friends[a] and str(box.key(ids[a])) in friends[b]
    assert sum(map(len, friends.values())) == 2 * len(m.pairs)
    for op, repeats in (("register", 0), ("create_group", 0), ("add_members", 0),
                        ("import_friends", friend_repeats)):
        assert box.duplicates.get(op, 0) == repeats, (op, dict(box.duplicates))
    return mapped


def test_a_run_into_netease_from_files_lands_everything_once(tmp_path):
    ctx = run_context(tmp_path, "rongcloud", "netease")
    ids = [user(i) for i in range(USERS)]
    m = migration(tmp_path, ids, limit=ctx.target("new").rules.group_size)
    run_and_check(ctx, ids, runs.RunRequest(
        users=write_users(tmp_path / "u.csv", USERS), friends=m.friends, groups=m.groups_file,
        verify=True), m)
    assert len(ctx.sandbox("new").teams) == len(m.landed_groups)
    ctx.engine.dispose()


def test_a_run_into_rongcloud_from_files_lands_everything_once(tmp_path):
    # RongCloud's own limit (3,000 members): the largest groups take a create and joins.
    ctx = run_context(tmp_path, "netease", "rongcloud")
    ids = [user(i) for i in range(USERS)]
    m = migration(tmp_path, ids, limit=ctx.target("new").rules.group_size)
    run_and_check(ctx, ids, runs.RunRequest(
        users=write_users(tmp_path / "u.csv", USERS), friends=m.friends, groups=m.groups_file,
        verify=True), m)
    ctx.engine.dispose()


def test_a_run_into_openim_lists_its_accounts_from_a_maxim_source(tmp_path):
    # OpenIM documents no group limit: a deployment's own (group_size) is the limit.
    # On PostgreSQL (a database of its own): this run is the cheapest of the four.
    with throwaway_database() as url:
        ctx = run_context(tmp_path, "maxim", "openim", database_url=url, group_size=500)
        try:
            listed_from_maxim(ctx, tmp_path)
        finally:
            ctx.engine.dispose()


def listed_from_maxim(ctx, tmp_path):
    ids = seed_source(ctx)  # the usernames, not Maxim's numbers: the run's source ids
    m = migration(tmp_path, ids, limit=500)
    run_and_check(ctx, ids, runs.RunRequest(
        friends=m.friends, groups=m.groups_file, verify=True,
        source_pages=source_pages(ctx, "old")), m)


def test_a_run_into_maxim_lists_from_openim_and_uses_maxims_ids_in_every_later_stage(tmp_path):
    ctx = run_context(tmp_path, "openim", "maxim", group_size=500)
    ids = seed_source(ctx)
    m = migration(tmp_path, ids, limit=500)
    # Maxim's roster is per user, so each pair's other side is written too;
    # the sandbox keeps a friendship mutual, so that second write finds it there.
    mapped = run_and_check(ctx, ids, runs.RunRequest(
        friends=m.friends, groups=m.groups_file, verify=True,
        source_pages=source_pages(ctx, "old")), m, friend_repeats=len(m.pairs))
    # Every account and group under a number Maxim assigned, never the source's id;
    # the store checks above found members and friends under those numbers.
    assert all(t.isdigit() and t != s for (_, s), t in mapped.items())
    box = ctx.sandbox("new")
    assert set(box.users) == {int(t) for (kind, _), t in mapped.items() if kind == "user"}
    ctx.engine.dispose()
