"""What every vendor sandbox shares: fault injection, strict per-operation
rate limits in fixed one-second windows, and counters a test or benchmark
can read to learn what really reached "the vendor".

A sandbox is an ASGI app (Starlette) with in-memory state. Each vendor
module subclasses `Sandbox`, declares its routes, checks auth the vendor's
way and calls `admit(op)` before acting on a call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Profile
from ..client import VendorClient


STATS_PATH = "/_sandbox/stats"  # GET: the counters, for benchmarks and rehearsals over HTTP


@dataclass
class Faults:
    """Faults injected into calls that pass auth (shares are 0..1)."""

    latency: float = 0.0  # seconds added to every call
    error_rate: float = 0.0  # share answered with the vendor's 5xx/internal error
    timeout_rate: float = 0.0  # share that hang for `hang_seconds`, then get the 5xx
    hang_seconds: float = 30.0
    seed: int | None = None


class Sandbox:
    """Base of the four vendor sandboxes.

    Subclasses set `vendor` and `client_class`, and implement `routes()`,
    `config()`, `server_error()`, `rate_limited()` and the read-back helpers
    (`stored_profile`, `inbox`, `group_members`, `friends`) that let tests
    check state without going through the client under test.

    `rate_limits` maps an operation key (an `Operation` value, or a vendor
    specific key such as "auth") to calls per second; `block_seconds` makes
    the app blocked for that long after an over-limit call, as NetEase does.
    """

    vendor: ClassVar[str]
    client_class: ClassVar[type[VendorClient]]

    def __init__(self, *, rate_limits: Mapping[str, float] | None = None,
                 faults: Faults | None = None, block_seconds: float = 0.0,
                 clock: Callable[[], float] = time.time):
        self.rate_limits = {str(k): v for k, v in (rate_limits or {}).items()}
        self.faults = faults or Faults()
        self.block_seconds = block_seconds
        self.clock = clock
        self._random = random.Random(self.faults.seed)
        self.calls: Counter[str] = Counter()  # every authenticated call, per op
        self.accepted: Counter[str] = Counter()  # calls that passed the limiter and faults
        self.over_limit: Counter[str] = Counter()  # calls answered "over the limit"
        self.faulted: Counter[str] = Counter()  # calls answered with an injected fault
        self.duplicates: Counter[str] = Counter()  # creations of something already there
        self.window_counts: dict[str, Counter[int]] = defaultdict(Counter)  # op -> second -> accepted
        self._blocked_until: dict[str, float] = {}
        self.app = Starlette(routes=self.routes() + [Route(STATS_PATH, self._stats, methods=["GET"])])

    # -- to be provided by each vendor -------------------------------------------------

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def config(self, base_url: str, *, wrong_secret: bool = False) -> Any:
        """The client configuration that talks to this sandbox at base_url."""
        raise NotImplementedError

    def server_error(self) -> Response:
        raise NotImplementedError

    def rate_limited(self, op: str) -> Response:
        raise NotImplementedError

    def stored_profile(self, user_id: str) -> Profile | None:
        raise NotImplementedError

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        """Messages delivered to a user, oldest first."""
        raise NotImplementedError

    def group_members(self, group_id: str) -> set[str] | None:
        raise NotImplementedError

    def friends(self, user_id: str) -> set[str]:
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------

    async def admit(self, op: str, weight: int = 1) -> Response | None:
        """Count the call, apply latency, faults and the rate limit. Returns
        the reply to send instead of acting, or None to go on. `weight` is
        what the call counts against the limit (vendors that count messages,
        not calls, pass the number of recipients)."""
        self.calls[op] += 1
        # A vendor's gateway counts a call when it arrives, not when the work
        # behind it is done: the window is the arrival's second.
        arrived = self.clock()
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        roll = self._random.random()
        if roll < self.faults.timeout_rate:
            self.faulted[op] += 1
            await asyncio.sleep(self.faults.hang_seconds)
            return self.server_error()
        if roll < self.faults.timeout_rate + self.faults.error_rate:
            self.faulted[op] += 1
            return self.server_error()
        if not self._within_limit(op, weight, arrived):
            self.over_limit[op] += 1
            return self.rate_limited(op)
        self.accepted[op] += 1
        return None

    def _within_limit(self, op: str, weight: int, now: float) -> bool:
        limit = self.rate_limits.get(op)
        if limit is None:
            return True
        if now < self._blocked_until.get(op, 0.0):
            return False
        second = int(now)
        if self.window_counts[op][second] + weight > limit:
            if self.block_seconds:
                self._blocked_until[op] = now + self.block_seconds
            return False
        self.window_counts[op][second] += weight
        return True

    def stats(self) -> dict[str, Any]:
        """What reached this "vendor": the counters, as JSON-ready data."""
        return {"vendor": self.vendor, "rate_limits": self.rate_limits,
                "calls": dict(self.calls), "accepted": dict(self.accepted),
                "over_limit": dict(self.over_limit), "faulted": dict(self.faulted),
                "duplicates": dict(self.duplicates),
                "max_per_second": {op: self.max_per_second(op) for op in self.window_counts}}

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    def max_per_second(self, op: str) -> int:
        """The most calls of `op` accepted in any one-second window."""
        counts = self.window_counts.get(str(op))
        return max(counts.values()) if counts else 0

    def client(self, base_url: str = "http://sandbox.test", *, wrong_secret: bool = False,
               **client_kwargs: Any) -> VendorClient:
        """A client wired to this sandbox in-process (no network)."""
        import httpx

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))
        return self.client_class(self.config(base_url, wrong_secret=wrong_secret), http,
                                 **client_kwargs)
