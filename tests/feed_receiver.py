"""An app server's feed hook for the vendor feed tests: each POST read with
the vendor's `read_feed` (verified, parsed) and answered as imshift's own
hook would (200, or the refusal's status), what it got kept for the test.
Routes: /hook, /hooks/APP and OpenIM's /hooks/APP/SECRET/COMMAND."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from imshift.vendors.feeds import Delivery, FeedMessage, FeedRefused


class Receiver:
    vendor = "receiver"  # served() names its thread after it

    def __init__(self, client_class: Any, config: Any, *, fail_first: int = 0,
                 ok_body: dict[str, Any] | None = None):
        self.client_class, self.config = client_class.for_config(config), config
        self.got: list[FeedMessage] = []
        self.deliveries: list[Delivery] = []
        self.refused: list[tuple[int, str]] = []
        self.posts = 0
        self.fail_first = fail_first  # answer 500 to this many first posts, as a busy server
        self.ok_body = ok_body if ok_body is not None else {"ok": True}
        self.app = Starlette(routes=[Route(path, self.hook, methods=["POST"]) for path in
                                     ("/hook", "/hooks/{app}", "/hooks/{app}/{secret}/{command}")])

    async def hook(self, request: Request) -> JSONResponse:
        self.posts += 1
        if self.posts <= self.fail_first:
            return JSONResponse({"error": "busy"}, status_code=500)
        delivery = Delivery(headers={k.lower(): v for k, v in request.headers.items()},
                            query=dict(request.query_params), body=await request.body(),
                            path_secret=request.path_params.get("secret", ""))
        self.deliveries.append(delivery)
        try:
            self.got.extend(self.client_class.read_feed(self.config, delivery, time.time()))
        except FeedRefused as refused:
            self.refused.append((refused.status, refused.reason))
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        return JSONResponse(self.ok_body)

    async def wait(self, count: int, timeout: float = 5.0) -> list[FeedMessage]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.got
