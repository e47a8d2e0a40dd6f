"""`imshift serve`: the app (imshift/api.py) under uvicorn until Ctrl-C or
SIGTERM; on loopback only without IMSHIFT_API_TOKEN; in the embedded mode
(no Redis) with the workers and the stale-chunk sweeper in this process."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading

from imshift import metrics

from .api import create_app
from .api_access import api_token, is_loopback
from .context import Context

log = logging.getLogger("imshift.api")
BRIDGE_WAKE_EVERY = 1.0  # seconds


def serve(ctx: Context, host: str, port: int, say) -> int:
    """Run the server until Ctrl-C or SIGTERM. In the embedded mode (no
    Redis) the server also runs the jobs it resumes or retries itself."""
    import uvicorn

    from imshift import logs

    token = api_token()
    if token is None and not is_loopback(host):
        say(f"error: IMSHIFT_API_TOKEN is not set, so the server listens on loopback only; "
            f"set it (e.g. `imshift keygen`'s output) to listen on {host}")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs.install(ctx.secrets() + ([token] if token else []))  # the access log too: /?token=...
    app = create_app(ctx, token)
    if token is None:
        say("note: IMSHIFT_API_TOKEN is not set: anyone on this machine may use the API; "
            "listening on loopback only")
    say(f"imshift on http://{host}:{port}/ (API under /api, schema /openapi.json, metrics /metrics)")
    with contextlib.ExitStack() as stack:
        if ctx.embedded:
            stack.enter_context(_embedded_workers(ctx))
        stack.enter_context(_bridge_waker(ctx))
        _freeze_heap()
        uvicorn.run(app, host=host, port=port, log_config=None)
    return 0


def _freeze_heap() -> None:
    """Take the start-up heap (about 150,000 objects) out of the collector's
    walks: a full collection of it stalled a request 100-400 ms about once
    every 3,000 requests (bench/README.md). The young generation keeps its
    default size, so its collections stay short (a worker's larger one, in
    workers/heap.py, trades that latency for throughput)."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def _bridge_waker(ctx: Context):
    """Each second, a relayer for every active bridge with messages waiting
    and none relaying: a bridge resumed by `imshift bridge resume` (another
    process, which cannot reach this one's in-process queue), or one whose
    relayer died. The server is where the feeds arrive, so it is always up
    while a bridge runs."""
    import time

    from imshift.workers.sweeper import wake_bridges

    stop = threading.Event()

    def waking() -> None:
        while not stop.wait(BRIDGE_WAKE_EVERY):
            try:
                wake_bridges(ctx.runtime, time.time())
            except Exception as exc:  # the database or Redis is down: try again
                log.warning("waking bridges failed: %s", exc)

    threading.Thread(target=waking, name="imshift-bridge-waker", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


@contextlib.contextmanager
def _embedded_workers(ctx: Context):
    """Workers and the stale-chunk sweeper in this process (no Redis)."""
    from imshift.workers.embedded import in_process_workers
    from imshift.workers.sweeper import sweep

    metrics.instrument(ctx.runtime)
    stop = threading.Event()

    def sweeping() -> None:
        while not stop.wait(ctx.runtime.tuning.stale_after / 4):
            try:
                sweep(ctx.runtime)
            except Exception as exc:  # the database is down: try again later
                log.warning("sweeping stale chunks failed: %s", exc)

    with in_process_workers(ctx.broker):
        thread = threading.Thread(target=sweeping, name="imshift-sweeper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
