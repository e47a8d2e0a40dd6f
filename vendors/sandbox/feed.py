"""A sandbox's message feed: what the vendor POSTs to an app's server for
each message its users send, with the vendor's timeout and retries, and
faults a test can ask for (repeated, delayed and reordered deliveries).

A vendor sandbox that has a feed sets `feed_routes()` into its routes and
fills in three hooks (see `FeedSandbox`): how a simulated client's send is
stored and reported (`client_send`), how a delivery is signed
(`sign_delivery`), and what an inbox looks like to a client (`inbox_view`).

Routes (all under /_sandbox, outside the vendor's API):
- POST /_sandbox/feed `{url, repeat?, delay?, reorder?, retries?, retry_delay?, timeout?}`:
  where to deliver and how (repeat: share of deliveries sent twice; delay:
  seconds each waits; reorder: up to that many seconds more, at random).
- POST /_sandbox/client/send `{from, to, group?, text | custom | image | file}`:
  a user sends from the app: stored in the inboxes, then delivered to the feed.
  Answers `{msg_id, sent_at_ms}`.
- POST /_sandbox/client/recall `{from, msg_id}`: the user takes it back.
- GET /_sandbox/inbox?user=ID: what that user's client shows, oldest first.
- GET /_sandbox/feed/stats: deliveries made, acknowledged, failed, retried,
  repeated, still pending.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Mapping

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..http import http_client

FEED_CONNECTIONS = 1000


@dataclass
class FeedSettings:
    url: str | None = None
    repeat: float = 0.0  # share of deliveries the vendor sends twice
    delay: float = 0.0  # seconds every delivery waits before it is sent
    reorder: float = 0.0  # up to this many seconds more, at random: later sends may arrive first
    retries: int = 0  # further attempts after a failed delivery (the vendor's policy)
    retry_delay: float = 1.0
    timeout: float = 5.0  # the vendor's wait for the app server's answer
    seed: int | None = None


@dataclass(frozen=True)
class Outgoing:
    """One delivery as the vendor would send it, before it is signed."""

    body: bytes
    content_type: str = "application/json"
    path: str = ""  # added to the configured URL (OpenIM posts to {url}/{callbackCommand})


class Feed:
    """Delivers a sandbox's feed in the background on the serving loop."""

    def __init__(self, sign) -> None:
        self.settings = FeedSettings()
        self.sign = sign  # (body) -> (headers, query): the vendor's signature
        self.stats: Counter[str] = Counter()
        self.pending = 0
        # Seconds per delivery, for benchmarks: from the send to the POST
        # going out (the feed's own queueing), and from there to the answer.
        self.queued: deque[float] = deque(maxlen=100_000)
        self.answered: deque[float] = deque(maxlen=100_000)
        self._random = random.Random()
        self._tasks: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None

    def configure(self, values: Mapping[str, Any]) -> None:
        known = {f for f in FeedSettings.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown feed settings: {', '.join(sorted(unknown))}")
        self.settings = FeedSettings(**values)
        self._random = random.Random(self.settings.seed)

    def push(self, outgoing: Outgoing) -> None:
        """Deliver `outgoing` (no feed URL set: nothing happens)."""
        if not self.settings.url:
            return
        s = self.settings
        wait = s.delay + (self._random.uniform(0, s.reorder) if s.reorder else 0.0)
        twice = self._random.random() < s.repeat
        self.pending += 1
        task = asyncio.ensure_future(self._deliver(outgoing, wait, twice, time.perf_counter()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, outgoing: Outgoing, wait: float, twice: bool, pushed: float) -> None:
        try:
            if wait:
                await asyncio.sleep(wait)
            self.queued.append(time.perf_counter() - pushed - wait)
            delivered = await self._attempts(outgoing)
            if delivered and twice:
                self.stats["repeated"] += 1
                await self._attempts(outgoing)
        finally:
            self.pending -= 1

    async def _attempts(self, outgoing: Outgoing) -> bool:
        s = self.settings
        for attempt in range(s.retries + 1):
            if attempt:
                self.stats["retried"] += 1
                await asyncio.sleep(s.retry_delay)
            if await self._post(outgoing):
                return True
        self.stats["failed"] += 1
        return False

    async def _post(self, outgoing: Outgoing) -> bool:
        if self._http is None:
            # Many connections: a vendor posts from many servers, and waiting for
            # one of 100 was counted as our server's slowness. Over aiohttp, as
            # vendors/http.py says why: httpx's own pool spent the sandbox's CPU
            # (bench bridge at 1,000/s: deliveries answered in 2.4 s at the
            # median, the server's own answer within 0.25 s at p99).
            self._http = http_client(max_connections=FEED_CONNECTIONS, timeout=self.settings.timeout)
        headers, query = self.sign(outgoing.body)
        self.stats["sent"] += 1
        began = time.perf_counter()
        try:
            reply = await self._http.post((self.settings.url or "") + outgoing.path, content=outgoing.body,
                                          params=query or None,
                                          headers={"content-type": outgoing.content_type, **headers},
                                          timeout=self.settings.timeout)
        except httpx.HTTPError:
            self.stats["unanswered"] += 1
            return False
        self.answered.append(time.perf_counter() - began)
        if 200 <= reply.status_code < 300:
            self.stats["acknowledged"] += 1
            return True
        self.stats[f"http {reply.status_code}"] += 1
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"url_set": bool(self.settings.url), "pending": self.pending, **self.stats,
                "queued_p50": _share(self.queued, 0.5), "queued_p99": _share(self.queued, 0.99),
                "answered_p50": _share(self.answered, 0.5), "answered_p99": _share(self.answered, 0.99)}


def _share(values: deque[float], q: float) -> float | None:
    """The q-quantile of `values` in seconds (None when empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


class FeedSandbox:
    """The hooks a vendor sandbox with a feed fills in (mixed into its class)."""

    feed: Feed

    def init_feed(self) -> None:
        self.feed = Feed(self.sign_delivery)
        self._last_ms = 0

    def sent_at_ms(self) -> int:
        """The vendor's timestamp of a new message, in ms: never going back,
        and, as a vendor's, shared by the messages of one millisecond (a
        strictly increasing one ran ahead of the clock above 1,000 a second)."""
        self._last_ms = max(int(time.time() * 1000), self._last_ms)
        return self._last_ms

    def client_send(self, params: Mapping[str, Any]) -> tuple[str, int, list[Outgoing]]:
        """Store a message a user sends from the app (raise ValueError for
        one the vendor would refuse); (msg_id, sent_at_ms, what the feed delivers)."""
        raise NotImplementedError

    def client_recall(self, params: Mapping[str, Any]) -> list[Outgoing]:
        """Take a message back as its sender's client does; what the feed delivers."""
        raise NotImplementedError

    def sign_delivery(self, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        """The headers and URL query the vendor signs a delivery with."""
        raise NotImplementedError

    def inbox_view(self, user_id: str) -> list[dict[str, Any]]:
        """A user's messages as the client shows them, oldest first: each
        `{msg_id, from, to, group, kind, text?, custom?, sent_at_ms, recalled?}`
        (`group`: the group id, or null one-to-one)."""
        raise NotImplementedError

    def feed_routes(self) -> list[Route]:
        async def configure(request: Request) -> Response:
            try:
                self.feed.configure(await request.json())
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse({"ok": True})

        async def send(request: Request) -> Response:
            try:
                msg_id, sent_at, outgoing = self.client_send(await request.json())
            except (ValueError, KeyError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            for one in outgoing:
                self.feed.push(one)
            return JSONResponse({"msg_id": msg_id, "sent_at_ms": sent_at})

        async def recall(request: Request) -> Response:
            try:
                outgoing = self.client_recall(await request.json())
            except (ValueError, KeyError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            for one in outgoing:
                self.feed.push(one)
            return JSONResponse({"ok": True})

        async def inbox(request: Request) -> Response:
            user = request.query_params.get("user", "")
            return JSONResponse(self.inbox_view(user))

        async def stats(request: Request) -> Response:
            return JSONResponse(self.feed.snapshot())

        return [Route("/_sandbox/feed", configure, methods=["POST"]),
                Route("/_sandbox/client/send", send, methods=["POST"]),
                Route("/_sandbox/client/recall", recall, methods=["POST"]),
                Route("/_sandbox/inbox", inbox, methods=["GET"]),
                Route("/_sandbox/feed/stats", stats, methods=["GET"])]


def json_body(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
