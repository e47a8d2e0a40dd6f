"""Prometheus metrics: what `/metrics` shows and what worker processes count.

Two sources:
- the database, read at scrape time: items per job and state (the running
  counts progress uses, a handful of rows per job), so every process that
  records items is seen whichever process is scraped;
- counters kept where the work happens (vendor calls by app, operation and
  outcome, rate-limited replies, time waiting for the limiter, chunk
  durations). In `imshift serve` with the embedded workers they live in the
  server; `imshift worker --metrics-port` runs its processes in
  prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) and
  serves their sum on that port. A server on the same machine with the same
  PROMETHEUS_MULTIPROC_DIR shows them in its own `/metrics` too.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from typing import Any, Iterable, Iterator

import dramatiq
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, start_http_server)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from imshift.jobs.bridges import recent_lags
from imshift.models.tables import Bridge, BridgeMessage, BridgeStatus, Job, JobCount, JobStatus

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RECENT_JOBS = 50  # finished jobs shown besides the open ones: bounded label sets

VENDOR_CALLS = Counter("imshift_vendor_calls", "Vendor API calls, by app, operation and outcome",
                       ["app", "operation", "outcome"])
RATE_LIMITED = Counter("imshift_rate_limited_replies", "Vendor replies saying the rate limit was hit",
                       ["app", "operation"])
LIMITER_WAIT = Histogram("imshift_limiter_wait_seconds", "Time a call waited for the rate limiter",
                         ["app", "operation"],
                         buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CHUNK_SECONDS = Histogram("imshift_chunk_seconds", "Time to run one chunk message",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
FEED_DELIVERIES = Counter("imshift_feed_deliveries", "Vendor feed deliveries received, by app and answer",
                          ["app", "answer"])
FEED_ACK_SECONDS = Histogram("imshift_feed_ack_seconds", "Time from a feed delivery's arrival to its answer",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LAG_SAMPLE = 10_000  # the latest relayed messages per direction the lag histogram counts


def feed_delivery(app: str, answer: str, seconds: float) -> None:
    FEED_DELIVERIES.labels(app, answer).inc()
    FEED_ACK_SECONDS.observe(seconds)


def instrument(runtime: Any) -> None:
    """Count the calls of every vendor client the runtime builds from now on,
    and time each chunk the runtime's broker runs."""
    factory = runtime.clients
    if getattr(factory, "_imshift_metrics", False):
        return

    def clients(app: str) -> Any:
        return _counted(factory(app), app)

    setattr(clients, "_imshift_metrics", True)  # noqa: B010  (a mark on a function, for the check above)
    runtime.clients = clients
    if not any(isinstance(m, ChunkTimer) for m in runtime.broker.middleware):
        runtime.broker.add_middleware(ChunkTimer())


def _counted(client: Any, app: str) -> Any:
    # Counted at every call, so a scrape sees each call as soon as it is made.
    # The labelled children are looked up once per client: `labels()` formats
    # and locks on every use, half of the wrappers' cost (bench overhead).
    call, throttle = client.call, client.throttle
    calls: dict[tuple[Any, Any], Any] = {}  # (key, outcome) -> its counter
    waits: dict[str, Any] = {}  # key -> its histogram

    async def counted_call(key: Any, *args: Any, **kwargs: Any) -> Any:
        result, body = await call(key, *args, **kwargs)
        outcome = result.outcome
        counter = calls.get((key, outcome))
        if counter is None:
            counter = calls[(key, outcome)] = VENDOR_CALLS.labels(
                app, getattr(key, "value", key), outcome.value)
        counter.inc()
        if outcome.value == "rate_limited":
            RATE_LIMITED.labels(app, getattr(key, "value", key)).inc()
        return result, body

    async def timed_throttle(key: str, weight: int) -> None:
        started = time.perf_counter()
        try:
            await throttle(key, weight)
        finally:
            histogram = waits.get(key)
            if histogram is None:
                histogram = waits[key] = LIMITER_WAIT.labels(app, key)
            histogram.observe(time.perf_counter() - started)

    client.call, client.throttle = counted_call, timed_throttle
    return client


class ChunkTimer(dramatiq.Middleware):
    """The time each chunk message takes, however it ends."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        message.options["imshift_started"] = time.perf_counter()

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *,
                              result: Any = None, exception: Any = None) -> None:
        started = message.options.pop("imshift_started", None)
        if started is not None:
            CHUNK_SECONDS.observe(time.perf_counter() - started)

    after_skip_message = after_process_message


class StateCollector(Collector):
    """Read at scrape time: items per job and state, jobs per status, and the
    queue's depth (messages waiting, and taken but not yet acknowledged)."""

    def __init__(self, engine: Any, broker: dramatiq.Broker | None = None):
        self.engine, self.broker = engine, broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        items = GaugeMetricFamily("imshift_job_items", "Items of a job in each state",
                                  labels=["job", "kind", "app", "state"])
        jobs = GaugeMetricFamily("imshift_jobs", "Jobs in each status (open and recent)",
                                 labels=["status"])
        open_ = [JobStatus.PLANNING.value, JobStatus.PLANNED.value, JobStatus.RUNNING.value,
                 JobStatus.PAUSED.value, JobStatus.STOPPED.value]
        j, c = Job.__table__, JobCount.__table__
        with self.engine.connect() as conn:
            recent = select(j.c.id).order_by(j.c.id.desc()).limit(RECENT_JOBS).subquery()
            shown = conn.execute(select(j.c.id, j.c.kind, j.c.app, j.c.status).where(
                j.c.status.in_(open_) | j.c.id.in_(select(recent.c.id)))).all()
            by_id = {row.id: row for row in shown}
            counts = conn.execute(select(c.c.job_id, c.c.state, c.c.n).where(
                c.c.job_id.in_(list(by_id)))).all() if by_id else []
        for row in counts:
            job = by_id[row.job_id]
            items.add_metric([str(row.job_id), job.kind, job.app, row.state], row.n)
        statuses: dict[str, int] = {}
        for job in shown:
            statuses[job.status] = statuses.get(job.status, 0) + 1
        for status, n in sorted(statuses.items()):
            jobs.add_metric([status], n)
        yield items
        yield jobs
        depth = self._queue_depth()
        if depth is not None:
            queue = GaugeMetricFamily("imshift_queue_messages", "Chunk messages on the queue",
                                      labels=["queue", "state"])
            for name, (waiting, taken) in depth.items():
                queue.add_metric([name, "waiting"], waiting)
                queue.add_metric([name, "taken"], taken)
            yield queue

    def _queue_depth(self) -> dict[str, tuple[int, int]] | None:
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.brokers.stub import StubBroker

        broker = self.broker
        if isinstance(broker, StubBroker):
            return {name: (q.qsize(), q.unfinished_tasks - q.qsize())
                    for name, q in broker.queues.items() if not name.endswith(".DQ")}
        if isinstance(broker, RedisBroker):
            out = {}
            try:
                for name in broker.get_declared_queues():
                    key = f"{broker.namespace}:{name}"
                    waiting = broker.client.llen(key)
                    stored = broker.client.hlen(f"{key}.msgs")
                    delayed = broker.client.llen(f"{broker.namespace}:{name}.DQ")
                    out[name] = (waiting + delayed, max(0, stored - waiting))
            except Exception:  # Redis down: the other metrics still answer
                return None
            return out
        return None


class BridgeCollector(Collector):
    """Read at scrape time: each open bridge's messages by direction and
    state, and the lag from the source's send to the target's acceptance
    (a histogram over each direction's latest LAG_SAMPLE relayed messages)."""

    def __init__(self, engine: Any):
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from sqlalchemy import func

        m, b = BridgeMessage.__table__, Bridge.__table__
        messages = GaugeMetricFamily("imshift_bridge_messages", "Bridge messages by direction and state",
                                     labels=["bridge", "from_app", "to_app", "state"])
        lag = HistogramMetricFamily("imshift_bridge_lag_seconds",
                                    "Source send to target acceptance, latest relayed messages",
                                    labels=["bridge", "from_app", "to_app"])
        with self.engine.connect() as conn:
            shown = conn.execute(select(b.c.id, b.c.source_app, b.c.app).where(
                b.c.status != BridgeStatus.REMOVED.value)).all()
            for bridge in shown:
                other = {bridge.source_app: bridge.app, bridge.app: bridge.source_app}
                for from_app, state, n in conn.execute(
                        select(m.c.from_app, m.c.state, func.count()).where(m.c.bridge_id == bridge.id)
                        .group_by(m.c.from_app, m.c.state)).all():
                    messages.add_metric([f"B{bridge.id}", from_app, other[from_app], state], n)
                for from_app in other:
                    lags = recent_lags(conn, bridge.id, from_app, LAG_SAMPLE)
                    if lags:
                        buckets = [(str(edge), sum(1 for x in lags if x <= edge)) for edge in LAG_BUCKETS]
                        lag.add_metric([f"B{bridge.id}", from_app, other[from_app]],
                                       buckets + [("+Inf", len(lags))], sum(lags))
        yield messages
        yield lag


class SharedCounts(Collector):
    """prometheus-client's sum of the processes' files (multiprocess mode),
    leaving out a file with nothing in it yet: a process creates its file
    empty and sizes it a moment later, and one read in between failed the
    whole scrape (struct.error, when `/metrics` was read as a worker started)."""

    def __init__(self, folder: str):
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for path in glob.glob(os.path.join(self.folder, "*.db")):
            try:
                if os.path.getsize(path) > 0:
                    files.append(path)
            except OSError:  # its process ended and removed it
                pass
        return MultiProcessCollector.merge(files, accumulate=True)


def registry(engine: Any, broker: dramatiq.Broker | None = None) -> CollectorRegistry:
    """What `/metrics` serves: this process's counters (or, in multiprocess
    mode, every process's), plus the state read from the database."""
    reg = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        reg.register(SharedCounts(os.environ[MULTIPROC_ENV]))
    else:
        for collector in (VENDOR_CALLS, RATE_LIMITED, LIMITER_WAIT, CHUNK_SECONDS, FEED_DELIVERIES,
                          FEED_ACK_SECONDS):
            reg.register(collector)
    reg.register(StateCollector(engine, broker))
    reg.register(BridgeCollector(engine))
    return reg


def render(reg: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(reg), CONTENT_TYPE_LATEST


def serve_workers(port: int, host: str = "127.0.0.1") -> str:
    """For `imshift worker --metrics-port`: put the worker processes (children
    started after this) in multiprocess mode and serve their sum on `port`.
    Returns the metrics folder."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="imshift-metrics-")
        os.environ[MULTIPROC_ENV] = folder
    reg = CollectorRegistry()
    reg.register(SharedCounts(folder))
    start_http_server(port, addr=host, registry=reg)
    return folder


def worker_process(runtime: Any) -> None:
    """In an `imshift worker` process: count its calls and chunks. With
    multiprocess mode the counts go to the shared folder."""
    instrument(runtime)

