"""The base of every vendor sandbox: an ASGI app (Starlette) with in-memory
state that answers a vendor's server API the way the vendor does.

The base owns the plumbing: endpoint registration (each endpoint names its
body, form or JSON, and GET reads the query), the call pipeline (auth, then
body, then admission, then the vendor's handler), one refusal type that
becomes the vendor's error body, fault injection and strict per-operation
rate limits in fixed one-second windows, the counters a test or benchmark
reads to learn what really reached "the vendor", the client wiring (a wrong
secret included) and the read-backs over one in-memory `Store`.

A vendor module subclasses `Sandbox` and provides `endpoints()`,
`authenticate(request)`, `error_body(code, message)`, `ok_body(data)`,
`client_config(base_url, secret)` and `profile(user_id, record)`.
"""

from __future__ import annotations

import asyncio
import math
import inspect
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Hashable, Iterable, Mapping
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..vocabulary import WINDOWS, Profile
from ..client import VendorClient
from .store import Key, Store

STATS_PATH = "/_sandbox/stats"  # GET: the counters, for benchmarks and rehearsals over HTTP


@dataclass
class Faults:
    """Faults injected into calls that pass auth (shares are 0..1)."""

    latency: float = 0.0  # seconds added to every call
    # Network jitter: each call reaches the vendor's counter up to this many
    # seconds late (uniform), so a call sent near a window's edge may be
    # counted in the next window.
    jitter: float = 0.0
    error_rate: float = 0.0  # share answered with the vendor's 5xx/internal error
    timeout_rate: float = 0.0  # share that hang for `hang_seconds`, then get the 5xx
    hang_seconds: float = 30.0
    seed: int | None = None


class Refusal(Exception):
    """A call the vendor refuses: its code, message and HTTP status (None: the
    sandbox's usual status). `extra` fields join the error body."""

    def __init__(self, code: int, message: str, status: int | None = None, *,
                 headers: Mapping[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.headers = dict(headers or {})
        self.extra = extra


class Form(dict):
    """Form or query fields: the first value of each name, and `getlist` for
    names sent more than once (RongCloud's repeated `toUserId`)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self.lists: dict[str, list[str]] = {}
        for key, value in items:
            self.lists.setdefault(key, []).append(value)
        super().__init__((key, values[0]) for key, values in self.lists.items())

    def getlist(self, name: str) -> list[str]:
        return list(self.lists.get(name, []))


Op = str | Callable[[Any], str]  # an endpoint's counted operation, or a function of its params


@dataclass
class Endpoint:
    """One route: `op` is the counted operation (or a function of the params),
    `body` is "form", "json" or "query", `weight` what the call counts
    against the limit (a function of the params)."""

    path: str
    op: Op
    handler: Callable[[Any, "Call"], Any]
    body: str = "form"
    methods: tuple[str, ...] = ("POST",)
    weight: Callable[[Any], int] | None = None


@dataclass
class Call:
    """What a handler may need beyond its params."""

    request: Request
    who: Any = None  # what `authenticate` returned
    op: str = ""
    headers: Any = field(init=False)

    def __post_init__(self) -> None:
        self.headers = self.request.headers


def wrong(secret: str) -> str:
    """A secret that differs from `secret`, no longer than 32 characters."""
    return "wrong-" + secret[:26]


class Sandbox:
    """Base of the vendor sandboxes.

    `rate_limits` maps an operation key (an `Operation` value, or a vendor
    specific key such as "auth") to calls per second; `block_seconds` makes
    the app blocked for that long after an over-limit call, as NetEase does.
    `caps` maps a key to calls per fixed UTC window ({"broadcast": {"hour": 2,
    "day": 3}}); by default the vendor's documented caps (its client's rules).
    """

    vendor: ClassVar[str]
    client_class: ClassVar[type[VendorClient]]
    secret_attr: ClassVar[str] = "secret"  # the attribute `config(wrong_secret=True)` replaces
    error_status: ClassVar[int] = 200  # HTTP status of a refusal that names none
    media_type: ClassVar[str] = "application/json"
    SERVER_ERROR: ClassVar[Refusal] = Refusal(500, "internal error", 500)
    OVER_LIMIT: ClassVar[Refusal] = Refusal(429, "over the limit", 429, headers={"Retry-After": "1"})

    def __init__(self, *, rate_limits: Mapping[str, float] | None = None,
                 faults: Faults | None = None, block_seconds: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 caps: Mapping[str, Mapping[str, int]] | None = None):
        self.rate_limits = {str(k): v for k, v in (rate_limits or {}).items()}
        if caps is None:  # a sandbox may stand alone, with no client class
            rules = getattr(getattr(self, "client_class", None), "rules", None)
            caps = {op.value: {c.per: c.calls for c in cs} for op, cs in rules.caps.items()} if rules else {}
        self.caps = {str(k): dict(v) for k, v in caps.items()}
        self._cap_counts: Counter[tuple[str, str, int]] = Counter()  # (op, window, index) -> calls
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
        self._slow_windows: dict[tuple[str, int], int] = {}  # (op, window) -> calls, for limits under 1/s
        self.store = Store()
        self.app = Starlette(routes=self.routes() + [Route(STATS_PATH, self._stats, methods=["GET"])])

    # -- to be provided by each vendor -------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        raise NotImplementedError

    def authenticate(self, request: Request) -> Any:
        """Raise a `Refusal` for a call the vendor would not authenticate;
        return whatever the handlers should know of the caller."""
        return None

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"code": code, "message": message}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"code": 200, "data": data}

    def unreadable(self, raw: bytes) -> Refusal:
        """The refusal of a JSON body that does not parse to an object."""
        return Refusal(400, "the body is not a JSON object", 400)

    def client_config(self, base_url: str, secret: str) -> Any:
        raise NotImplementedError

    def profile(self, user_id: str, record: Any) -> Profile:
        raise NotImplementedError

    def key(self, user_id: str) -> Hashable:
        """The store's key of an id as tests spell it."""
        return user_id

    # -- the pipeline ------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route(ep.path, self._handler(ep), methods=list(ep.methods)) for ep in self.endpoints()]

    def _handler(self, ep: Endpoint) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            request.state.endpoint = ep
            try:
                who = self.authenticate(request)
                if inspect.isawaitable(who):
                    who = await who
                params = await self.params(request)
                op = ep.op(params) if callable(ep.op) else ep.op
                refused = await self.admit(op, ep.weight(params) if ep.weight else 1)
                if refused is not None:
                    return refused
                result = ep.handler(params, Call(request, who, op))
                if inspect.isawaitable(result):
                    result = await result
            except Refusal as refusal:
                return self.refuse(refusal)
            return result if isinstance(result, Response) else self.ok(result)
        return handle

    async def params(self, request: Request) -> Any:
        """The request's params as its endpoint declares them (parsed once)."""
        if hasattr(request.state, "params"):
            return request.state.params
        kind = request.state.endpoint.body
        if kind == "query" or request.method == "GET":
            params: Any = Form(request.query_params.multi_items())
        elif kind == "json":
            raw = await request.body()
            try:
                params = json.loads(raw) if raw.strip() else None
            except ValueError:
                params = None
            if not isinstance(params, dict):
                raise self.unreadable(raw)
        else:
            text = (await request.body()).decode("utf-8", "replace")
            params = Form(parse_qsl(text, keep_blank_values=True))
        request.state.params = params
        return params

    def ok(self, data: Any) -> Response:
        return JSONResponse(self.ok_body(data), media_type=self.media_type)

    def refuse(self, refusal: Refusal) -> Response:
        body = {**self.error_body(refusal.code, refusal.message), **refusal.extra}
        return JSONResponse(body, status_code=refusal.status or self.error_status,
                            headers=refusal.headers or None, media_type=self.media_type)

    def server_error(self) -> Response:
        return self.refuse(self.SERVER_ERROR)

    def rate_limited(self, op: str) -> Response:
        return self.refuse(self.OVER_LIMIT)

    # -- admission ---------------------------------------------------------------------

    async def admit(self, op: str, weight: int = 1) -> Response | None:
        """Count the call, apply latency, faults and the rate limit. Returns
        the reply to send instead of acting, or None to go on. `weight` is
        what the call counts against the limit (vendors that count messages,
        not calls, pass the number of recipients)."""
        self.calls[op] += 1
        if self.faults.jitter:
            await asyncio.sleep(self._random.uniform(0, self.faults.jitter))
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

    def _within_caps(self, op: str, weight: int, now: float) -> bool:
        """The call fits every cap of `op` in its current fixed window (then it is counted)."""
        windows = [((op, per, int(now // WINDOWS[per])), n) for per, n in self.caps.get(op, {}).items()]
        if any(self._cap_counts[w] + weight > n for w, n in windows):
            return False
        for w, _ in windows:
            self._cap_counts[w] += weight
        return True

    def _within_limit(self, op: str, weight: int, now: float) -> bool:
        limit = self.rate_limits.get(op)
        if limit is None:
            return self._within_caps(op, weight, now)
        if now < self._blocked_until.get(op, 0.0):
            return False
        second = int(now)
        if limit >= 1:
            over = self.window_counts[op][second] + weight > limit
        else:  # under one call a second (2 broadcasts an hour): one call per 1/limit seconds
            window = (op, math.floor(now * limit))
            over = self._slow_windows.get(window, 0) + weight > 1
        if over:
            if self.block_seconds:
                self._blocked_until[op] = now + self.block_seconds
            return False
        if not self._within_caps(op, weight, now):
            return False
        if limit < 1:
            self._slow_windows[window] = self._slow_windows.get(window, 0) + weight
        self.window_counts[op][second] += weight
        return True

    # -- counters ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What reached this "vendor": the counters, as JSON-ready data."""
        return {"vendor": self.vendor, "rate_limits": self.rate_limits, "caps": self.caps,
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

    # -- clients -----------------------------------------------------------------------

    def config(self, base_url: str = "http://sandbox.test", *, wrong_secret: bool = False) -> Any:
        """The client configuration that talks to this sandbox at base_url."""
        secret = getattr(self, self.secret_attr)
        return self.client_config(base_url, wrong(secret) if wrong_secret else secret)

    def client(self, base_url: str = "http://sandbox.test", *, wrong_secret: bool = False,
               **client_kwargs: Any) -> VendorClient:
        """A client wired to this sandbox in-process (no network)."""
        import httpx

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))
        config = self.config(base_url, wrong_secret=wrong_secret)
        return self.client_class.for_config(config)(config, http, **client_kwargs)

    # -- read-back for tests -----------------------------------------------------------

    @property
    def users(self) -> dict[Key, Any]:
        return self.store.users

    @property
    def groups(self) -> dict[Key, Any]:
        return self.store.groups

    @property
    def inboxes(self) -> dict[Key, list[dict[str, Any]]]:
        return self.store.inboxes

    def stored_profile(self, user_id: str) -> Profile | None:
        record = self.store.users.get(self.key(user_id))
        return None if record is None else self.profile(user_id, record)

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        """Messages delivered to a user, oldest first."""
        return [dict(m) for m in self.store.inboxes.get(self.key(user_id), [])]

    def group_members(self, group_id: str) -> set[str] | None:
        group = self.store.groups.get(self.key(group_id))
        return None if group is None else {str(m) for m in group["members"]}

    def friends(self, user_id: str) -> set[str]:
        return {str(f) for f in self.store.friends.get(self.key(user_id), ())}
