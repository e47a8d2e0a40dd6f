"""Item state changes and the counts that follow them, on SQLite and PostgreSQL."""

import json

from sqlalchemy import insert
from sqlmodel import Session

from imshift.models import Item, ItemState, Job, JobStatus, make_engine
from imshift.models import store


def make_job(engine, n_items: int) -> int:
    with Session(engine, expire_on_commit=False) as s:
        job = Job(kind="migrate_users", operation="register", app="target",
                  status=JobStatus.RUNNING.value, total=n_items)
        s.add(job)
        s.commit()
        job_id = job.id
    with engine.begin() as conn:
        conn.execute(insert(Item.__table__), [
            {"job_id": job_id, "seq": i, "key": f"u{i}", "row": i + 2, "payload": {"name": f"N{i}"},
             "state": "pending", "attempts": 0} for i in range(n_items)])
        store.add_counts(conn, job_id, {ItemState.PENDING: n_items})
    return job_id


def test_claim_record_and_counts_stay_exact(database_url):
    engine = make_engine(database_url)
    job_id = make_job(engine, 10)
    with engine.begin() as conn:
        token, rows = store.claim(conn, job_id, 0, 6, lease=30, resend_expired=True)
        assert [r.seq for r in rows] == list(range(6))
        assert all(r.attempts == 1 for r in rows)
        # A second claim of the same range (a re-delivered message) gets nothing.
        _, again = store.claim(conn, job_id, 0, 6, lease=30, resend_expired=True)
        assert again == []
        assert store.counts(conn, job_id) == {"pending": 4, "claimed": 6}
        landed = store.record(conn, job_id, token, [
            {"seq": 0, "state": ItemState.OK, "result": {"user_id": "9001"}},
            {"seq": 1, "state": ItemState.REJECTED, "code": "1002", "message": "name too long"},
            {"seq": 2, "state": ItemState.PENDING, "code": "500", "not_before": 0},
        ])
        assert landed == 3
        assert store.counts(conn, job_id) == {"pending": 5, "claimed": 3, "ok": 1, "rejected": 1}
        assert store.recount(conn, job_id) == store.counts(conn, job_id)
    engine.dispose()


def test_an_expired_lease_is_reclaimed_or_marked_unknown(database_url):
    engine = make_engine(database_url)
    job_id = make_job(engine, 4)
    with engine.begin() as conn:
        old, _ = store.claim(conn, job_id, 0, 4, lease=10, resend_expired=True, now=1000)
        # Idempotent operation: a later worker takes the items over.
        new, rows = store.claim(conn, job_id, 0, 2, lease=10, resend_expired=True, now=1020)
        assert [r.seq for r in rows] == [0, 1] and all(r.attempts == 2 for r in rows)
        # The first worker's late writes do not land on items it lost.
        assert store.record(conn, job_id, old, [{"seq": 0, "state": ItemState.OK}]) == 0
        assert store.record(conn, job_id, new, [{"seq": 0, "state": ItemState.OK}]) == 1
        # A send: expired claims whose call was let go may have reached the
        # vendor, so they end unknown.
        store.mark_sent(conn, job_id, old, 2, 3, now=1001)
        _, rows = store.claim(conn, job_id, 2, 4, lease=10, resend_expired=False, now=1020)
        assert rows == []
        assert store.counts(conn, job_id) == {"claimed": 1, "ok": 1, "unknown": 2}
        assert store.recount(conn, job_id) == store.counts(conn, job_id)
    engine.dispose()


def test_an_expired_send_never_let_go_is_taken_again_not_unknown(database_url):
    engine = make_engine(database_url)
    job_id = make_job(engine, 4)
    with engine.begin() as conn:
        old, _ = store.claim(conn, job_id, 0, 4, lease=10, resend_expired=False, now=1000)
        store.mark_sent(conn, job_id, old, 0, 1, now=1001)  # one batch let go; 2 and 3 waited
        new, rows = store.claim(conn, job_id, 0, 4, lease=10, resend_expired=False, now=1020)
        assert [r.seq for r in rows] == [2, 3] and all(r.attempts == 2 for r in rows)
        assert store.counts(conn, job_id) == {"claimed": 2, "unknown": 2}
        # The new claim starts unsent: its worker marks what it lets go.
        _, rows = store.claim(conn, job_id, 0, 4, lease=10, resend_expired=False, now=1040)
        assert [r.seq for r in rows] == [2, 3]
        assert store.recount(conn, job_id) == store.counts(conn, job_id)
    engine.dispose()


def test_backoff_holds_items_until_due_and_jobs_finish_once(database_url):
    engine = make_engine(database_url)
    job_id = make_job(engine, 1)
    with engine.begin() as conn:
        token, _ = store.claim(conn, job_id, 0, 1, lease=10, resend_expired=True, now=100)
        store.record(conn, job_id, token, [{"seq": 0, "state": ItemState.PENDING, "not_before": 150}])
        assert store.claim(conn, job_id, 0, 1, lease=10, resend_expired=True, now=120)[1] == []
        token, rows = store.claim(conn, job_id, 0, 1, lease=10, resend_expired=True, now=151)
        assert len(rows) == 1
        assert not store.finish_if_done(conn, job_id)
        store.record(conn, job_id, token, [{"seq": 0, "state": ItemState.EXISTS}])
        assert store.finish_if_done(conn, job_id)
        assert not store.finish_if_done(conn, job_id)
        assert store.move(conn, job_id, [ItemState.EXISTS], ItemState.PENDING) == 1
        assert store.counts(conn, job_id) == {"pending": 1}
    engine.dispose()


def test_a_large_claim_and_record_keep_every_field(database_url):
    """More items than SQLite's record takes in one statement (1,000): every
    row, payload and outcome comes back as it was written."""
    engine = make_engine(database_url)
    job_id = make_job(engine, 2_500)
    with engine.begin() as conn:
        token, rows = store.claim(conn, job_id, 0, 2_500, lease=30, resend_expired=True)
        assert [r.seq for r in rows] == list(range(2_500))
        assert rows[7].key == "u7" and rows[7].row == 9 and rows[7].payload == {"name": "N7"}
        outcomes = [{"seq": r.seq, "state": ItemState.OK if r.seq % 2 else ItemState.FAILED,
                     "code": str(r.seq), "message": f"é {r.seq}", "result": {"n": r.seq},
                     "secret": b"\x00s" if r.seq == 3 else None} for r in rows]
        assert store.record(conn, job_id, token, outcomes) == 2_500
        assert store.counts(conn, job_id) == {"ok": 1_250, "failed": 1_250}
        assert store.recount(conn, job_id) == store.counts(conn, job_id)
        items = Item.__table__
        got = conn.execute(items.select().where(items.c.job_id == job_id, items.c.seq.in_([2, 3]))
                           .order_by(items.c.seq)).all()
        assert [(g.state, g.code, g.message, g.result, g.secret, g.claim) for g in got] == [
            ("failed", "2", "é 2", {"n": 2}, None, None), ("ok", "3", "é 3", {"n": 3}, b"\x00s", None)]
    engine.dispose()


def test_json_columns_take_what_the_json_module_takes():
    """orjson writes JSON columns; what it refuses (an integer past 64 bits,
    which a vendor's reply may carry) still goes in, through json."""
    from imshift.models.db import json_text

    value = {"big": 2 ** 70, "名": "Zoë", 1: None}
    assert json.loads(json_text(value)) == {"big": 2 ** 70, "名": "Zoë", "1": None}
    assert json_text({"name": "Zoë"}) == '{"name":"Zoë"}'
