"""Planning: turn a stream of input rows into a job's item rows, in batches.

Every input row becomes exactly one item, so nothing is silently dropped:
valid rows are `pending`; a row the target vendor would refuse is
`rejected` (code "invalid") with the reason; a repeated id (as the target
compares ids) is `rejected` (code "duplicate") naming the row it repeats. Memory stays flat: rows are
read, checked and inserted a batch at a time, and duplicates are found by the
database's unique (job, key) index rather than a set in memory (for a target
that folds ids, by a temporary table keyed by the folded form).
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable, Generator, Iterable, Iterator, Sequence

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from imshift.models import store
from imshift.models.db import json_text, json_value
from imshift.models.tables import Item, ItemState, Job, JobCount, JobStatus

from .inputs import InputError

BATCH = 5000
items = Item.__table__
jobs = Job.__table__
PENDING, REJECTED = ItemState.PENDING.value, ItemState.REJECTED.value  # enum .value is a property call
EXISTS = ItemState.EXISTS.value


@dataclass
class Spec:
    """One input row as an item: its key, payload, and why it is invalid (if it is)."""

    row: int
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    done: str | None = None  # a delta re-run: an earlier run finished it (stored `exists`, not sent)
    # Where the input stands after this spec (a listing's cursor after its
    # page): a batch ends at a marked spec and stores the mark with it.
    mark: Any = None


@dataclass
class SpecBatch:
    """Specs column by column, as planning stores them: spec i is row
    `rows[i]`, key `keys[i]`, payload `payloads[i]` (its JSON text), with
    `problems.get(i, [])` and `done.get(i)`. `mark` is the last spec's."""

    rows: Sequence[int]
    keys: list[str]
    payloads: list[str]
    problems: dict[int, list[str]] = field(default_factory=dict)
    done: dict[int, str] = field(default_factory=dict)
    mark: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of(cls, specs: list[Spec]) -> "SpecBatch":
        return cls([s.row for s in specs], [s.key for s in specs], [json_text(s.payload) for s in specs],
                   {i: s.problems for i, s in enumerate(specs) if s.problems},
                   {i: s.done for i, s in enumerate(specs) if s.done}, specs[-1].mark if specs else None)

    def specs(self) -> Iterator[Spec]:
        last = len(self.keys) - 1
        for i, (row, key, payload) in enumerate(zip(self.rows, self.keys, self.payloads, strict=False)):
            yield Spec(row, key, json_value(payload), list(self.problems.get(i, ())), self.done.get(i),
                       self.mark if i == last else None)


class SpecBatches:
    """Specs made a batch at a time (a columnar reader's): `plan` stores
    each SpecBatch as it comes; iterated, they are Specs one at a time."""

    def __init__(self, batches: Iterable[SpecBatch]):
        self._batches = iter(batches)

    def batches(self) -> Iterator[SpecBatch]:
        return self._batches

    def __iter__(self) -> Iterator[Spec]:
        for batch in self._batches:
            yield from batch.specs()


@dataclass
class PlanReport:
    job_id: int
    total: int = 0
    pending: int = 0
    invalid: int = 0
    duplicates: int = 0
    done: int = 0  # finished by an earlier run (a delta re-run)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (row, key, reason), first few
    seconds: float = 0.0


def create_job(engine: Engine, **fields: Any) -> int:
    with engine.begin() as conn:
        return conn.execute(insert(jobs).values(status=JobStatus.PLANNING.value,
                                                created_at=time.time(), **fields)
                            .returning(jobs.c.id)).scalar_one()


Checkpoint = Callable[[Connection, Any], None]


def plan(engine: Engine, job_id: int, specs: Iterable[Spec],
         progress: Callable[[int], None] | None = None,
         id_key: Callable[[str], str] | None = None, *,
         checkpoint: Checkpoint | None = None, carry_on: bool = False) -> PlanReport:
    """Store every spec as an item of `job_id`. `id_key` is how the target
    tells ids apart when not as written (NetEase: `Bob` is `bob`); repeats
    under it are duplicates. If reading the input fails part-way (an
    InputError), everything of the job is removed again and the error goes
    to the caller: nothing half-created. `checkpoint` is given each batch's
    last mark in that batch's transaction; `carry_on` adds to the items a
    cut-off planning of the job stored (the specs go on where it stopped)."""
    started = time.perf_counter()
    try:
        with engine.connect() as conn, _fewer_collections(), contextlib.ExitStack() as stack:
            try:
                postgresql = conn.dialect.name == "postgresql"
                report = PlanReport(job_id)
                if carry_on:
                    with conn.begin():
                        report = stored_report(conn, job_id)
                claims = _Claims(conn, id_key, job_id) if id_key else None
                if claims and carry_on:
                    claims.refill(conn, job_id)
                for batch in (stack.enter_context(contextlib.closing(_ahead(specs.batches())))
                              if isinstance(specs, SpecBatches) else spec_batches(specs)):
                    with conn.begin():
                        if postgresql:
                            # Each batch's commit does not wait for its WAL to reach the disk;
                            # the job's closing update below does, and with it every batch's
                            # (a crash in between loses whole batches, in order, with their
                            # checkpoints: a planning cut off, as it is anyway).
                            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                        _store_batch(conn, job_id, batch, report, claims)
                        if checkpoint and batch.mark is not None:
                            checkpoint(conn, batch.mark)
                    if progress:
                        progress(report.total)
            except BaseException:
                conn.invalidate()  # closed, not pooled: its temporary table goes with it
                raise
            if claims:
                claims.drop(conn)
            if conn.dialect.name == "postgresql":
                with conn.begin():
                    conn.exec_driver_sql("DROP TABLE IF EXISTS plan_rows")
    except NotOurs:
        raise
    except BaseException as exc:
        # A batch fails once its job is gone (a foreign-key violation, told
        # apart by the driver in its own words): that is a cancel, not a fault.
        gone = isinstance(exc, Exception) and not isinstance(exc, InputError) \
            and not _exists(engine, job_id)
        discard(engine, job_id)
        if gone:
            raise Cancelled(f"job {job_id} was cancelled while its input was being read") from None
        raise
    with engine.begin() as conn:
        if not conn.execute(update(jobs).where(jobs.c.id == job_id)
                            .values(total=report.total)).rowcount:
            raise Cancelled(f"job {job_id} was cancelled while its input was being read")
    report.seconds = time.perf_counter() - started
    return report


def _ahead(batches: Iterator[SpecBatch]) -> Generator[SpecBatch, None, None]:
    """The batches, each next one read and checked in a thread while the
    one before is stored: the database works (PostgreSQL's server, SQLite's
    steps in C) without the GIL meanwhile. Only for SpecBatches, whose
    making reads a file and touches no database. An error of the reader is
    raised here, in order; closing this stops the reader."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: B036 - handed to the planning thread as it is
            put(("error", exc))
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()

    reader = threading.Thread(target=read, name="imshift-plan-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "batch":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while reader.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                reader.join(0.05)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Young garbage collections every 50,000 allocations while planning,
    not every 700. A batch's columns live through hundreds of collections,
    reach the oldest generation and set off full collections of the whole
    heap: 36 of them, a quarter of the CPU of planning 1M rows (10.8 s
    against 8.1 s). Planning makes next to no reference cycles; the
    thresholds are put back as they were afterwards."""
    before = gc.get_threshold()
    if 0 < before[0] < 50_000:
        gc.set_threshold(50_000, *before[1:])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == 50_000:
            gc.set_threshold(*before)


class Cancelled(InputError):
    """The job was removed (`imshift cancel`) while it was being planned."""


class NotOurs(InputError):
    """The job's planning was taken over (or its run cancelled) meanwhile:
    what is stored is left as it is."""


def _exists(engine: Engine, job_id: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None


def discard(engine: Engine, job_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(delete(items).where(items.c.job_id == job_id))
        conn.execute(delete(JobCount.__table__).where(JobCount.__table__.c.job_id == job_id))
        conn.execute(delete(jobs).where(jobs.c.id == job_id))


def stored_report(conn: Connection, job_id: int) -> PlanReport:
    """The report of what a job's planning has stored so far."""
    counts = dict(conn.execute(select(JobCount.__table__.c.state, JobCount.__table__.c.n)
                               .where(JobCount.__table__.c.job_id == job_id)).all())
    codes: dict[str, int] = dict(conn.execute(select(items.c.code, func.count()).where(
        items.c.job_id == job_id, items.c.state == REJECTED).group_by(items.c.code)).all())
    report = PlanReport(job_id, total=sum(counts.values()), pending=counts.get(PENDING, 0),
                        invalid=codes.get("invalid", 0), duplicates=codes.get("duplicate", 0),
                        done=counts.get(EXISTS, 0))
    report.examples = [(r.row, r.key, r.message) for r in conn.execute(
        select(items.c.row, items.c.key, items.c.message).where(
            items.c.job_id == job_id, items.c.state == REJECTED).order_by(items.c.seq).limit(20))]
    return report


def spec_batches(specs: Iterable[Spec] | SpecBatches) -> Iterator[SpecBatch]:
    """The specs as SpecBatches of at most BATCH (a marked spec ends one)."""
    if isinstance(specs, SpecBatches):
        return specs.batches()
    return (SpecBatch.of(batch) for batch in batches(specs, BATCH))


def batches(specs: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of at most `size`; a marked spec (a listing's page end) also ends one."""
    batch: list[Spec] = []
    for spec in specs:
        batch.append(spec)
        if len(batch) >= size or getattr(spec, "mark", None) is not None:
            yield batch
            batch = []
    if batch:
        yield batch


class _Claims:
    """The id forms valid rows have taken, for a target that folds ids. The
    items' unique (job, key) index compares keys as written, so memory stays
    flat: an earlier valid row whose key is its own form (`bob`) is found by
    that index, and only the rows whose key is not (`Bob`) go into a
    temporary table on the planning connection, keyed by the form. So a
    file of ids already in the target's form costs no table and no lookup
    beyond the index; a file of mixed forms costs what it did."""

    def __init__(self, conn: Connection, id_key: Callable[[str], str], job_id: int):
        # VendorRules.id_key is its id_form where it has one: called straight
        # (str.lower runs in C under map), the same forms.
        self.id_key = getattr(getattr(id_key, "__self__", None), "id_form", None) or id_key
        self.job_id = job_id
        self.held = 0  # rows in plan_claims
        self.postgresql = conn.dialect.name == "postgresql"
        with conn.begin():
            conn.exec_driver_sql("CREATE TEMPORARY TABLE plan_claims "
                                 "(form text PRIMARY KEY, row integer, key text)")

    def refill(self, conn: Connection, job_id: int) -> None:
        """The forms the job's stored valid rows took (a planning carried on)."""
        after = -1
        while True:
            with conn.begin():
                page = conn.execute(select(items.c.seq, items.c.row, items.c.key).where(
                    items.c.job_id == job_id, items.c.seq > after,
                    items.c.state.in_([PENDING, EXISTS])).order_by(items.c.seq).limit(BATCH)).all()
                if not page:
                    return
                self._add(conn, [(form, r.row, r.key) for r in page
                                 if (form := self.id_key(r.key)) != r.key])
            after = page[-1].seq

    def take(self, conn: Connection, first: dict[str, int], batch: SpecBatch) -> dict[str, tuple[int, str]]:
        """Take the batch's forms (form -> index of the batch's spec that
        has it); returns those an earlier batch took first: form -> (row,
        key) of the row that took it."""
        rows, keys = batch.rows, batch.keys
        folded = [form for form, i in first.items() if keys[i] != form]
        earlier: dict[str, tuple[int, str]] = {}
        if folded:  # an earlier valid row holding the form as its key
            earlier.update((key, (row, key)) for key, row in self._select(
                conn, "SELECT key, row FROM items WHERE job_id = {job} AND state IN ('pending', 'exists') "
                      "AND key IN ({values})", folded))
        if self.held:  # an earlier valid row whose key is not its form
            earlier.update((form, (row, key)) for form, row, key in self._select(
                conn, "SELECT form, row, key FROM plan_claims WHERE form IN ({values})",
                [form for form in first if form not in earlier]))
        self._add(conn, [(form, rows[first[form]], keys[first[form]])
                         for form in folded if form not in earlier])
        return earlier

    def _select(self, conn: Connection, sql: str, values: list[str]) -> list[tuple]:
        """Rows of `sql` for an IN list of `values` (parts of 10,000: under
        SQLite's 32,766 parameters), through the driver."""
        found: list[tuple] = []
        marker = "%s" if self.postgresql else "?"
        cursor = _cursor(conn)
        try:
            for lo in range(0, len(values), 10_000):
                part = values[lo:lo + 10_000]
                cursor.execute(sql.format(job=int(self.job_id), values=",".join([marker] * len(part))), part)
                found += cursor.fetchall()
        finally:
            cursor.close()
        return found

    def _add(self, conn: Connection, claims: list[tuple[str, int, str]]) -> None:
        if not claims:
            return
        marker = "%s" if self.postgresql else "?"
        cursor = _cursor(conn)
        try:
            cursor.executemany(f"INSERT INTO plan_claims VALUES ({marker}, {marker}, {marker}) "
                               "ON CONFLICT (form) DO NOTHING", claims)
        finally:
            cursor.close()
        self.held += len(claims)

    def drop(self, conn: Connection) -> None:
        with conn.begin():
            conn.exec_driver_sql("DROP TABLE plan_claims")


def _duplicate(row: int, key: str, first_row: int, first_key: str) -> str:
    if first_key == key:
        return f"duplicate of row {first_row} (same id {key!r})"
    return (f"same account as row {first_row} at the target "
            f"({first_key!r} and {key!r} are one id there)")


# An item row as both insert paths send it: seq, key, row, payload (JSON
# text), state, code, message.
SEQ, KEY, ROW, PAYLOAD, STATE, CODE, MESSAGE = range(7)


def _store_batch(conn: Connection, job_id: int, batch: SpecBatch, report: PlanReport,
                 claims: _Claims | None) -> None:
    """Store one batch. Only a valid row takes its id: a rejected row holds
    its key only until a valid row with that id comes, then steps aside to
    `key#rowN`, so an invalid first row never makes a good one a duplicate.
    The common batch (every row valid and new) is handled column by column;
    only rejected, repeated or done rows are looked at one by one."""
    n, base = len(batch), report.total
    keys, rows, payloads, problems, done = batch.keys, batch.rows, batch.payloads, batch.problems, batch.done
    forms = list(map(claims.id_key, keys)) if claims else keys
    valid = [i for i in range(n) if i not in problems] if problems else range(n)
    # The batch's first valid row of each form: reversed, so the first one
    # of a form is the last written (and kept).
    first = dict(zip(map(forms.__getitem__, reversed(valid)), reversed(valid), strict=False))
    repeats: list[tuple[int, int, str]] = []  # index, first row, first key
    if len(first) != len(valid):
        repeats = [(i, rows[first[forms[i]]], keys[first[forms[i]]])
                   for i in valid if first[forms[i]] != i]
    if claims:
        for form, (row, key) in claims.take(conn, first, batch).items():
            repeats.append((first.pop(form), row, key))
    seqs = range(base, base + n)
    if not problems and not repeats and not done:  # every row pending, in order
        items_ = list(zip(seqs, keys, rows, payloads, repeat(PENDING), repeat(None), repeat(None)))
    else:
        kept = set(first.values())
        taken = {keys[i] for i in kept}  # the keys this batch's valid rows take
        items_ = []
        for i in range(n):
            if i in kept:
                d = done.get(i)
                items_.append((base + i, keys[i], rows[i], payloads[i], EXISTS if d else PENDING,
                               "done" if d else None, d))
            elif i in problems:
                key = _aside(keys[i], rows[i]) if keys[i] in taken else keys[i]
                taken.add(key)
                items_.append((base + i, key, rows[i], payloads[i], REJECTED, "invalid",
                               "; ".join(problems[i])))
    missing = _insert_new(conn, job_id, items_)
    later: list[tuple] = []  # rows stored after the first insert, under keys that cannot clash
    if missing:
        held_earlier = [r for r in items_ if r[SEQ] in missing]  # keys an earlier batch stored
        holders = {key: (row, code) for key, row, code in conn.execute(
            select(items.c.key, items.c.row, items.c.code).where(
                items.c.job_id == job_id, items.c.key.in_([r[KEY] for r in held_earlier])))}
        step_aside = [{"old": r[KEY], "new": f"{r[KEY]}#row{holders[r[KEY]][0]}"}
                      for r in held_earlier if r[STATE] != REJECTED and holders[r[KEY]][1] == "invalid"]
        if step_aside:
            conn.execute(update(items).where(items.c.job_id == job_id, items.c.key == bindparam("old"))
                         .values(key=bindparam("new")), step_aside)
        for r in held_earlier:
            row, code = holders[r[KEY]]
            i = r[SEQ] - base
            if r[STATE] == REJECTED:
                later.append((*r[:KEY], _aside(keys[i], rows[i]), *r[KEY + 1:]))
            elif code == "invalid":
                later.append(r)
            else:
                repeats.append((i, row, r[KEY]))
    later += [(base + i, _aside(keys[i], rows[i]), rows[i], payloads[i], REJECTED, "duplicate",
               _duplicate(rows[i], keys[i], row, key)) for i, row, key in repeats]
    if later:
        conn.execute(insert(items), [
            {"job_id": job_id, "attempts": 0, "seq": r[SEQ], "key": r[KEY], "row": r[ROW],
             "payload": json_value(r[PAYLOAD]), "state": r[STATE], "code": r[CODE],
             "message": r[MESSAGE]} for r in later])
    if not missing and not later and not problems and not done:  # all pending, as the fast path made them
        stored: list[tuple] = []
        counts = Counter({PENDING: n})
    else:
        stored = [r for r in items_ if r[SEQ] not in missing] + later
        counts = Counter(r[STATE] for r in stored)
    store.add_counts(conn, job_id, counts)
    report.total += n
    report.pending += counts[PENDING]
    report.done += counts[EXISTS]
    report.duplicates += len(repeats)
    report.invalid += sum(1 for r in stored if r[CODE] == "invalid")
    if len(report.examples) < 20:
        rejected = sorted((r for r in stored if r[STATE] == REJECTED), key=lambda r: r[SEQ])
        report.examples += [(r[ROW], keys[r[SEQ] - base], r[MESSAGE])
                            for r in rejected[:20 - len(report.examples)]]


def _aside(key: str, row: int) -> str:
    """The key of a row that does not hold its id: unique to the row."""
    return f"{key}#row{row}"


def _insert_new(conn: Connection, job_id: int, rows: list[tuple]) -> set[int]:
    """Insert item rows whose key is new to the job; returns the seqs of
    those not inserted (their key is the job's already)."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        return _insert_new_postgresql(conn, job_id, rows)
    return _insert_new_sqlite(conn, job_id, rows)


_SQLITE_INSERT = """
INSERT INTO items (job_id, seq, key, row, payload, state, attempts, code, message)
VALUES ({job_id:d}, ?, ?, ?, ?, ?, 0, ?, ?)
ON CONFLICT (job_id, key) DO NOTHING"""
_SQLITE_SEQS = "SELECT seq FROM items WHERE job_id = ? AND seq BETWEEN ? AND ?"


def _cursor(conn: Connection) -> Any:
    """A cursor of the driver's own connection under `conn` (sqlite3's, psycopg's)."""
    driver = conn.connection.driver_connection
    if driver is None:  # only once the connection was invalidated
        raise RuntimeError("the database connection is closed")
    return driver.cursor()


def _insert_new_sqlite(conn: Connection, job_id: int, rows: list[tuple]) -> set[int]:
    # The driver's executemany steps through the rows in C. With RETURNING,
    # SQLAlchemy builds multi-row VALUES statements in Python instead: 3.3 of
    # 8.3 s per 100k rows (pyinstrument, bench plan). The batch's seqs are
    # new to the table, so the seqs stored in its range are the rows
    # inserted; the rowcount says whether any was not.
    cursor = _cursor(conn)
    try:
        cursor.executemany(_SQLITE_INSERT.format(job_id=job_id), rows)
        if cursor.rowcount == len(rows):
            return set()
        cursor.execute(_SQLITE_SEQS, (job_id, rows[0][SEQ], rows[-1][SEQ]))
        stored = {seq for (seq,) in cursor}
    finally:
        cursor.close()
    return {r[SEQ] for r in rows} - stored


# Made once a planning connection, emptied by each batch's commit (a table
# created and dropped every batch cost the catalog's churn every batch).
_PG_STAGE = """CREATE TEMPORARY TABLE IF NOT EXISTS plan_rows (seq integer, key text, row integer,
payload text, state text, code text, message text) ON COMMIT DELETE ROWS"""
_PG_FROM_STAGE = """
INSERT INTO items (job_id, seq, key, row, payload, state, attempts, code, message)
SELECT %s, seq, key, row, CAST(payload AS json), state, 0, code, message FROM plan_rows
ON CONFLICT (job_id, key) DO NOTHING"""
# The batch's seqs are new to the table, so those stored in its range are the
# rows inserted: a range scan of the primary key. (An anti-join of plan_rows,
# a temporary table the planner has no statistics for, read the whole job's
# items every batch: 1M rows planned at 29k rows/s where 100k went at 71k.)
_PG_SEQS = "SELECT seq FROM items WHERE job_id = %s AND seq BETWEEN %s AND %s"


def _insert_new_postgresql(conn: Connection, job_id: int, rows: list[tuple]) -> set[int]:
    # COPY into a temporary table, then one INSERT ... SELECT that skips the
    # keys the job has already. psycopg adapts a list parameter element by
    # element in Python (an array per column: 26 us of CPU a row); COPY
    # writes rows in C (2.6 us a row, 5,000-row batches).
    with _cursor(conn) as cursor:
        cursor.execute(_PG_STAGE)
        with cursor.copy("COPY plan_rows FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        cursor.execute(_PG_FROM_STAGE, (job_id,))
        missing: set[int] = set()
        if cursor.rowcount != len(rows):
            cursor.execute(_PG_SEQS, (job_id, rows[0][SEQ], rows[-1][SEQ]))
            missing = {r[SEQ] for r in rows} - {seq for (seq,) in cursor.fetchall()}
        return missing
