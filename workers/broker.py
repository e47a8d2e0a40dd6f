"""The Dramatiq broker: Redis when a URL is given, otherwise an in-process
broker so imshift runs on a fresh machine with nothing else installed."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

QUEUE = "imshift"


def make_broker(redis_url: str | None, *, heartbeat_timeout_ms: int = 60_000) -> dramatiq.Broker:
    """`heartbeat_timeout_ms`: how soon a dead worker's unacknowledged
    messages go back on the queue (Redis only)."""
    broker: dramatiq.Broker
    if redis_url:
        broker = RedisBroker(url=redis_url, heartbeat_timeout=heartbeat_timeout_ms)
    else:
        broker = StubBroker()
        broker.emit_after("process_boot")
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    return broker
