"""`imshift worker --processes N`: N worker processes, kept alive.

The pool is the `imshift worker` process itself. Each worker is a child
(`python -m imshift.pool`) running one Dramatiq worker. A child that dies
(killed, crashed) is started again after a back-off that doubles with each
quick death, so the pool stays at N without spinning on a fault. A child
that cannot start because of the settings stops the whole pool: a restart
would fail the same way. SIGTERM, SIGINT or SIGHUP stops every child
cleanly (each finishes or releases the chunks it holds).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("imshift.pool")

EXIT_SETTINGS = 2  # a child's settings cannot work: do not restart it
STEADY_SECONDS = 60.0  # a child that lived this long resets the back-off
MAX_BACKOFF = 30.0
STOP_SECONDS = 60.0  # how long children get to stop before they are killed
LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"


@dataclass
class Slot:
    process: subprocess.Popen | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def backoff(quick_deaths: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** max(0, quick_deaths - 1)) if quick_deaths else 0.0


def supervise(processes: int, threads: int) -> int:
    """Run `processes` workers until a signal stops the pool; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    command = [sys.executable, "-m", "imshift.pool", "--threads", str(threads)]
    slots = [Slot() for _ in range(processes)]
    stopping = threading.Event()

    def stop(signum, frame) -> None:
        stopping.set()
        for slot in slots:
            if slot.process and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    code = 0
    while not stopping.is_set():
        now = time.monotonic()
        for n, slot in enumerate(slots):
            if slot.process is None:
                if now >= slot.restart_at:
                    slot.process, slot.started = subprocess.Popen(command), now
                    log.info("worker %d: process %d started", n, slot.process.pid)
                continue
            returned = slot.process.poll()
            if returned is None:
                continue
            if returned == EXIT_SETTINGS:
                log.error("worker %d could not start (its error is above); stopping the pool", n)
                code = EXIT_SETTINGS
                stop(None, None)
                break
            lived = now - slot.started
            slot.quick_deaths = 0 if lived >= STEADY_SECONDS else slot.quick_deaths + 1
            delay = backoff(slot.quick_deaths)
            how = f"signal {-returned}" if returned < 0 else f"code {returned}"
            log.warning("worker %d: process %d exited (%s) after %.0f s; starting another in %.0f s",
                        n, slot.process.pid, how, lived, delay)
            slot.process, slot.restart_at = None, now + delay
        stopping.wait(0.2)
    deadline = time.monotonic() + STOP_SECONDS
    for slot in slots:
        if slot.process is None:
            continue
        try:
            slot.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            slot.process.kill()
            slot.process.wait()
    return code


def child(threads: int) -> int:
    """One worker process: a Dramatiq worker on the imshift queue until
    SIGTERM, or until the pool that started it is gone."""
    import dramatiq

    from imshift.context import SetupError
    from imshift.workers.broker import QUEUE

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the pool, which sends SIGTERM
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: stop.set())
    pool = os.getppid()
    try:
        from imshift import worker_entry  # builds the runtime from the settings
    except (SetupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    broker = worker_entry.broker
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=100)
    worker.start()
    log.info("Worker process is ready for action.")
    while not stop.wait(1.0):
        if os.getppid() != pool:  # the pool was killed: no process would restart or stop us
            log.warning("the worker pool is gone; stopping")
            break
    worker.stop(timeout=int(STOP_SECONDS * 1000) - 5000)
    broker.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m imshift.pool")
    parser.add_argument("--threads", type=int, default=8)
    sys.exit(child(parser.parse_args().threads))
