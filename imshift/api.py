"""The HTTP face over jobs/, beside the CLI: the app `imshift serve` runs
(imshift/api_serve.py).

- `/api/jobs...`: jobs, their progress, items and control (imshift/api_jobs.py);
  their results streamed (imshift/api_exports.py).
- `/api/runs...`: migration runs and their stages (imshift/api_runs.py).
- `/api/schedules...`: schedules, their fires and control (imshift/api_schedules.py).
- `/`: the live page (imshift/api_page.py, imshift/page/), polling the API.
- `/metrics`: Prometheus (imshift/metrics.py).

Access (imshift/api_access.py): with IMSHIFT_API_TOKEN set, every request
needs it; `/openapi.json` and `/metrics` are open to loopback clients only.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError

from imshift import __version__, metrics
from imshift.jobs.bridge_ingest import Ingest

from .api_access import Access, open_on_loopback
from .api_bridges import bridge_router
from .api_exports import export_router
from .api_hooks import HooksFirst
from .api_jobs import job_or_404, job_router, runnable
from .api_live import KEPT_AT_MOST, KEPT_SECONDS, FirstFailures, Kept, Rates, job_out, sample_rates
from .api_page import page_routes
from .api_runs import run_router
from .api_schedules import schedule_router
from .context import Context


def create_app(ctx: Context, token: str | None = None) -> FastAPI:
    """The app over `ctx`'s database and broker. `token`: what every request
    must carry (None: no token, for a server on loopback)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sampler = asyncio.create_task(sample_rates(app))  # the chart has history before the page opens
        try:
            yield
        finally:
            sampler.cancel()
            ingest.close()

    app = FastAPI(title="imshift", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  openapi_url=None,  # served below, with its access check
                  description="Progress, results and control of imshift jobs. With "
                              "IMSHIFT_API_TOKEN set, send it as a bearer token. The job and "
                              "run lists, a job, its progress and a run are read from the "
                              f"database at most every {KEPT_SECONDS / 2:g} s and shared by "
                              "every viewer: what workers or the CLI did shows within "
                              f"{KEPT_SECONDS:g} s (up to {KEPT_AT_MOST:g} s on a busy server), "
                              "a change made through this API in the very next answer.")
    rates = Rates()
    ingest = Ingest(ctx.engine)  # stores the feeds' deliveries (imshift/api_hooks.py)
    app.state.ctx, app.state.token, app.state.rates = ctx, token, rates
    app.state.failures = FirstFailures()
    app.state.kept = kept = Kept()
    app.state.metrics = metrics.registry(ctx.engine, ctx.broker)

    @app.exception_handler(DBAPIError)
    async def database_failed(request: Request, exc: DBAPIError) -> JSONResponse:
        reason = (str(exc.orig or exc).strip().splitlines() or ["?"])[0]
        return JSONResponse({"detail": f"the database failed: {reason}"}, status_code=503)

    app.include_router(job_router(ctx, rates, app.state.failures, kept), dependencies=Access)
    app.include_router(export_router(ctx, lambda job_id: job_or_404(ctx, job_id)), dependencies=Access)

    @app.get("/metrics", dependencies=[Depends(open_on_loopback)], include_in_schema=False)
    def scrape() -> Response:
        body, media = metrics.render(app.state.metrics)
        return Response(body, media_type=media)

    # A route dependency, not a middleware: an HTTP middleware ran on every
    # request, 0.2-0.5 ms of CPU each, to check this one path.
    @app.get("/openapi.json", dependencies=[Depends(open_on_loopback)], include_in_schema=False)
    async def schema() -> JSONResponse:  # no I/O: the schema is built once, then kept
        return JSONResponse(app.openapi())

    app.include_router(run_router(ctx, lambda p: job_out(p, rates), lambda p: runnable(ctx, p), kept),
                       dependencies=Access)
    app.include_router(schedule_router(ctx, lambda p: job_out(p, rates)), dependencies=Access)
    app.include_router(bridge_router(ctx), dependencies=Access)
    # Outside the API's routing: no token (each vendor's signature is the check), and fast.
    app.add_middleware(HooksFirst, ctx=ctx, ingest=ingest)
    page_routes(app)
    return app
