"""Workers inside the calling process: the embedded mode (no Redis), and tests.

Without Redis, the command that starts a job is its only runner: its chunk
messages live in its own memory. The job records that runner ("host:pid")
and a heartbeat, so when the command is killed `imshift resume` can tell a
runner that is gone (its process no longer exists on this host, or no
heartbeat for GONE_AFTER seconds) from one that is alive, and take over only
the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Iterator

import dramatiq
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import exc, update

from imshift.models.tables import Job, JobStatus

from . import heap
from . import runtime as runtime_module

log = logging.getLogger("imshift.workers")
jobs = Job.__table__

BEAT = 5.0  # seconds between heartbeats
GONE_AFTER = 30.0  # six missed heartbeats: the runner is gone (or cut off from the database)


def runner_id(broker: dramatiq.Broker) -> str | None:
    """This process, when it runs its jobs itself (an in-process broker);
    None when shared workers do (Redis)."""
    return f"{socket.gethostname()}:{os.getpid()}" if isinstance(broker, StubBroker) else None


def runner_gone(runner: str, seen_at: float | None, now: float) -> bool:
    """Whether the runner of a job is gone. On this host its process is
    looked up (a pid taken by another process still needs a fresh heartbeat);
    on another host only the heartbeat can tell."""
    if seen_at is None or now - seen_at > GONE_AFTER:
        return True
    host, _, pid = runner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _beat(runner: str, stop: threading.Event) -> None:
    while not stop.wait(BEAT):
        try:
            engine = runtime_module.current().engine
        except RuntimeError:  # no runtime configured: nothing of ours runs here
            continue
        try:
            with engine.begin() as conn:
                conn.execute(update(jobs).where(jobs.c.runner == runner,
                                                jobs.c.status == JobStatus.RUNNING.value)
                             .values(runner_seen_at=time.time()))
        except Exception:  # the database may be restarting: beat again next time
            log.warning("runner heartbeat failed; retrying in %.0f s", BEAT, exc_info=True)


DATABASE_DOWN = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                 exc.PendingRollbackError)


class QuietDatabaseDown(logging.Filter):
    """Drops records whose exception is the database failing (not a bug):
    the command that runs these workers reports that in one line, naming
    what continues the work, and each thread's traceback of it (a dozen or
    more, hundreds of lines) would bury that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if isinstance(error, DATABASE_DOWN):
                return False
            error = error.__cause__ or error.__context__
        return True


@contextlib.contextmanager
def in_process_workers(broker: dramatiq.Broker, threads: int = 8) -> Iterator[dramatiq.Worker]:
    quiet = QuietDatabaseDown()
    handlers = logging.getLogger().handlers or [h for h in (logging.lastResort,) if h is not None]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        with _workers(broker, threads) as worker:
            yield worker
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


@contextlib.contextmanager
def _workers(broker: dramatiq.Broker, threads: int) -> Iterator[dramatiq.Worker]:
    heap.settle()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    runner = runner_id(broker)
    if runner:
        threading.Thread(target=_beat, args=(runner, stop), name="imshift-heartbeat",
                         daemon=True).start()
    try:
        yield worker
    finally:
        stop.set()
        worker.stop()
