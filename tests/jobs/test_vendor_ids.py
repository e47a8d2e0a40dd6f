"""Ids as the target compares them, and user data as written, from the input
file to the vendor: planning on SQLite and PostgreSQL with the real vendor
rules, runs against the sandboxes over in-process HTTP."""

import asyncio

import pytest

from imshift.jobs import control, kinds
from imshift.jobs.inputs import InputError
from imshift.jobs.progress import results
from imshift.vendors.vocabulary import Message, Profile
from imshift.workers.embedded import in_process_workers

from helpers import context, wait_until_done


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def by_row(ctx, job_id):
    return {i.row: i for i in results(ctx.engine, job_id)}


def test_netease_plans_bob_and_bob_as_one_account_naming_both_rows(database_url, tmp_path):
    ctx = context(database_url, apps={"new": {"vendor": "netease", "sandbox": True}})
    filler = [f"user_{i:05d},N{i}" for i in range(6000)]  # the next batch repeats ann
    users = write_csv(tmp_path / "u.csv", ["accid,name", "Bob,First", "ann,Ann", "bob,Second",
                                           *filler, "ANN,Late", "B o b,Bad"])
    r = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app=None,
                                  chunk_size=100).report
    assert (r.pending, r.invalid, r.duplicates) == (6002, 1, 2)
    items = by_row(ctx, r.job_id)
    assert (items[2].key, items[2].state) == ("Bob", "pending")  # the id as written goes out
    assert (items[4].state, items[4].code, items[4].message) == (
        "rejected", "duplicate",
        "same account as row 2 at the target ('Bob' and 'bob' are one id there)")
    assert items[6005].message == "same account as row 3 at the target ('ann' and 'ANN' are one id there)"
    assert (4, "bob", items[4].message) in r.examples

    to = write_csv(tmp_path / "to.txt", ["Bob", "bob", "BOB"])
    r = kinds.plan_send(ctx.engine, ctx.target("new"), to, sender="ann", message=Message(text="hi"),
                        chunk_size=100).report
    assert (r.pending, r.duplicates) == (1, 2)
    ctx.engine.dispose()


def test_openim_keeps_apart_the_forms_its_database_keeps_apart(database_url, tmp_path):
    # OpenIM v3 stores userID byte-exact and accepts any Unicode letter: the
    # composed and the full-width name are two accounts there, so two here;
    # a combining accent is not a letter (IsLegalUserID), so the rules refuse it.
    ctx = context(database_url, apps={"new": {"vendor": "openim", "sandbox": True}})
    users = write_csv(tmp_path / "u.csv", ["user_id,name", "jos\u00e9,A", "jose\u0301,B",
                                           "\uff4a\uff4f\uff53\u00e9,C", "Bob,D", "bob,E"])
    r = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app=None,
                                  chunk_size=100).report
    assert (r.pending, r.invalid, r.duplicates) == (4, 1, 0)
    items = by_row(ctx, r.job_id)
    assert items[3].code == "invalid" and "is not allowed (letters, digits and _)" in items[3].message
    assert [items[n].key for n in (2, 4, 5, 6)] == ["jos\u00e9", "\uff4a\uff4f\uff53\u00e9", "Bob", "bob"]
    ctx.engine.dispose()


def test_a_nul_byte_is_a_rejected_row_on_every_database(database_url, tmp_path):
    ctx = context(database_url, apps={"new": {"vendor": "rongcloud", "sandbox": True}})
    users = tmp_path / "u.csv"
    users.write_bytes(b"user_id,name\nal\x00ice,Alice\nbob,B\x00b\ncarol,Carol\n")
    r = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app=None,
                                  chunk_size=100).report
    assert (r.total, r.pending, r.invalid) == (3, 1, 2)
    items = by_row(ctx, r.job_id)
    assert [(items[n].state, items[n].message) for n in (2, 3, 4)] == [
        ("rejected", "user_id: contains a NUL byte"), ("rejected", "name: contains a NUL byte"),
        ("pending", None)]
    to = tmp_path / "to.txt"
    to.write_bytes(b"a\x00b\ncarol\n")
    r = kinds.plan_send(ctx.engine, ctx.target("new"), to, sender="carol", message=Message(text="hi"),
                        chunk_size=100).report
    assert (r.total, r.pending, r.invalid) == (2, 1, 1)
    ctx.engine.dispose()


def run(ctx, planned):
    job_id = planned.report.job_id
    with in_process_workers(ctx.broker, threads=2):
        control.start(ctx.engine, ctx.broker, job_id)
        return job_id, wait_until_done(ctx, job_id, 60)


def test_netease_gets_names_as_written_one_account_per_id_and_one_message_each(
        database_url, redis_server, tmp_path):
    ctx = context(database_url, redis_server.url, apps={"new": {"vendor": "netease", "sandbox": True}})
    box = ctx.sandbox("new")
    ctx.runtime  # noqa: B018  (configures the workers)
    users = write_csv(tmp_path / "u.csv", ["accid,name", "Bob,  spaced  ", "bob,Second",
                                           " ann,Ann", "ann,\tAnn "])
    job_id, p = run(ctx, kinds.plan_user_migration(ctx.engine, ctx.target("new"), users,
                                                   source_app=None, chunk_size=100))
    assert p.counts == {"ok": 2, "rejected": 2}, p
    assert box.stored_profile("bob").name == "  spaced  "  # the first profile, not overwritten
    assert box.stored_profile("ann").name == "\tAnn "
    items = by_row(ctx, job_id)
    assert "' ann' is not allowed" in items[4].message  # the vendor's rules refuse it as written

    async def sender():
        return await box.client().register_users([Profile("sender", "S")])

    assert all(r.succeeded for r in asyncio.run(sender()))
    to = write_csv(tmp_path / "to.txt", ["Bob", "ann", "bob", "BOB"])
    job_id, p = run(ctx, kinds.plan_send(ctx.engine, ctx.target("new"), to, sender="sender",
                                         message=Message(text="once"), chunk_size=100))
    assert p.counts == {"ok": 2, "rejected": 2}, p
    assert len(box.inbox("bob")) == 1 and len(box.inbox("ann")) == 1
    ctx.engine.dispose()


def test_a_netease_plan_that_fails_part_way_leaves_nothing_for_the_next_one(database_url, tmp_path):
    ctx = context(database_url, apps={"new": {"vendor": "netease", "sandbox": True}})
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"accid,name\n" + b"".join(b"u%d,N\n" % i for i in range(6000)) + b"x,\xff\n")
    with pytest.raises(InputError, match="line 6002 is not UTF-8"):
        kinds.plan_user_migration(ctx.engine, ctx.target("new"), broken, source_app=None, chunk_size=100)
    for _ in range(2):  # the same engine (and pool) plans again, twice
        users = write_csv(tmp_path / "u.csv", ["accid,name", "u1,A", "U1,B"])
        r = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app=None,
                                      chunk_size=100).report
        assert (r.pending, r.duplicates) == (1, 1)
    ctx.engine.dispose()
