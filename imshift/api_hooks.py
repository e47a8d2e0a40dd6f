"""The vendors' message feeds, received for the bridge: `POST /hooks/APP`
(OpenIM's webhooks: `/hooks/APP/SECRET/COMMAND`, the secret standing in for
a signature it does not make).

A delivery is verified as its vendor signs it (vendors/*_feed.py), stored
(jobs/bridges.py) and only then answered 200, so the vendor retries what we
never stored and a repeat is dropped by its message id. A delivery that
fails verification, is malformed, too large, stale, or for an app no bridge
takes is refused with its status, stored nowhere and counted. These routes
take no API token: the vendor's signature is their access check.
"""

from __future__ import annotations

import asyncio
import logging
import time

from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse

from imshift import metrics
from imshift.jobs import bridges
from imshift.jobs.bridge_ingest import Ingest
from imshift.vendors.feeds import MAX_FEED_BYTES, Delivery, FeedRefused
from imshift.vendors.registry import vendor

from .context import Context

log = logging.getLogger("imshift.api")
# An answer every vendor's feed takes as "received" (NetEase and RongCloud
# read the status; OpenIM's webhooks read errCode/actionCode; Maxim the status).
ACK = {"code": 200, "errCode": 0, "errMsg": "", "actionCode": 0}


class HooksFirst:
    """ASGI middleware that answers POST /hooks/... itself, before FastAPI's
    routing and dependencies: a feed delivery spent about 6 ms of the
    server's loop in them at 270 deliveries/s (py-spy), most of its answer
    time. Everything else goes on to the app."""

    def __init__(self, app: Any, ctx: Context, ingest: Ingest):
        self.app, self.ctx, self.ingest = app, ctx, ingest

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/hooks/"):
            await self.app(scope, receive, send)
            return
        parts = path[len("/hooks/"):].split("/")
        if scope["method"] != "POST" or not parts[0] or len(parts) > 3:
            response = JSONResponse({"error": "feeds POST to /hooks/APP"}, status_code=404 if
                                    scope["method"] == "POST" else 405)
        else:
            response = await self.deliver(Request(scope, receive), parts[0],
                                          parts[1] if len(parts) > 1 else "")
        await response(scope, receive, send)

    async def deliver(self, request: Request, app: str, secret: str) -> JSONResponse:
        started = time.perf_counter()
        ctx = self.ctx
        label = app if _known(ctx, app) else "?"  # no label per name a stranger makes up
        try:
            answer = await _receive(ctx, self.ingest, request, app, secret)
        except FeedRefused as refused:
            await asyncio.to_thread(bridges.refused, ctx.engine, label)
            metrics.feed_delivery(label, f"refused {refused.status}", time.perf_counter() - started)
            log.warning("feed delivery for %s refused (%s): %s", label, refused.status, refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        except DBAPIError as exc:  # not stored: the vendor is told to try again
            log.warning("feed delivery for %s not stored: %s", label, exc.orig or exc)
            return JSONResponse({"error": "the database failed; try again"}, status_code=503)
        metrics.feed_delivery(label, answer, time.perf_counter() - started)
        return JSONResponse(ACK)


def _known(ctx: Context, app: str) -> bool:
    return app in ctx.settings.apps or app in ctx.sandboxes


async def _receive(ctx: Context, ingest: Ingest, request: Request, app: str, secret: str) -> str:
    if not _known(ctx, app):
        raise FeedRefused(404, f"no app named {app!r} here")
    try:
        client_class = vendor(ctx.settings.app(app).vendor).client.for_config(ctx.config(app))
    except ValueError:
        raise FeedRefused(404, f"app {app!r} is not configured so that its feed can be read") from None
    body = await _body(request)
    delivery = Delivery(headers={k.lower(): v for k, v in request.headers.items()},
                        query=dict(request.query_params), body=body, path_secret=secret)
    found = client_class.read_feed(ctx.config(app), delivery, time.time())
    if not found:
        await asyncio.to_thread(_count, ctx, app, "ignored")
        return "ignored"
    wake = await ingest.store(app, found)
    if wake is not None:
        try:
            ctx.broker.actors["relay_bridge"].send(wake)
        except Exception as exc:  # Redis is down: the message is stored, so the delivery is taken
            log.warning("bridge B%s: its relayer could not be woken (%s); the server wakes it "
                        "once the queue answers", wake, type(exc).__name__)
            await asyncio.to_thread(_unqueue, ctx, wake)
    return "stored"


def _unqueue(ctx: Context, bid: int) -> None:
    """Take back the wake marked queued, so the server's waker sends it again
    each second until the queue takes it (imshift/api_serve.py)."""
    from sqlalchemy import update

    from imshift.models.tables import Bridge
    from imshift.workers.relay import QUEUED

    bridges_table = Bridge.__table__
    with ctx.engine.begin() as conn:
        conn.execute(update(bridges_table).where(bridges_table.c.id == bid, bridges_table.c.relayer == QUEUED)
                     .values(relayer=None, relayer_until=None))


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FEED_BYTES:
        raise FeedRefused(413, f"the body is over {MAX_FEED_BYTES} bytes")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_FEED_BYTES:
            raise FeedRefused(413, f"the body is over {MAX_FEED_BYTES} bytes")
        parts.append(part)
    return b"".join(parts)


def _count(ctx: Context, app: str, name: str) -> None:
    with ctx.engine.begin() as conn:
        bridges.count(conn, app, name)
