"""Maxim as a migration source: a listed user goes by its username (what the
app knows its users by), Maxim's numeric user_id kept beside it in the
profile's extra ("maxim_user_id"); `source_id = "user_id"` turns that round.
Runs go from the Maxim sandbox to another over in-process HTTP, with the
friends and groups files naming the same ids the accounts are listed by."""

import asyncio
import json
import time

import pytest

from imshift.jobs import run_control, runs
from imshift.runcli import source_pages
from imshift.vendors.maxim import MaximConfig
from imshift.vendors.sandbox.maxim import MaximSandbox
from imshift.vendors.vocabulary import Profile

from imshift.workers.embedded import in_process_workers
from tests.jobs.helpers import context, wait_until_done

NAMES = [f"app_user_{i:03d}" for i in range(25)]
FAST = {op: 500.0 for op in ("register", "update_profile", "get_profiles", "issue_token", "create_group",
                             "add_members", "import_friends", "get_members", "get_friends", "list_users")}


def run_to_the_end(ctx, run_id, timeout=60):
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        run_control.start(ctx.engine, ctx.broker, run_id)
        for _, stage in run_control.run_progress(ctx.engine, run_id).stages:
            deadline = time.monotonic() + timeout
            while wait_until_done(ctx, stage.job_id, timeout).status != "finished":
                assert time.monotonic() < deadline, f"stage job {stage.job_id} did not finish"
                time.sleep(0.1)
    return run_control.run_progress(ctx.engine, run_id)


async def seeded(box, **config):
    client = box.client()
    if config:
        client.config = MaximConfig(**{**client.config.__dict__, **config})
    results = await client.register_users([Profile(n, f"Name {n}") for n in NAMES])
    assert all(r.succeeded for r in results)
    return client, {n: r.data["user_id"] for n, r in zip(NAMES, results, strict=True)}


def test_a_listed_user_goes_by_its_username_with_its_number_beside():
    async def go():
        client, numbers = await seeded(MaximSandbox())
        listed = [p async for page, _ in client.list_user_pages(page_size=10) for p in page]
        assert sorted(p.user_id for p in listed) == NAMES
        assert all(p.extra["maxim_user_id"] == numbers[p.user_id] for p in listed)
        assert all(p.name == f"Name {p.user_id}" for p in listed)
        assert sorted([u async for u in client.list_users(page_size=7)]) == NAMES

    asyncio.run(go())


def test_source_id_user_id_lists_maxims_numbers_with_the_username_beside():
    async def go():
        client, numbers = await seeded(MaximSandbox(), source_id="user_id")
        listed = [p async for page, _ in client.list_user_pages() for p in page]
        assert {p.user_id: p.extra["username"] for p in listed} == {v: k for k, v in numbers.items()}

    asyncio.run(go())
    with pytest.raises(ValueError, match="source_id"):
        MaximConfig(app_id="a", access_token="t", source_id="nickname")


@pytest.mark.parametrize("target", ["rongcloud", "openim"])
def test_a_run_from_maxim_lands_the_usernames_with_their_friends_and_groups(target, tmp_path):
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "maxim", "sandbox": True, "rates": FAST},
                        "new": {"vendor": target, "sandbox": True, "rates": FAST}})

    async def fill():
        client = ctx.client("old")
        results = await client.register_users([Profile(n, f"Name {n}") for n in NAMES])
        await client.http.aclose()
        assert all(r.succeeded for r in results)

    asyncio.run(fill())
    pairs = list(zip(NAMES[:10], NAMES[1:11], strict=True))
    friends, groups = tmp_path / "f.csv", tmp_path / "g.jsonl"
    friends.write_text("user_id,friend_id\n" + "".join(f"{a},{b}\n" for a, b in pairs), encoding="utf-8")
    groups.write_text(json.dumps({"group_id": "crew", "name": "Crew", "owner": NAMES[0],
                                  "members": NAMES[1:6]}) + "\n", encoding="utf-8")
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"), runs.RunRequest(
        friends=friends, groups=groups, verify=True, source_pages=source_pages(ctx, "old")), chunk_size=100)
    assert plan.stages[0].ignored_columns == ["maxim_user_id"]  # kept beside, not sent
    p = run_to_the_end(ctx, plan.run_id)
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert p.status == "finished" and counts["accounts"] == {"ok": len(NAMES)}, counts
    assert counts["friends"] == {"ok": len(pairs)} and counts["groups"] == {"ok": 1}, counts
    assert set(counts["verify"]) == {"ok"}, counts
    box = ctx.sandbox("new")
    assert all(box.stored_profile(n).name == f"Name {n}" for n in NAMES)  # every username is there
    mapped = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, plan.run_id)}
    assert {s for kind, s in mapped if kind == "user"} == set(NAMES)
    assert {str(m) for m in box.group_members(mapped[("group", "crew")])} == set(NAMES[:6])
    assert NAMES[1] in {str(f) for f in box.friends(NAMES[0])}
    ctx.engine.dispose()
