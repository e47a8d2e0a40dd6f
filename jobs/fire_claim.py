"""Which scheduler plans a due fire, so that racing schedulers do not all plan it.

Exactly once does not rest on this (the fire row's unique key and the
compare-and-set in jobs/schedules.py do that); this only saves the work. On
PostgreSQL a fire's planning costs tens of milliseconds, and without a claim
every scheduler that woke at the due time planned the same job, then all but
one threw theirs away (bench/README.md, "schedule"). The claim is a session
advisory lock keyed by the schedule: the database drops it when the
holder's connection ends, so a scheduler killed mid-planning loses it at
once. SQLite has no such lock and plans in a few milliseconds: there every
scheduler may try, as before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

# The first key of the two-key advisory locks imshift takes for schedules
# (models/migrate.py holds a one-key lock of its own for migrations).
SCHEDULE_LOCKS = 7342002


@contextlib.contextmanager
def claim(engine: Engine, schedule_id: int) -> Iterator[bool]:
    """True while this process holds the schedule's claim; False when
    another scheduler holds it (that one is planning the fire)."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        got = conn.execute(select(func.pg_try_advisory_lock(SCHEDULE_LOCKS, schedule_id))).scalar()
        conn.commit()  # the lock is the session's, not this transaction's
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(select(func.pg_advisory_unlock(SCHEDULE_LOCKS, schedule_id)))
                conn.commit()
