"""Groups read from a source vendor that can list them (OpenIM v3), when a
run is given no groups file.

The listing is stored first, a page at a time: each page's groups (as the
rows a groups.jsonl line would be) and the cursor after it go into the
database in one transaction (listed_groups, runs.group_cursor), checked to
be still this planner's. A planning cut off mid-listing (its command
killed) carries on from the page after the last one stored, so no page is
read twice and none lost. The groups and members stages are then planned
from the stored rows by the same code as a file's (jobs/run_stages.py
`groups`); the rows are deleted in the transaction that marks the run
planned (jobs/runs.py).
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from typing import Any, AsyncGenerator, Callable, Iterator

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from imshift.models.tables import JobStatus, ListedGroup, Run
from imshift.vendors.vocabulary import Group

from .inputs import Row, _checked
from .listing import each_page
from .plan import NotOurs

GroupPages = Callable[[str | None], AsyncGenerator[tuple[list[Group], str | None], None]]

runs = Run.__table__
listed = ListedGroup.__table__
READ_BATCH = 200  # stored rows read at a time: a group's row holds all its members


def list_groups(engine: Engine, run_id: int, me: str, pages: GroupPages,
                progress: Callable[[str, int], None] | None = None) -> None:
    """List the source's groups into the run's stored rows, from where a
    cut-off listing stopped (nothing when the last page is in)."""
    with engine.connect() as conn:
        state = conn.execute(select(runs.c.group_cursor, runs.c.group_state)
                             .where(runs.c.id == run_id)).one()
        stored = conn.execute(select(func.count()).select_from(listed)
                              .where(listed.c.run_id == run_id)).scalar_one()
    if state.group_state == "listed":
        return
    with closing(each_page(pages, state.group_cursor)) as paged:
        for groups, after in paged:
            with engine.begin() as conn:
                stored += _store_page(conn, run_id, me, groups, after, stored)
            if progress:
                progress("groups", stored)


def _store_page(conn: Connection, run_id: int, me: str, groups: list[Group], after: str | None,
                stored: int) -> int:
    """One page and the cursor after it; returns how many rows were new. A
    group read a second time (the vendor's pages moved under a group created
    meanwhile) is kept once, the first time."""
    if not conn.execute(update(runs).where(
            runs.c.id == run_id, runs.c.planner == me, runs.c.status == JobStatus.PLANNING.value)
            .values(group_cursor=after, group_state="listed" if after is None else "listing",
                    planner_seen_at=time.time())).rowcount:
        raise NotOurs(f"run R{run_id} was cancelled or taken over by another command "
                      "while its groups were listed")
    ids = list(dict.fromkeys(g.group_id for g in groups))
    seen = set(conn.execute(select(listed.c.group_id).where(
        listed.c.run_id == run_id, listed.c.group_id.in_(ids))).scalars()) if ids else set()
    rows: list[dict[str, Any]] = []
    for group in groups:
        if group.group_id in seen:
            continue
        seen.add(group.group_id)
        rows.append({"run_id": run_id, "seq": stored + len(rows) + 1, "group_id": group.group_id,
                     "fields": _fields(group)})
    if rows:
        conn.execute(insert(listed), rows)
    return len(rows)


def stored_rows(engine: Engine, run_id: int) -> Iterator[Row]:
    """The run's listed groups as groups.jsonl rows, in the listing's order
    (line = the place in it), a batch at a time."""
    after = 0
    while True:
        with engine.connect() as conn:
            page = conn.execute(select(listed.c.seq, listed.c.fields).where(
                listed.c.run_id == run_id, listed.c.seq > after).order_by(listed.c.seq).limit(READ_BATCH)).all()
        if not page:
            return
        for seq, fields in page:
            yield _checked(Row(seq, dict(fields)))  # a NUL byte is the row's problem, as in a file
        after = page[-1].seq


def forget(conn: Connection, run_id: int) -> None:
    """Delete the run's listed groups (planned, or the run removed)."""
    conn.execute(delete(listed).where(listed.c.run_id == run_id))


def _fields(group: Group) -> dict[str, Any]:
    fields = {"key": group.group_id, "name": group.name, "owner": group.owner,
              "members": json.dumps(list(group.members), ensure_ascii=False)}
    fields.update({k: v for k, v in (("avatar", group.avatar), ("intro", group.intro)) if v})
    return fields


def cannot_list(source: str) -> str:
    """The plan's line when there is no groups file and the source cannot list its groups."""
    return f"groups: none given, and {source} cannot list them: pass --groups groups.jsonl"
