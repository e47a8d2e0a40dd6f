"""The Dramatiq actor, declared on the broker the process was given."""

from __future__ import annotations

import dramatiq

from . import runtime as runtime_module
from .broker import QUEUE
from .chunk import run_chunk as run_chunk_now
from .relay import RUN_FOR
from .relay import relay_bridge as relay_bridge_now


async def run_chunk(job_id: int, start: int, end: int) -> None:
    """Work the items with start <= seq < end of job `job_id`."""
    await run_chunk_now(runtime_module.current(), job_id, start, end)


async def relay_bridge(bridge_id: int) -> None:
    """Relay bridge `bridge_id`'s waiting messages while this process holds its turn."""
    await relay_bridge_now(runtime_module.current(), bridge_id)


def declare(broker: dramatiq.Broker, *, time_limit_ms: int) -> dramatiq.Actor:
    """Bind the actor to `broker` (once per broker). Dramatiq's Retries
    middleware retries a chunk whose run raised (a database outage, say);
    per-item retries are ours, by re-sending the chunk with a delay."""
    if "run_chunk" in broker.actors:
        return broker.actors["run_chunk"]
    # A relayer gives its turn back after RUN_FOR and wakes the next; a failed
    # one is woken again by the sweeper, so no queue-level retries.
    dramatiq.actor(actor_name="relay_bridge", queue_name=QUEUE, broker=broker,
                   max_retries=0, time_limit=int((RUN_FOR + 60) * 1000))(relay_bridge)
    return dramatiq.actor(actor_name="run_chunk", queue_name=QUEUE, broker=broker,
                          max_retries=20, min_backoff=1_000, max_backoff=60_000,
                          time_limit=time_limit_ms)(run_chunk)
