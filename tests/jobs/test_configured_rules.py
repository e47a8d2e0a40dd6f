"""Planning, estimates and workers read the rules of the configured app, not
of the vendor's class: an OpenIM v2 deployment or a Maxim batch-size override
changes what is valid, how items are chunked and how long the job takes."""

from sqlalchemy import select

from imshift.jobs import kinds
from imshift.models import Item, Job
from imshift.vendors.vocabulary import Operation

from helpers import context

ROWS = "user_id,name,gender\nalice.smith,Alice,1\nbob_jones,Bob,2\n"


def plan_rows(tmp_path, database_url, app: dict, chunk_size: int = 200):
    ctx = context(database_url, apps={"t": app})
    path = tmp_path / "users.csv"
    path.write_text(ROWS, encoding="utf-8")
    target = ctx.target("t")
    planned = kinds.plan_user_migration(ctx.engine, target, path, source_app=None,
                                        chunk_size=chunk_size)
    with ctx.engine.begin() as conn:
        items = conn.execute(select(Item.__table__).order_by(Item.__table__.c.seq)).all()
        job = conn.execute(select(Job.__table__)).one()
    return ctx, target, planned, items, job


def test_openim_v2_rows_plan_with_nothing_rejected_and_gender_kept(tmp_path, database_url):
    ctx, target, planned, items, _ = plan_rows(
        tmp_path, database_url, {"vendor": "openim", "sandbox": True, "api_version": "v2"})
    assert planned.report.invalid == 0, planned.report.examples
    assert planned.ignored_columns == []
    assert [i.payload.get("extra") for i in items] == [{"gender": "1"}, {"gender": "2"}]
    # v2 registers one user a call, and the estimate says so
    assert target.batch_size(Operation.REGISTER) == 1
    assert target.estimate_seconds(Operation.REGISTER, 40) == 40 / target.rates["register"]
    ctx.engine.dispose()


def test_openim_v3_keeps_refusing_what_v3_refuses(tmp_path, database_url):
    ctx, target, planned, items, _ = plan_rows(
        tmp_path, database_url, {"vendor": "openim", "sandbox": True})
    assert planned.report.invalid == 1
    [(row, key, reason)] = planned.report.examples
    assert key == "alice.smith" and "not allowed" in reason
    assert planned.ignored_columns == ["gender"]  # v3 has no gender field
    assert target.batch_size(Operation.REGISTER) > 1
    ctx.engine.dispose()


def test_a_maxim_batch_size_override_changes_chunking_and_estimate(tmp_path, database_url):
    plain_ctx = context(database_url, apps={"t": {"vendor": "maxim", "sandbox": True}})
    plain = plain_ctx.target("t")
    plain_ctx.engine.dispose()
    ctx, target, planned, _, job = plan_rows(
        tmp_path, database_url,
        {"vendor": "maxim", "sandbox": True, "batch_sizes": {"register": 3}}, chunk_size=1)
    assert plain.batch_size(Operation.REGISTER) != 3
    assert target.batch_size(Operation.REGISTER) == 3
    assert job.params["chunk_size"] == 3  # a chunk carries at least one vendor batch
    assert (target.estimate_seconds(Operation.REGISTER, 300)
            != plain.estimate_seconds(Operation.REGISTER, 300))
    # the worker's client is built from the same configuration
    assert ctx.client("t").rules.batch_size[Operation.REGISTER] == 3
    ctx.engine.dispose()
