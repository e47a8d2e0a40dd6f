"""The bridge's per-app feed counters (duplicates, echoes, refused, ignored):
one row per (app, name), added to in the caller's transaction."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .tables import FeedCount

feed_counts = FeedCount.__table__


def count(conn: Connection, app: str, name: str, n: int = 1) -> None:
    if not n:
        return
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    statement = insert(feed_counts).values(app=app, name=name, n=n)
    conn.execute(statement.on_conflict_do_update(index_elements=["app", "name"],
                                                 set_={"n": feed_counts.c.n + statement.excluded.n}))
