"""Feed deliveries stored by one writer thread, many in one transaction.

Every delivery must be stored before it is answered, and hundreds arrive a
second. Each in a transaction of its own made the hooks' threads queue on
the database's write lock (SQLite's busy handler sleeps up to 100 ms a
try): feed answers took 10 ms at the median and 250 ms at p99 at 330
deliveries/s. One writer takes whatever has arrived while it wrote the last
batch and writes it in one transaction, so a delivery waits for at most one
batch before its own, and is answered only once that transaction commits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy.engine import Engine

from imshift.vendors.feeds import FeedMessage, FeedRefused
from imshift.workers import relay

from . import bridges

log = logging.getLogger("imshift.jobs")
MOST = 500  # deliveries in one transaction
CHECKPOINT_EVERY = 1.0  # seconds, SQLite only


@dataclass
class _Delivery:
    app: str
    messages: Sequence[FeedMessage]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future


class Ingest:
    """`await store(app, messages)`: the bridge to wake once it is committed
    (None when none needs waking). Raises FeedRefused when no bridge takes
    the app's feed, or what the database raised."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.waiting: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    async def store(self, app: str, messages: Sequence[FeedMessage]) -> int | None:
        loop = asyncio.get_running_loop()
        delivery = _Delivery(app, messages, loop, loop.create_future())
        self._start()
        self.waiting.put(delivery)
        return await delivery.done

    def _start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._write_forever, name="imshift-feed-writer",
                                               daemon=True)
                self.thread.start()
                if self.engine.dialect.name == "sqlite":
                    threading.Thread(target=self._checkpoint_forever, name="imshift-feed-checkpoint",
                                     daemon=True).start()

    def close(self) -> None:
        """Stop the writer once what it holds is written (the server is stopping)."""
        self.stopped.set()
        self.waiting.put(None)  # type: ignore[arg-type]  # wakes the writer to see the stop

    def _checkpoint_forever(self) -> None:
        """The WAL copied back into the database beside the writer, which
        never does it itself (see _write): a checkpoint in the commit that
        triggers it held deliveries 100-500 ms. A passive one waits for nobody."""
        while not self.stopped.wait(CHECKPOINT_EVERY):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:  # the next one tries again
                log.debug("WAL checkpoint: %s", exc)

    def _write_forever(self) -> None:
        while True:
            batch = [self.waiting.get()]
            while len(batch) < MOST:
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            batch = [d for d in batch if d is not None]
            if not batch:
                if self.stopped.is_set():
                    return
                continue
            try:
                answers = self._write(batch)
            except Exception as exc:  # the database failed: every delivery of the batch is refused
                log.warning("storing %d feed deliveries failed: %s", len(batch), exc)
                answers = [exc] * len(batch)
            for delivery, answer in zip(batch, answers, strict=True):
                delivery.loop.call_soon_threadsafe(_settle, delivery.done, answer)

    def _write(self, batch: list[_Delivery]) -> list[Any]:
        """One transaction: per app, its bridge looked up once and all its
        deliveries' messages stored by one insert; each delivery's answer."""
        now = time.time()
        answers: dict[int, Any] = {}
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # The commit that passes the WAL's size would also copy it back into
                # the database (100-500 ms): _checkpoint_forever does that instead.
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            for app in dict.fromkeys(d.app for d in batch):
                mine = [i for i, d in enumerate(batch) if d.app == app]
                bridge = bridges.feeding(conn, app)
                if bridge is None:
                    refused = FeedRefused(404, f"no bridge takes {app}'s feed (`imshift bridge add`)")
                    answers.update((i, refused) for i in mine)
                    continue
                received = bridges.receive(conn, bridge, app,
                                           [m for i in mine for m in batch[i].messages], now)
                # A relayer holding the turn reads what is stored: no wake (and no write) needed.
                idle = bridge.relayer_until is None or bridge.relayer_until < now
                wake = bool(received.stored) and idle and relay.wake_needed(conn, bridge.id, now)
                answers.update((i, bridge.id if wake and i == mine[0] else None) for i in mine)
        return [answers[i] for i in range(len(batch))]


def _settle(done: asyncio.Future, answer: Any) -> None:
    if done.cancelled():
        return
    if isinstance(answer, BaseException):
        done.set_exception(answer)
    else:
        done.set_result(answer)
