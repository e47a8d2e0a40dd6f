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


# -- checking and storing a CSV column by column refuses the same rows for the same reasons

import csv
import io
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imshift.jobs import kinds
from imshift.jobs import plan as planning
from imshift.jobs.inputs import read_rows
from imshift.vendors.vocabulary import FieldRule

from helpers import context

RULES = [FieldRule(max_len=5), FieldRule(max_len=7, unit="bytes"), FieldRule(required=True),
         FieldRule(max_len=32, pattern=r"[A-Za-z0-9_@.\-]+", pattern_hint="letters", required=True),
         FieldRule(choices=("0", "1", "2")), FieldRule(pattern=r"\d*", max_len=3, unit="bytes")]
VALUES = st.text(st.sampled_from(["a", "Z", "0", "1", "3", " ", "-", "名", "🚀", "é", "\n"]), max_size=9)


@settings(max_examples=300, deadline=None)
@given(rule=st.sampled_from(RULES), values=st.lists(VALUES, max_size=12), skip_empty=st.booleans())
def test_check_many_gives_check_of_each_value(rule, values, skip_empty):
    expected = {i: rule.check("f", v) for i, v in enumerate(values)
                if not (skip_empty and v == "") and rule.check("f", v)}
    assert rule.check_many("f", values, skip_empty=skip_empty) == expected


def csv_text(header, rows):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


IDS = ["bob", "Bob", "BOB", "ann", "al ice", "x" * 40, "", " ", "a.b", "名字", "u1", "U1", "u2", "a\x00b"]
FIELDS = ["", "Ann", "名" * 70, "a\nb", "Zoë", "x,y", '"q"', "1", "3", "a@b.c", "e" * 70, "y" * 1100]
HEADERS = [["user_id", "name", "avatar"], ["uid", "nickname", "icon", "gender", "email", "foo"],
           ["name", "user_id", "ex", "sign", "mobile"], ["user_id", "name", "name"], ["id"]]


@st.composite
def user_files(draw):
    header = draw(st.sampled_from(HEADERS))
    rows = []
    for _ in range(draw(st.integers(0, 14))):
        row = [draw(st.sampled_from(IDS))] + [draw(st.sampled_from(FIELDS)) for _ in header[1:]]
        if "user_id" in header and header.index("user_id"):  # the id column second
            row.insert(header.index("user_id"), row.pop(0))
        width = draw(st.sampled_from([len(header)] * 6 + list(range(len(header) + 2))))
        rows.append((row + [""] * width)[:width] if width != len(header) else row)
    return csv_text(header, rows)


def specs_of(specs):
    return [(s.row, s.key, s.payload, s.problems, s.done) for s in specs]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=user_files(), vendor=st.sampled_from(["netease", "openim", "maxim", "rongcloud"]),
       size=st.integers(1, 5))
def test_columnar_user_specs_are_the_row_by_row_ones(tmp_path, monkeypatch, text, vendor, size):
    monkeypatch.setattr(kinds, "BATCH", size)
    path = tmp_path / "users.csv"
    path.write_text(text, encoding="utf-8")
    ctx = context(f"sqlite:///{tmp_path}/unused.db", apps={"t": {"vendor": vendor, "sandbox": True}})
    target = ctx.target("t")
    ignored_rows, ignored_columns = set(), set()
    one_by_one = specs_of(kinds.user_specs((r for r in read_rows(path)), target, ignored_rows))
    columnar = kinds.user_specs(read_rows(path), target, ignored_columns)
    assert isinstance(columnar, planning.SpecBatches)
    assert specs_of(columnar) == one_by_one
    assert ignored_columns == ignored_rows
    ctx.engine.dispose()


def stored_items(engine, job_id):
    with engine.begin() as conn:
        return [tuple(r) for r in conn.execute(
            select(Item.__table__.c.seq, Item.__table__.c.key, Item.__table__.c.row, Item.__table__.c.payload,
                   Item.__table__.c.state, Item.__table__.c.code, Item.__table__.c.message)
            .where(Item.__table__.c.job_id == job_id).order_by(Item.__table__.c.seq))]


def reference_plan(specs, size, id_key):
    """What planning stores, worked out in memory one spec at a time with the
    rules as jobs/plan.py kept them before it went by columns: batch by
    batch, the batch's first valid row of an id form takes it unless an
    earlier batch's did; a refused row keeps its key until a valid row wants
    it, then steps aside to key#rowN. Returns the items in seq order."""
    stored = {}  # seq -> [seq, key, row, payload, state, code, message]
    holder = {}  # key -> seq of the item holding it
    claims = {}  # id form -> (row, key) of the valid row that took it
    total = 0

    def aside(spec):
        return f"{spec.key}#row{spec.row}"

    for batch in planning.batches(specs, size):
        entries = list(enumerate(batch, total))
        first, repeats = {}, []
        for seq, spec in entries:
            if not spec.problems:
                held = first.setdefault(id_key(spec.key), (seq, spec))
                if held[0] != seq:
                    repeats.append((seq, spec, held[1].row, held[1].key))
        for form in list(first):
            if form in claims:
                seq, spec = first.pop(form)
                repeats.append((seq, spec, *claims[form]))
            else:
                claims[form] = (first[form][1].row, first[form][1].key)
        valid = {seq for seq, _ in first.values()}
        keys = {spec.key for _, spec in first.values()}
        rows = []
        for seq, spec in entries:
            if seq in valid:
                rows.append(([seq, spec.key, spec.row, spec.payload, "exists" if spec.done else "pending",
                              "done" if spec.done else None, spec.done], spec))
            elif spec.problems:
                key = aside(spec) if spec.key in keys else spec.key
                keys.add(key)
                rows.append(([seq, key, spec.row, spec.payload, "rejected", "invalid",
                              "; ".join(spec.problems)], spec))
        held_earlier = [(item, spec) for item, spec in rows if item[1] in holder]
        for item, _spec in rows:
            if item[1] not in holder:
                stored[item[0]], holder[item[1]] = item, item[0]
        holders = {item[1]: (stored[holder[item[1]]][2], stored[holder[item[1]]][5]) for item, _ in held_earlier}
        for item, _ in held_earlier:  # a valid row takes its key from a refused one
            row, code = holders[item[1]]
            if item[4] != "rejected" and code == "invalid" and item[1] in holder:
                moved = stored[holder.pop(item[1])]
                moved[1] = f"{item[1]}#row{row}"
                holder[moved[1]] = moved[0]
        later = []
        for item, spec in held_earlier:
            row, code = holders[item[1]]
            if item[4] == "rejected":
                later.append([item[0], aside(spec), *item[2:]])
            elif code == "invalid":
                later.append(item)
            else:
                repeats.append((item[0], spec, row, item[1]))
        for seq, spec, row, key in repeats:
            message = (f"duplicate of row {row} (same id {spec.key!r})" if key == spec.key else
                       f"same account as row {row} at the target ({key!r} and {spec.key!r} are one id there)")
            later.append([seq, aside(spec), spec.row, spec.payload, "rejected", "duplicate", message])
        for item in later:
            assert item[1] not in holder
            stored[item[0]], holder[item[1]] = item, item[0]
        total += len(batch)
    return [tuple(stored[seq]) for seq in sorted(stored)]


@pytest.mark.parametrize("seed", [7, 8])
def test_a_file_planned_column_by_column_stores_what_planning_one_spec_at_a_time_did(
        tmp_path, monkeypatch, database_url, seed):
    """Repeats within and across batches, ids NetEase folds together,
    refused rows that hold an id until a valid row wants it, unreadable
    and blank rows: every item as the row-by-row checks and the former
    planning rules (reference_plan) make it, through the columnar path."""
    import random
    rnd = random.Random(seed)
    lines = []
    for i in range(600):
        row = [rnd.choice(IDS + [f"u{i}", f"U{i // 3}", f"u{i // 7}", f"u{i // 50}"]), rnd.choice(FIELDS),
               rnd.choice(["", "http://a/b.png", "y" * 1100]), rnd.choice(["", "1", "2", "x"]),
               rnd.choice(["", "a@b.c", "e" * 70]), rnd.choice(["", "z"])]
        roll = rnd.random()
        lines.append(row[:rnd.randrange(6)] if roll < 0.03 else [" "] * 6 if roll < 0.05 else row)
    path = tmp_path / "users.csv"
    path.write_text(csv_text(["user_id", "name", "avatar", "gender", "email", "foo"], lines), encoding="utf-8")
    monkeypatch.setattr(planning, "BATCH", 37)
    monkeypatch.setattr(kinds, "BATCH", 37)
    ctx = context(database_url, apps={"t": {"vendor": "netease", "sandbox": True}})
    target = ctx.target("t")
    specs = list(kinds.user_specs((r for r in read_rows(path)), target, set()))  # row by row
    expected = reference_plan(specs, 37, target.rules.id_key)
    job_id = create_job(ctx.engine, kind="migrate_users", operation="register", app="t", params={})
    report = plan(ctx.engine, job_id, kinds.user_specs(read_rows(path), target, set()),
                  id_key=target.rules.id_key)
    got = stored_items(ctx.engine, job_id)
    assert got == expected
    codes = Counter(code for *_, code, _ in expected)
    assert (report.total, report.invalid, report.duplicates) == (len(expected), codes["invalid"],
                                                                 codes["duplicate"])
    assert codes["invalid"] > 20 and codes["duplicate"] > 20  # refused and repeated rows to compare
    assert any("are one id there" in message for *_, message in expected if message)
    assert any(key.endswith(f"#row{row}") and code == "invalid" for _, key, row, _, _, code, _ in got)
    ctx.engine.dispose()
