"""Items whose create call was cut off before its answer was recorded:
looked up at the vendor before anything is sent again.

A worker killed between a create call and its record leaves the item
claimed with its call let go; the next claim takes it again coded
`interrupted` (models/store.py). Where the operation table says how to find
what such a call made (`Lookup` in vendors/operations.py), the vendor is
asked: one match that no other item has is the item's result; none means
the call never landed, so it is sent again; more than one ends `unknown`
naming them. A vendor with no read for it leaves the item `unknown` and says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import select

from imshift.models import store
from imshift.models.tables import IdMap, Item, ItemState
from imshift.vendors.client import CallFailed, VendorClient
from imshift.vendors.operations import Lookup, Step, WorkItem
from imshift.vendors.vocabulary import Outcome, Result

from .outcomes import decide

items = Item.__table__
id_map = IdMap.__table__
OPEN = (ItemState.PENDING.value, ItemState.CLAIMED.value)


@dataclass
class Looked:
    """What looking settled (rows, their results and outcomes) and the rows
    left to send."""

    to_send: list[Any]
    rows: list[Any] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)


async def look_up(runtime: Any, client: VendorClient, job: Any, token: str, rows: Sequence[Any],
                  step: Step, repeat_safe: bool) -> Looked:
    """Split the claimed rows into those settled by looking and those to send."""
    lookup = step.lookup
    if lookup is None or repeat_safe or not rows:
        return Looked(list(rows))
    flagged = await asyncio.to_thread(_interrupted, runtime, job.id, token, rows)
    if not flagged:
        return Looked(list(rows))
    looked = Looked([r for r in rows if r.seq not in flagged])
    cut_off = [r for r in rows if r.seq in flagged]
    found = await client.each(cut_off, lambda row: _find(client, lookup, row))
    others = await asyncio.to_thread(_others, runtime, job, cut_off, found)
    noun, why = lookup.noun, f"the worker stopped after sending; {step.unsure}"
    for row, candidates, (mapped, sibling) in zip(cut_off, found, others, strict=True):
        if isinstance(candidates, Result):  # the read failed
            looked.results.append(candidates)
            looked.outcomes.append(_still_unsure(runtime, row, candidates, why))
            continue
        if candidates is None:
            looked.outcomes.append(_unknown(row, f"{why}, and {client.vendor} has no read that "
                                                 "finds it, so it is not re-sent; check it there"))
            continue
        free = [c for c in candidates if c not in mapped]
        if not free:  # it never landed: the create goes out again
            looked.to_send.append(row)
        elif len(free) > 1 or sibling:
            whose = ("another item of this job may be making one of the same owner and name"
                     if sibling else "none of them is mapped to another item")
            looked.outcomes.append(_unknown(row, f"{why}: {noun}s {', '.join(free)} at the vendor "
                                                 f"match it and {whose}, so it is not re-sent; "
                                                 "check them there"))
        else:
            settled = await lookup.settle(client, WorkItem(row.seq, row.key, row.payload), free[0])
            looked.results.append(settled)
            if settled.succeeded:
                looked.rows.append(row)
                looked.outcomes.append(decide(runtime, row, settled, True, time.time()))
            else:
                looked.outcomes.append(_still_unsure(runtime, row, settled, why))
    looked.to_send.sort(key=lambda r: r.seq)
    return looked


async def _find(client: VendorClient, lookup: Lookup, row: Any) -> list[str] | None | Result:
    try:
        return await lookup.find(client, WorkItem(row.seq, row.key, row.payload))
    except CallFailed as failed:
        return failed.result


def _unknown(row: Any, message: str) -> dict[str, Any]:
    return {"seq": row.seq, "state": ItemState.UNKNOWN, "code": "unknown", "not_before": None,
            "message": f"{message} (`imshift retry --unknown` sends it again)"}


def _still_unsure(runtime: Any, row: Any, result: Result, why: str) -> dict[str, Any]:
    """A lookup that did not answer: tried again later, still coded
    interrupted, or `unknown` once the attempts are spent."""
    if result.outcome is Outcome.REJECTED:  # a refused read says nothing of the item
        result = Result(Outcome.RETRYABLE, result.code, result.message)
    again = decide(runtime, row, result, True, time.time())
    if again["state"] is ItemState.PENDING:
        return {**again, "code": store.INTERRUPTED,
                "message": f"{why}; looking it up failed ({result.message}), it is looked up again"}
    return _unknown(row, f"{why}, and looking it up failed: {result.message}; it is not re-sent")


def _interrupted(runtime: Any, job_id: int, token: str, rows: Sequence[Any]) -> set[int]:
    with runtime.engine.connect() as conn:
        return store.interrupted(conn, job_id, token, rows[0].seq, rows[-1].seq)


def _others(runtime: Any, job: Any, rows: Sequence[Any],
            found: Sequence[Any]) -> list[tuple[frozenset[str], bool]]:
    """Per row whose lookup found something: the candidates the run has
    already mapped, and whether an unfinished item of the job has the same
    owner and name (the one found may be that item's)."""
    out: list[tuple[frozenset[str], bool]] = []
    with runtime.engine.connect() as conn:
        for row, candidates in zip(rows, found, strict=True):
            if not isinstance(candidates, list) or not candidates:
                out.append((frozenset(), False))
                continue
            mapped = frozenset() if job.run is None else frozenset(conn.execute(
                select(id_map.c.target_id).where(id_map.c.run_id == job.run,
                                                 id_map.c.target_id.in_(candidates))).scalars())
            out.append((mapped, _has_sibling(conn, job.id, row.seq)))
    return out


def _has_sibling(conn: Any, job_id: int, seq: int) -> bool:
    """The payloads are compared as stored (source ids), one job's open items."""
    own = conn.execute(select(items.c.payload).where(items.c.job_id == job_id, items.c.seq == seq)).scalar()
    others = conn.execute(select(items.c.payload).where(
        items.c.job_id == job_id, items.c.seq != seq, items.c.state.in_(OPEN))).scalars()
    return any((o.get("owner"), o.get("name")) == (own.get("owner"), own.get("name")) for o in others)
