"""`imshift serve`: the HTTP face over jobs/, beside the CLI.

- `/api/jobs...`: jobs listed and paged, one job's progress (`/progress`:
  counts and rate only; the job itself adds its first failures, read at
  most once a second), its items by outcome in keyset pages, one item by
  its input id, the results streamed as CSV or JSON Lines, and
  pause/resume/cancel/retry as POSTs. Every query and state change is the
  one the CLI calls (jobs.progress, jobs.control).
- `/api/runs...`: migration runs and their stages (imshift/api_runs.py).
- `/`: the live page (imshift/page/), polling the API.
- `/metrics`: Prometheus (imshift.metrics).

Access: with IMSHIFT_API_TOKEN set, every request needs it, as a bearer
token or as the HttpOnly cookie the page's login sets; `/openapi.json` and
`/metrics` are open to loopback clients only. Without a token, serve
listens on loopback only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import gc
import hmac
import io
import ipaddress
import json
import logging
import threading
import time
from importlib import resources
from typing import Annotated, Any, Iterator, Optional
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.exc import DBAPIError

from imshift import __version__, metrics
from imshift.jobs import control
from imshift.jobs.exports import csv_record
from imshift.jobs.progress import (FAILED, Progress, first_failures, first_secret,
                                   item as find_item, items_page, job_ids, progress,
                                   results as item_results)
from imshift.models.tables import ItemState, JobStatus
from imshift.vendors.vocabulary import Operation

from .api_models import (ERRORS, MAX_ID, ControlOut, ExportFormat, ItemOut, ItemsPage, JobDetail,
                         JobId, JobProgress, JobsPage)
from .api_runs import run_router
from .context import Context, SetupError

log = logging.getLogger("imshift.api")
COOKIE = "imshift_token"
EXPORT_FIELDS = ["row", "id", "outcome", "attempts", "code", "message", "user_id", "token",
                 "password", "result"]


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMSHIFT_", extra="ignore")

    api_token: Optional[SecretStr] = None  # every API and page request needs it


# -- the rate seen over the last minutes ------------------------------------------------------

class Rates:
    """Samples of each job's done count, at most one a second, kept ten
    minutes: the current rate and the page's chart. The database keeps
    counts, not their history."""

    def __init__(self, window: float = 60.0, keep: float = 600.0):
        self.window, self.keep = window, keep
        self._samples: dict[int, collections.deque] = {}
        self._lock = threading.Lock()

    def observe(self, p: Progress, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._lock:
            samples = self._samples.setdefault(p.job_id, collections.deque())
            settled = p.status != JobStatus.RUNNING.value
            if not samples or now - samples[-1][0] >= 1.0 or (settled and samples[-1][1] != p.done):
                samples.append((now, p.done))  # at most one a second while it runs
            while samples and now - samples[0][0] > self.keep:
                samples.popleft()
            recent = [s for s in samples if now - s[0] <= self.window]
        if p.status != JobStatus.RUNNING.value:
            return p.rate
        # Workers record whole chunks: a rate over a few seconds jumps, one over a minute does not.
        if len(recent) >= 2 and recent[-1][0] - recent[0][0] >= 5:
            return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        return p.rate

    def history(self, job_id: int) -> list[dict[str, float]]:
        """The samples as RatePoint fields: plain dicts, which the response
        model checks in one pass (600 model objects cost 3 ms a request)."""
        with self._lock:
            return [{"t": t, "done": d} for t, d in self._samples.get(job_id, ())]


# -- the first failures, kept a second ------------------------------------------------------

class FirstFailures:
    """Each job's first failed items, read at most once a `ttl` while the
    job runs: a page polling a job every second while workers write would
    otherwise read the items table on every poll (bench/api.py). A job that
    is not running is read again when its status or failed counts moved,
    so a job that has just settled shows its final failures."""

    def __init__(self, ttl: float = 1.0, limit: int = 10):
        self.ttl, self.limit = ttl, limit
        self._kept: dict[int, tuple[float, tuple, list[ItemOut]]] = {}
        self._lock = threading.Lock()

    def get(self, engine, p: Progress, now: float | None = None) -> list[ItemOut]:
        now = time.monotonic() if now is None else now
        seen = (p.status, tuple(p.counts.get(s, 0) for s in FAILED))
        with self._lock:
            kept = self._kept.get(p.job_id)
        if kept is not None and now - kept[0] < self.ttl and kept[1][0] == p.status and (
                p.status == JobStatus.RUNNING.value or kept[1] == seen):
            return kept[2]
        found = [_item_out(r) for r in first_failures(engine, p.job_id, self.limit)] \
            if any(seen[1]) else []
        with self._lock:
            if len(self._kept) > 200:  # forget the jobs no one asked about lately
                self._kept = {j: k for j, k in self._kept.items() if now - k[0] < self.ttl}
            self._kept[p.job_id] = (now, seen, found)
        return found


# -- access -----------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="IMSHIFT_API_TOKEN")


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def _token_ok(request: Request, given: str | None) -> bool:
    token: str | None = request.app.state.token
    if token is None:
        return True
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                               token.encode("utf-8", "surrogateescape"))


def _given(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else request.cookies.get(COOKIE)


async def access(request: Request,
                 credentials: Annotated[Optional[HTTPAuthorizationCredentials],
                                        Depends(bearer)] = None) -> None:
    # async: a check that does no I/O needs no hop to a worker thread
    if not _token_ok(request, _given(request, credentials)):
        raise HTTPException(401, "a valid IMSHIFT_API_TOKEN is needed: send it as "
                                 "`Authorization: Bearer TOKEN`, or log in on the page",
                            headers={"WWW-Authenticate": "Bearer"})


async def open_on_loopback(request: Request,
                           credentials: Annotated[Optional[HTTPAuthorizationCredentials],
                                                  Depends(bearer)] = None) -> None:
    if not _loopback(request):
        await access(request, credentials)


Access = [Depends(access)]


# -- the app ------------------------------------------------------------------------------------

def _job_out(p: Progress, rates: Rates) -> dict[str, Any]:
    rate = rates.observe(p)
    return dict(id=p.job_id, kind=p.kind, operation=p.operation, app=p.app, status=p.status,
                total=p.total, done=p.completed, cancelled=p.counts.get(ItemState.CANCELLED.value, 0),
                counts=p.counts, rate=rate, eta_seconds=p.eta(rate), started_at=p.started_at,
                finished_at=p.finished_at, stop_reason=p.stop_reason,
                idle_seconds=p.idle_seconds() if p.status == JobStatus.RUNNING.value else None)


def _item_out(row: Any) -> ItemOut:
    return ItemOut(seq=row.seq, row=row.row, id=row.key, outcome=row.state, attempts=row.attempts,
                   code=row.code, message=row.message, result=row.result, updated_at=row.updated_at)


def export_record(item: Any, unseal) -> dict[str, Any]:
    """One exported item, as `imshift results --format csv/jsonl` writes it."""
    secrets = unseal(item.secret) if item.secret else {}
    return {"row": item.row, "id": item.key, "outcome": item.state, "attempts": item.attempts,
            "code": item.code, "message": item.message,
            "user_id": (item.result or {}).get("user_id"), "token": secrets.get("token"),
            "password": secrets.get("password"),
            "result": json.dumps(item.result, ensure_ascii=False) if item.result else None}


def create_app(ctx: Context, token: str | None = None) -> FastAPI:
    """The app over `ctx`'s database and broker. `token`: what every request
    must carry (None: no token, for a server on loopback)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sampler = asyncio.create_task(_sample(app))  # the chart has history before the page opens
        try:
            yield
        finally:
            sampler.cancel()

    app = FastAPI(title="imshift", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  openapi_url=None,  # served below, with its access check
                  description="Progress, results and control of imshift jobs. With "
                              "IMSHIFT_API_TOKEN set, send it as a bearer token.")
    app.state.ctx, app.state.token, app.state.rates = ctx, token, Rates()
    app.state.failures = FirstFailures()
    app.state.metrics = metrics.registry(ctx.engine, ctx.broker)
    rates: Rates = app.state.rates

    @app.exception_handler(DBAPIError)
    async def database_failed(request: Request, exc: DBAPIError) -> JSONResponse:
        reason = (str(exc.orig or exc).strip().splitlines() or ["?"])[0]
        return JSONResponse({"detail": f"the database failed: {reason}"}, status_code=503)

    def job_or_404(job_id: int) -> Progress:
        p = progress(ctx.engine, job_id)
        if p is None:
            raise HTTPException(404, f"no job {job_id}")
        return p

    @app.get("/api/jobs", response_model=JobsPage, dependencies=Access, responses=ERRORS,
             summary="Jobs, newest first")
    def list_jobs(before: Annotated[Optional[int], Query(ge=1, le=MAX_ID + 1)] = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
        ids = job_ids(ctx.engine, before, limit)
        jobs = [p for p in (progress(ctx.engine, i) for i in ids) if p is not None]
        return {"jobs": [_job_out(p, rates) for p in jobs],
                "next_before": ids[-1] if len(ids) == limit else None}

    @app.get("/api/jobs/{job_id}", response_model=JobDetail, dependencies=Access, responses=ERRORS,
             summary="One job's progress, its recent rate and first failures")
    def get_job(job_id: JobId) -> dict:
        p = job_or_404(job_id)
        return {**_job_out(p, rates), "history": rates.history(job_id),
                "failures": app.state.failures.get(ctx.engine, p)}

    @app.get("/api/jobs/{job_id}/progress", response_model=JobProgress, dependencies=Access,
             responses=ERRORS, summary="One job's progress and recent rate, without its failures")
    def get_progress(job_id: JobId) -> dict:
        """What the page polls every second: the job detail without the
        failed items, so it reads the job's counts and never its items."""
        p = job_or_404(job_id)
        return {**_job_out(p, rates), "history": rates.history(job_id)}

    @app.get("/api/jobs/{job_id}/items", response_model=ItemsPage, dependencies=Access,
             responses=ERRORS, summary="A job's items in input order, in keyset pages")
    def list_items(job_id: JobId, outcome: Optional[ItemState] = None,
                   after: Annotated[int, Query(ge=-1, le=MAX_ID, description="The last seq seen")] = -1,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        job_or_404(job_id)
        page = items_page(ctx.engine, job_id, outcome.value if outcome else None, after, limit)
        return {"items": [_item_out(r) for r in page],
                "next_after": page[-1].seq if len(page) == limit else None}

    @app.get("/api/jobs/{job_id}/items/{key:path}", response_model=ItemOut, dependencies=Access,
             responses=ERRORS, summary="One item by its id in the input")
    def get_item(job_id: JobId, key: str) -> ItemOut:
        job_or_404(job_id)
        row = find_item(ctx.engine, job_id, key) if "\x00" not in key else None
        if row is None:
            raise HTTPException(404, f"job {job_id} has no item {key!r}")
        return _item_out(row)

    @app.get("/api/jobs/{job_id}/results", dependencies=Access, summary="Every item, streamed",
             responses={**ERRORS, 200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                                        "description": "CSV or JSON Lines, in input order"}},
             response_class=StreamingResponse)
    def export(job_id: JobId, format: ExportFormat = ExportFormat.csv,
               outcome: Optional[ItemState] = None) -> StreamingResponse:
        """As `imshift results JOB --format csv|jsonl`: with the tokens and
        passwords the job obtained when IMSHIFT_TOKEN_KEY is set."""
        job_or_404(job_id)
        headers = {"Content-Disposition": f'attachment; filename="job-{job_id}.{format.value}"'}
        warning = _check_token_key(ctx, job_id)
        if warning:
            headers["X-Imshift-Warning"] = warning
        rows = item_results(ctx.engine, job_id, outcome.value if outcome else None)
        unseal = ctx.runtime.unseal
        media = "text/csv; charset=utf-8" if format is ExportFormat.csv else "application/x-ndjson"
        return StreamingResponse(_export(rows, unseal, format), media_type=media, headers=headers)

    def change(job_id: int, action) -> ControlOut:
        job_or_404(job_id)
        try:
            changed, message = action()
        except control.JobError as exc:
            raise HTTPException(409, str(exc))
        p = progress(ctx.engine, job_id)
        return ControlOut(id=job_id, status=p.status if p else "removed", changed=changed,
                          message=message)

    @app.post("/api/jobs/{job_id}/pause", response_model=ControlOut, dependencies=Access,
              responses=ERRORS, summary="Pause a running job")
    def pause(job_id: JobId) -> ControlOut:
        def act():
            control.pause(ctx.engine, job_id)
            return 0, f"job {job_id} paused"
        return change(job_id, act)

    @app.post("/api/jobs/{job_id}/cancel", response_model=ControlOut, dependencies=Access,
              responses=ERRORS, summary="Stop a job for good")
    def cancel(job_id: JobId) -> ControlOut:
        def act():
            closed = control.cancel(ctx.engine, job_id)
            return closed, f"job {job_id} cancelled"
        return change(job_id, act)

    @app.post("/api/jobs/{job_id}/resume", response_model=ControlOut, dependencies=Access,
              responses=ERRORS, summary="Resume a paused or stopped job")
    def resume(job_id: JobId) -> ControlOut:
        p = job_or_404(job_id)
        if p.status == JobStatus.FINISHED.value:
            left = sum(p.counts.get(s, 0) for s in FAILED)
            hint = (f"`imshift retry {job_id}` (POST .../retry) runs its rejected and failed items "
                    "again" if left else "nothing is left to do")
            raise HTTPException(409, f"job {job_id} is finished: {hint}")
        _runnable(ctx, p)
        return change(job_id, lambda: (_queue(ctx, job_id, lambda: control.resume(
            ctx.engine, ctx.broker, job_id)), f"job {job_id} resumed"))

    @app.post("/api/jobs/{job_id}/retry", response_model=ControlOut, dependencies=Access,
              responses=ERRORS, summary="Run the failed items again")
    def retry(job_id: JobId, unknown: Annotated[bool, Query(
            description="Also re-send items whose send may have been delivered")] = False) -> ControlOut:
        _runnable(ctx, job_or_404(job_id))
        def act():
            moved = _queue(ctx, job_id, lambda: control.retry(ctx.engine, ctx.broker, job_id,
                                                              include_unknown=unknown))
            return moved, f"{moved} items of job {job_id} put back to work"
        return change(job_id, act)

    @app.get("/metrics", dependencies=[Depends(open_on_loopback)], include_in_schema=False)
    def scrape() -> Response:
        body, media = metrics.render(app.state.metrics)
        return Response(body, media_type=media)

    # A route dependency, not a middleware: an HTTP middleware ran on every
    # request, 0.2-0.5 ms of CPU each, to check this one path.
    @app.get("/openapi.json", dependencies=[Depends(open_on_loopback)], include_in_schema=False)
    async def schema() -> JSONResponse:  # no I/O: the schema is built once, then kept
        return JSONResponse(app.openapi())

    app.include_router(run_router(ctx, lambda p: _job_out(p, rates), lambda p: _runnable(ctx, p)),
                       dependencies=Access)
    _page_routes(app)

    return app


async def _sample(app: FastAPI) -> None:
    ctx: Context = app.state.ctx
    while True:
        def once() -> None:
            for job_id in job_ids(ctx.engine, limit=20):
                p = progress(ctx.engine, job_id)
                if p is not None and p.status == JobStatus.RUNNING.value:
                    app.state.rates.observe(p)
        try:
            await asyncio.to_thread(once)
        except Exception as exc:  # the database is down: the requests say so
            log.debug("rate sampler: %s", exc)
        await asyncio.sleep(2.0)


def _export(rows: Iterator[Any], unseal, format: ExportFormat) -> Iterator[str]:
    """The export written in pieces of a few hundred rows: memory stays flat."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, EXPORT_FIELDS) if format is ExportFormat.csv else None
    if writer:
        writer.writeheader()
    for n, item in enumerate(rows, 1):
        record = export_record(item, unseal)
        if writer:
            writer.writerow(csv_record(record))  # a cell is never a formula
        else:
            buffer.write(json.dumps({k: v for k, v in record.items() if v is not None},
                                    ensure_ascii=False) + "\n")
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _check_token_key(ctx: Context, job_id: int) -> str | None:
    """As the CLI: a warning when the job holds encrypted secrets and no key
    is set; a 409 when the key does not open them."""
    from cryptography.fernet import InvalidToken

    sealed = first_secret(ctx.engine, job_id)
    if sealed is None:
        return None
    if ctx.cipher is None:
        return (f"job {job_id} holds encrypted tokens or passwords and IMSHIFT_TOKEN_KEY is not "
                "set: their columns are empty")
    try:
        ctx.cipher.decrypt(sealed)
    except InvalidToken:
        raise HTTPException(409, f"IMSHIFT_TOKEN_KEY does not open the tokens of job {job_id}: they "
                                 "were stored with another key")
    return None


def _runnable(ctx: Context, p: Progress) -> None:
    """What the CLI checks before a resume or retry: the app's settings, a
    key where results need one, a broker that answers."""
    try:
        ctx.target(p.app)
    except ValueError as exc:
        raise HTTPException(409, str(exc))
    if ctx.cipher is None and (p.operation == Operation.ISSUE_TOKEN.value or (
            p.operation == Operation.REGISTER.value and "password" in ctx.register_secrets(p.app))):
        raise HTTPException(409, f"job {p.job_id}'s results are stored only encrypted and "
                                 "IMSHIFT_TOKEN_KEY is not set: set it, then try again")
    try:
        ctx.check_broker()
    except SetupError as exc:
        raise HTTPException(503, f"{exc}. Nothing was queued.")


def _queue(ctx: Context, job_id: int, change):
    """A change that queues work; if queuing fails half-way the job is
    paused, as in the CLI, so nothing runs it later by surprise."""
    import dramatiq
    import redis

    try:
        return change()
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        raise HTTPException(503, f"{control.hold_after_failed_queue(ctx.engine, job_id, exc)}; "
                                 "resume it once Redis works")


# -- the page -----------------------------------------------------------------------------------

def _asset(name: str) -> str:
    return resources.files("imshift.page").joinpath(name).read_text(encoding="utf-8")


ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def _page_routes(app: FastAPI) -> None:
    def login_page(error: str = "", status: int = 200) -> HTMLResponse:
        html = _asset("login.html").replace("{{error}}", error)
        return HTMLResponse(html, status_code=status)

    def with_cookie(request: Request, token: str) -> Response:
        response = RedirectResponse("/", status_code=303)  # drops ?token= from the address bar
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/", include_in_schema=False)
    def page(request: Request, token: Optional[str] = None) -> Response:
        if token is not None and app.state.token is not None:
            if _token_ok(request, token):
                return with_cookie(request, token)
            return login_page("That token is not the server's IMSHIFT_API_TOKEN.", 401)
        if not _token_ok(request, request.cookies.get(COOKIE)):
            return login_page()
        return HTMLResponse(_asset("index.html"))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if app.state.token is not None and _token_ok(request, token):
            return with_cookie(request, token)
        return login_page("That token is not the server's IMSHIFT_API_TOKEN.", 401)

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/page/{name}", include_in_schema=False)
    def asset(name: str) -> Response:  # scripts and styles: no secrets, no token needed
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return Response(_asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache"})


# -- serving ----------------------------------------------------------------------------------

def api_token() -> str | None:
    token = ApiSettings().api_token
    return token.get_secret_value() if token and token.get_secret_value() else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(ctx: Context, host: str, port: int, say) -> int:
    """Run the server until Ctrl-C or SIGTERM. In the embedded mode (no
    Redis) the server also runs the jobs it resumes or retries itself."""
    import uvicorn

    from imshift import logs

    token = api_token()
    if token is None and not _is_loopback(host):
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
