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
