"""Sending chunk messages: a message names a job and an item range, never
the items' data or a secret (the database is the source of truth)."""

from __future__ import annotations

from typing import Iterable

import dramatiq
from sqlalchemy import select
from sqlalchemy.engine import Connection

from imshift.models.tables import Item, ItemState


def chunk_ranges(total: int, chunk_size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, total, chunk_size):
        yield start, min(start + chunk_size, total)


def enqueue_ranges(broker: dramatiq.Broker, job_id: int, ranges: Iterable[tuple[int, int]]) -> int:
    actor = broker.actors["run_chunk"]
    sent = 0
    for start, end in ranges:
        actor.send(job_id, start, end)
        sent += 1
    return sent


def open_ranges(conn: Connection, job_id: int, chunk_size: int) -> list[tuple[int, int]]:
    """The chunks of a job that still have pending or claimed items."""
    items = Item.__table__
    first = items.c.seq // chunk_size
    starts = conn.execute(select(first).distinct().where(
        items.c.job_id == job_id,
        items.c.state.in_([ItemState.PENDING.value, ItemState.CLAIMED.value]))).scalars()
    return [(int(s) * chunk_size, int(s) * chunk_size + chunk_size) for s in sorted(starts)]
