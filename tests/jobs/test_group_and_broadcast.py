"""Group sends in the vendor's batches and app-wide broadcasts of one call,
run by in-process workers against the sandboxes, on SQLite and PostgreSQL."""

import asyncio
import dataclasses

import pytest
from sqlalchemy import func, select

from imshift.jobs import kinds
from imshift.jobs import control
from imshift.jobs.progress import results
from imshift.models.tables import Job
from imshift.vendors.vocabulary import Message, Operation, Profile, Unsupported
from imshift.vendors.sandbox.store import Record
from imshift.workers.embedded import in_process_workers

from helpers import context, wait_until_done


def run(ctx, planned):
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker, threads=2):
        control.start(ctx.engine, ctx.broker, planned.report.job_id)
        return wait_until_done(ctx, planned.report.job_id, 60)


def test_a_group_send_reaches_every_member_in_the_vendors_batches(database_url, tmp_path):
    ctx = context(database_url, apps={"rc": {"vendor": "rongcloud", "sandbox": True}})
    box = ctx.sandbox("rc")
    members = {f"g{i}": {f"u{i}", f"u{i + 1}", "boss"} for i in range(7)}
    for group_id, who in members.items():
        box.store.groups[group_id] = Record(name=group_id, members=set(who))
    groups = tmp_path / "groups.txt"
    groups.write_text("".join(f"{g}\n" for g in members) + "g0\n")
    planned = kinds.plan_group_send(ctx.engine, ctx.target("rc"), groups, sender="boss",
                                    message=Message(text="release at 09:00"), chunk_size=100)
    assert planned.report.pending == 7 and planned.report.duplicates == 1
    p = run(ctx, planned)
    assert p.status == "finished" and p.counts == {"ok": 7, "rejected": 1}
    assert p.kind == "send_group"
    assert box.calls["send_group"] == 3  # RongCloud: 3 groups a call
    for i in range(8):
        got = [m["group"] for m in box.inbox(f"u{i}")]
        assert sorted(got) == sorted(g for g, who in members.items() if f"u{i}" in who)
    assert len(box.inbox("boss")) == 7


def test_a_broadcast_is_one_vendor_call_with_one_result(database_url):
    ctx = context(database_url, apps={"ne": {"vendor": "netease", "sandbox": True,
                                             "rates": {"broadcast": 5}}})
    box = ctx.sandbox("ne")
    users = [Profile(f"user{i}", f"User {i}") for i in range(5)]
    assert all(r.succeeded for r in asyncio.run(box.client().register_users(users)))
    planned = kinds.plan_broadcast(ctx.engine, ctx.target("ne"), sender="",
                                   message=Message(text="hello everyone"), chunk_size=100)
    assert planned.report.total == 1
    p = run(ctx, planned)
    assert p.status == "finished" and p.counts == {"ok": 1}
    assert box.calls["broadcast"] == 1
    for user in users:
        assert [m["text"] for m in box.inbox(user.user_id)] == ["hello everyone"]
    [item] = results(ctx.engine, p.job_id)
    assert item.key == "all" and item.state == "ok"


def test_a_vendor_without_a_broadcast_is_refused_before_a_job_exists(database_url):
    ctx = context(database_url, apps={"ne": {"vendor": "netease", "sandbox": True}})
    target = ctx.target("ne")
    without = dataclasses.replace(target, capabilities=target.capabilities - {Operation.BROADCAST})
    with pytest.raises(Unsupported, match="netease does not support broadcast"):
        kinds.plan_broadcast(ctx.engine, without, sender="", message=Message(text="x"),
                             chunk_size=100)
    with ctx.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 0
