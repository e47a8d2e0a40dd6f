"""Workers inside the calling process: the embedded mode (no Redis), and tests."""

from __future__ import annotations

import contextlib
from typing import Iterator

import dramatiq

from . import heap


@contextlib.contextmanager
def in_process_workers(broker: dramatiq.Broker, threads: int = 8) -> Iterator[dramatiq.Worker]:
    heap.settle()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
