"""Planning on SQLite and PostgreSQL: every row one item, bad rows named."""

import pytest
from sqlalchemy import select

from imshift.jobs.plan import Spec, create_job, plan
from imshift.models import Item, make_engine
from imshift.models import store


def specs(n, dup_every=0, bad_every=0):
    for i in range(n):
        key = f"u{i // 2}" if dup_every and i % dup_every == 1 else f"u{i}"
        problems = ["user_id: too long"] if bad_every and i % bad_every == 0 else []
        yield Spec(row=i + 2, key=key, payload={"name": f"N{i}"}, problems=problems)


def test_every_row_becomes_one_item_with_duplicates_and_invalid_rows_named(database_url):
    engine = make_engine(database_url)
    job_id = create_job(engine, kind="migrate_users", operation="register", app="t", params={})
    # 12,000 rows cross batch boundaries, so some duplicates repeat an earlier batch.
    rows = list(specs(12_000, bad_every=1000)) + [Spec(row=99_999, key="u5", payload={})]
    report = plan(engine, job_id, rows)
    assert report.total == 12_001
    assert report.duplicates == 1
    assert report.invalid == 12
    assert report.pending == 12_001 - 1 - 12
    with engine.begin() as conn:
        assert store.counts(conn, job_id) == {"pending": report.pending, "rejected": 13}
        assert store.recount(conn, job_id) == {"pending": report.pending, "rejected": 13}
        dup = conn.execute(select(Item.__table__).where(Item.__table__.c.code == "duplicate")).one()
    assert dup.row == 99_999 and dup.seq == 12_000
    assert dup.message == "duplicate of row 7 (same id 'u5')"
    engine.dispose()


def test_a_failing_input_leaves_nothing_behind(database_url):
    engine = make_engine(database_url)
    job_id = create_job(engine, kind="migrate_users", operation="register", app="t", params={})

    def broken():
        yield from specs(6000)
        raise ValueError("line 6001 is not UTF-8")

    with pytest.raises(ValueError, match="not UTF-8"):
        plan(engine, job_id, broken())
    with engine.begin() as conn:
        assert conn.execute(select(Item.__table__.c.seq)).first() is None
        assert store.counts(conn, job_id) == {}
    engine.dispose()


def items_by_row(engine, job_id):
    with engine.begin() as conn:
        return {r.row: r for r in conn.execute(select(Item.__table__).where(
            Item.__table__.c.job_id == job_id))}


def test_a_rejected_row_does_not_take_the_id_from_a_later_valid_row(database_url):
    engine = make_engine(database_url)
    job_id = create_job(engine, kind="migrate_users", operation="register", app="t", params={})
    bad = ["user_id: too long"]
    rows = [Spec(2, "u1", problems=bad), Spec(3, "u1"), Spec(4, "u1"),  # in one batch
            Spec(5, "far", problems=bad), Spec(6, "far", problems=bad),
            Spec(7, "kept", problems=bad)]
    rows += [Spec(10 + i, f"fill{i}") for i in range(6000)]  # the next batch repeats "far"
    rows += [Spec(90_000, "far"), Spec(90_001, "far"), Spec(90_002, "far", problems=bad)]
    report = plan(engine, job_id, rows)
    assert (report.total, report.pending, report.invalid, report.duplicates) == (6009, 6002, 5, 2)
    got = items_by_row(engine, job_id)
    assert (got[3].key, got[3].state) == ("u1", "pending")
    assert (got[90_000].key, got[90_000].state) == ("far", "pending")
    assert got[4].message == "duplicate of row 3 (same id 'u1')"
    assert got[90_001].message == "duplicate of row 90000 (same id 'far')"
    for row in (2, 5, 6, 90_002):  # still rejected for their own reason, under a key of their own
        assert (got[row].state, got[row].code, got[row].message) == ("rejected", "invalid", bad[0])
    assert {got[r].key for r in (2, 5, 6, 90_002)} == {"u1#row2", "far#row5", "far#row6", "far#row90002"}
    assert got[7].key == "kept"  # nobody valid wanted it: it keeps its id as written
    with engine.begin() as conn:
        assert store.counts(conn, job_id) == store.recount(conn, job_id) == {
            "pending": 6002, "rejected": 7}
    engine.dispose()


def test_a_job_cancelled_while_it_is_planned_ends_planning_with_one_clear_error(database_url):
    from imshift.jobs import control
    from imshift.jobs.plan import Cancelled

    engine = make_engine(database_url)
    job_id = create_job(engine, kind="migrate_users", operation="register", app="t", params={})

    def cancelled_midway():
        for i, spec in enumerate(specs(12_000)):
            if i == 6_000:  # the first batch is stored; the user cancels the half-planned job
                control.cancel(engine, job_id)
            yield spec

    with pytest.raises(Cancelled, match=f"job {job_id} was cancelled while its input was being read"):
        plan(engine, job_id, cancelled_midway())
    with engine.begin() as conn:
        assert conn.execute(select(Item.__table__.c.seq)).first() is None
    engine.dispose()
