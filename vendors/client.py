"""The async client every vendor module extends: one interface, one item pipeline.

A client is given its vendor config, an `httpx.AsyncClient` (so the caller
picks the transport: aiohttp for real traffic, ASGI for the sandboxes) and an
optional `throttle`, awaited before every HTTP call with the call's rate-limit
key and weight. Admin-token fetches and batch splits go through it too, so a
rate limiter sees every call that reaches the vendor.

The base owns what is the same for every vendor: the request -> classify
path (`call`), the reading of a reply (size cap, JSON, HTTP 429 and
Retry-After, "may have been delivered" for calls that are not idempotent),
sorting a batch into rule-rejected items and valid ones (`Batch`), and
bounded per-item concurrency (`each`). A vendor module keeps its config,
its signing (an `httpx.Auth`), its endpoints and payloads, its code table
(`Codes`) and its per-item reply parsing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, ClassVar, Generic, Iterable,
                    Sequence, TypeVar)

import httpx

from .vocabulary import (CAP_CODE, CapReached, Group, Message, Operation, Outcome, Profile, Result,
                         Unsupported, VendorRules)
from .operations import idempotent

if TYPE_CHECKING:
    from .feeds import Delivery, FeedMessage

Throttle = Callable[[str, int], Awaitable[None]]
T = TypeVar("T")
R = TypeVar("R")

MAX_REPLY_BYTES = 8 * 1024 * 1024  # no vendor reply we read is near this; a proxy's may be
# What `deduplicates_sends` covers: a broadcast takes no per-recipient key anywhere.
SEND_KEYS = frozenset({Operation.SEND.value, Operation.SEND_GROUP.value})
DEFAULT_CONCURRENCY = 8  # per-item calls in flight per method call, when the config says nothing
PARSED_URLS_MAX = 256  # endpoints a client keeps parsed; ids in paths would grow it without end


async def no_throttle(key: str, weight: int) -> None:
    return None


@dataclass(frozen=True)
class Reply:
    """A vendor's HTTP reply, body parsed as JSON ({} when it is not JSON;
    `readable` says which)."""

    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    readable: bool = True

    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None


class CallFailed(Exception):
    """No usable reply came back; `result` says how it failed."""

    def __init__(self, result: Result):
        super().__init__(f"{result.code}: {result.message}")
        self.result = result


@dataclass(frozen=True)
class Codes:
    """A vendor's reply codes and the outcome each means; a code in no set
    (other than `ok`) is `rejected`: bad input, the vendor said why."""

    ok: frozenset[Any] = frozenset({200})
    exists: frozenset[Any] = frozenset()
    rate_limited: frozenset[Any] = frozenset()
    retryable: frozenset[Any] = frozenset()
    auth: frozenset[Any] = frozenset()

    def outcome(self, code: Any) -> Outcome:
        for outcome, codes in ((Outcome.OK, self.ok), (Outcome.AUTH, self.auth),
                               (Outcome.EXISTS, self.exists), (Outcome.RATE_LIMITED, self.rate_limited),
                               (Outcome.RETRYABLE, self.retryable)):
            if code in codes:
                return outcome
        return Outcome.REJECTED


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []


def same_for_all(result: Result, count: int) -> list[Result]:
    """A call-level outcome (auth, rate limit, network) applies to every item of the call."""
    return [result] * count


def invalid(problem: str) -> Result:
    """An item refused by the vendor's documented rules, before any call."""
    return Result(Outcome.REJECTED, "invalid", problem)


class Batch(Generic[T]):
    """One Result per input item, in input order. Items a rule refuses are
    answered at once; the valid ones (`valid`, their indexes) go to the vendor
    and their results are filled in with `put`."""

    def __init__(self, items: Sequence[T], problem: Callable[[T], str | None] = lambda item: None):
        self.items = items
        self.results: list[Result | None] = [None] * len(items)
        self.valid: list[int] = []
        for index, item in enumerate(items):
            reason = problem(item)
            if reason:
                self.results[index] = invalid(reason)
            else:
                self.valid.append(index)

    def put(self, indexes: Iterable[int], result: Result | Sequence[Result]) -> None:
        """Give `indexes` one result each (a sequence) or all the same one."""
        indexes = list(indexes)
        each = result if isinstance(result, Sequence) else [result] * len(indexes)
        for index, one in zip(indexes, each, strict=True):
            self.results[index] = one

    def done(self) -> list[Result]:
        missing = [i for i, r in enumerate(self.results) if r is None]
        if missing:
            raise RuntimeError(f"no result for items {missing[:5]}")
        return list(self.results)  # type: ignore[arg-type]  # every slot filled: checked just above


class VendorClient:
    """Base class. Subclasses set `vendor`, `capabilities`, `rules`, `codes`
    and implement the operations they list in `capabilities`; the rest raise
    `Unsupported` before any call is made.

    Every list-taking operation returns one Result per input item, in input
    order, splitting into the vendor's batch sizes itself.
    """

    vendor: ClassVar[str]
    capabilities: ClassVar[frozenset[Operation]]
    # The class's defaults; an instance carries rules_for(its config).
    rules: VendorRules = VendorRules(fields={}, batch_size={}, rates={})
    codes: ClassVar[Codes] = Codes()
    # True when the vendor drops a repeated send carrying the same dedup_key,
    # so a send that may have gone out can safely be sent again.
    deduplicates_sends: ClassVar[bool] = False
    # Operations the table calls not idempotent that this vendor makes safe to
    # repeat (create_group where the app picks the id: a repeat is `exists`).
    repeat_safe_ops: ClassVar[frozenset[Operation]] = frozenset()
    max_reply_bytes: ClassVar[int] = MAX_REPLY_BYTES
    # The secret fields registering returns ("token", "password"): kept only
    # encrypted, so a migration without a token key loses them.
    register_secrets: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any, http: httpx.AsyncClient, *, throttle: Throttle | None = None,
                 timeout: float = 10.0):
        self.config = config
        self.http = http
        self.throttle = throttle or no_throttle
        self.timeout = timeout
        self.rules = self.rules_for(config)
        self.concurrency = max(1, int(getattr(config, "concurrency", DEFAULT_CONCURRENCY)))
        self._parsed: dict[str, httpx.URL] = {}

    @classmethod
    def for_config(cls, config: Any) -> type["VendorClient"]:
        """The class that serves an app configured with `config`: itself, or
        a subclass for the deployment's API version (OpenIM v2 / v3)."""
        return cls

    @classmethod
    def rules_for(cls, config: Any) -> VendorRules:
        """The rules of an app configured with `config` (a deployment's API
        version or batch-size overrides change them). Planners, estimates,
        rate defaults and workers all read this, never the class attribute."""
        return cls.rules

    # -- capability checks ---------------------------------------------------------------

    @classmethod
    def supports(cls, operation: Operation) -> bool:
        return operation in cls.capabilities

    @classmethod
    def repeat_safe(cls, key: str | Operation) -> bool:
        """Whether a call that may have reached the vendor can be made again:
        the operation is idempotent, or the vendor deduplicates it."""
        key = key.value if isinstance(key, Operation) else key
        if idempotent(key) or key in {op.value for op in cls.repeat_safe_ops}:
            return True
        return cls.deduplicates_sends and key in SEND_KEYS

    def _unsupported(self, operation: Operation) -> Unsupported:
        return Unsupported(self.vendor, operation)

    # -- the common interface ------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        """Create accounts with their profiles. An existing account is `exists`.
        Result.data: "user_id" (the vendor's id for the account), and "token"
        or "password" where registering yields one."""
        raise self._unsupported(Operation.REGISTER)

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        raise self._unsupported(Operation.UPDATE_PROFILE)

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Read accounts back (None for an unknown id); used to verify a migration.
        A call-level failure (auth, rate limit, network) raises CallFailed."""
        raise self._unsupported(Operation.GET_PROFILES)

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        """A new login token per user: Result.data["token"] (and "expires_at"
        in epoch seconds where the vendor says)."""
        raise self._unsupported(Operation.ISSUE_TOKEN)

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        """One-to-one messages from `sender` to each recipient, using the
        vendor's batch call. `dedup_key` lets a vendor that deduplicates
        (Maxim) drop a repeated call; it is derived per batch."""
        raise self._unsupported(Operation.SEND)

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        raise self._unsupported(Operation.SEND_GROUP)

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        raise self._unsupported(Operation.BROADCAST)

    async def create_group(self, group: Group) -> Result:
        """Create a group with its members. Result.data["group_id"] is the
        vendor's id for it (the app's own where the vendor lets us choose)."""
        raise self._unsupported(Operation.CREATE_GROUP)

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        raise self._unsupported(Operation.ADD_MEMBERS)

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """Make `owner` friends with each of `friend_ids` directly (no request)."""
        raise self._unsupported(Operation.IMPORT_FRIENDS)

    def list_users(self, page_size: int = 200) -> AsyncIterator[str]:
        """Every user id of the app, page by page."""
        raise self._unsupported(Operation.LIST_USERS)

    def list_user_pages(self, cursor: str | None = None,
                        page_size: int = 200) -> AsyncIterator[tuple[list[Profile], str | None]]:
        """The app's users with their profiles, a page at a time, from
        `cursor` (None: the start). Each page comes with the cursor that
        resumes after it (None after the last page). A failed read raises
        CallFailed; a cursor this vendor never gave raises ValueError."""
        raise self._unsupported(Operation.LIST_USERS)

    def list_group_pages(self, cursor: str | None = None,
                         page_size: int = 100) -> AsyncIterator[tuple[list[Group], str | None]]:
        """The app's groups, each with its owner, name, avatar, intro and
        every member but the owner, a page at a time from `cursor`, as
        list_user_pages pages its users. Raises CallFailed or ValueError as
        list_user_pages does."""
        raise self._unsupported(Operation.LIST_GROUPS)

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """The group's member ids at the vendor, owner included, or None when
        there is no such group. Any other failure raises CallFailed."""
        raise self._unsupported(Operation.GET_MEMBERS)

    async def get_friends(self, user_id: str) -> list[str]:
        """The user's friend ids at the vendor ([] for none). Raises CallFailed."""
        raise self._unsupported(Operation.GET_FRIENDS)

    async def find_groups(self, owner: str, name: str) -> list[str] | None:
        """The ids of the groups `owner` holds named exactly `name` (to learn
        whether a cut-off create made one), or None where the vendor has no
        read that finds them. Raises CallFailed."""
        return None

    # An id every vendor's rules accept (Maxim's are numeric); whether it exists does not matter.
    check_id: ClassVar[str] = "1"

    async def check(self) -> Result:
        """One read-only call that needs the app's credentials (a made-up
        user's profile, with the admin token where the vendor needs one):
        `ok` when the vendor accepted them, otherwise the call's Result
        (auth: refused; network: not reached)."""
        try:
            await self.get_profiles([self.check_id])
        except CallFailed as failed:
            return failed.result
        return Result(Outcome.OK, "ok")

    # -- the bridge (vendors/feeds.py) ----------------------------------------------------

    # True where the vendor has a message feed `read_feed` reads, and a send
    # `relay` makes as the original sender; `recalls` where it can also take a
    # message back through its server API.
    feeds: ClassVar[bool] = False
    recalls: ClassVar[bool] = False

    @classmethod
    def read_feed(cls, config: Any, delivery: "Delivery", now: float) -> list["FeedMessage"]:
        """The messages of one feed delivery, verified as the vendor signs it
        (a delivery that carries no message, such as another event type,
        gives []). Raises FeedRefused: 401 for a bad signature or a stale
        timestamp, 400 for a body that cannot be read."""
        from .feeds import FeedRefused

        raise FeedRefused(404, f"{cls.vendor} has no message feed imshift can read")

    async def relay(self, message: "FeedMessage", *, dedup_key: str) -> Result:
        """Send `message` (ids already the target's) as its sender, to the
        user or the group, carrying feeds.MARK where the vendor has a place
        for it. Result.data["msg_id"]: the target's id of the message. It is
        throttled under the key of the operation its endpoint is (send or
        send_group), so it shares that quota with mass sends. A kind the
        vendor cannot carry is `rejected` with the reason, before any call."""
        raise self._unsupported(Operation.SEND)

    async def recall(self, message: "FeedMessage", target_msg_id: str) -> Result:
        """Take back the message relayed as `target_msg_id` (`message`: the
        original, ids the target's). `rejected` where the vendor cannot."""
        return Result(Outcome.REJECTED, "unsupported", f"{self.vendor} has no server-side recall")

    # -- hooks a vendor fills in ---------------------------------------------------------

    def reply_code(self, body: dict[str, Any]) -> Any:
        """The vendor's business code in a reply body, or None when it has none."""
        code = body.get("code")
        if isinstance(code, str) and code.lstrip("-").isdigit():
            return int(code)
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def reply_message(self, body: dict[str, Any]) -> str:
        for key in ("message", "errorMessage", "errMsg", "desc", "msg", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        return ""

    def classify(self, key: str, reply: Reply) -> Result:
        """A reply's call-level outcome: HTTP 429 first, then the body code
        through `codes`, then the HTTP status."""
        message = self.reply_message(reply.body)
        if reply.status == 429:
            return Result(Outcome.RATE_LIMITED, "http 429", message or "over the rate limit",
                          retry_after=reply.retry_after())
        code = self.reply_code(reply.body)
        if code is not None:
            outcome = self.codes.outcome(code)
            if reply.status >= 500 and outcome not in (Outcome.AUTH, Outcome.RATE_LIMITED):
                # A gateway's 5xx may carry any code: the server did not finish the work.
                outcome = Outcome.RETRYABLE
            elif outcome is Outcome.OK and reply.status >= 300:
                outcome = Outcome.REJECTED
            return Result(outcome, str(code), message,
                          retry_after=reply.retry_after() if outcome is Outcome.RATE_LIMITED else None)
        if reply.status >= 500:
            return Result(Outcome.RETRYABLE, f"http {reply.status}", message or "server error")
        if reply.status in (401, 403):
            return Result(Outcome.AUTH, f"http {reply.status}", message or "refused the credentials")
        if 200 <= reply.status < 300:
            return Result(Outcome.RETRYABLE, "no code",
                          "the reply is not the vendor's JSON" if not reply.readable
                          else "the reply carried no code")
        return Result(Outcome.REJECTED, f"http {reply.status}", message)

    def auth(self) -> httpx.Auth | None:
        """The signing of every request (an httpx.Auth), or None."""
        return None

    # -- the one item pipeline ------------------------------------------------------------

    async def call(self, key: str | Operation, method: str, url: str, *, weight: int = 1,
                   repeat_safe: bool | None = None, expect: Sequence[str] = (),
                   **kwargs: Any) -> tuple[Result, dict[str, Any]]:
        """Throttle, send, read, classify: the Result and the parsed body.

        `repeat_safe` says whether the call may be made again without harm;
        by default an operation's idempotency from the operation table. When
        it is not, a reply that cannot be trusted (a timeout, a reset, an
        unreadable body, an internal error) marks the result maybe_delivered.
        `expect` names body fields (dotted) an OK reply must carry; without
        them it is not OK.
        """
        key = key.value if isinstance(key, Operation) else key
        if repeat_safe is None:
            repeat_safe = self.repeat_safe(key)
        try:
            reply = await self._request(key, method, url, weight=weight, **kwargs)
        except CallFailed as failed:
            return self._unsure(failed.result, repeat_safe), {}
        except CapReached as cap:  # the throttle kept it back: surely never sent
            return Result(Outcome.RATE_LIMITED, CAP_CODE, str(cap)), {}
        result = self.classify(key, reply)
        if result.outcome is Outcome.OK and expect:
            missing = [path for path in expect if not _has(reply.body, path)]
            if missing:
                result = Result(Outcome.RETRYABLE, "incomplete",
                                f"the vendor answered {result.code} without {', '.join(missing)}")
        return self._unsure(result, repeat_safe), reply.body

    def _unsure(self, result: Result, repeat_safe: bool) -> Result:
        if result.outcome is Outcome.RETRYABLE and not repeat_safe and result.code != "network":
            return replace(result, maybe_delivered=True)
        return result

    async def each(self, items: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
        """`work` on every item, at most `config.concurrency` at a time, results in order."""
        if len(items) == 1:  # one call (a worker's usual batch): no task, no gate
            return [await work(items[0])]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: T) -> R:
            async with gate:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def each_valid(self, items: Sequence[T], problem: Callable[[T], str | None],
                         work: Callable[[T], Awaitable[Result]]) -> list[Result]:
        """`work` on every item `problem` does not refuse (those end `invalid`),
        as `each` does, one Result per item in input order."""
        if len(items) == 1:  # a worker's usual batch: no Batch to sort it
            reason = problem(items[0])
            return [invalid(reason) if reason else await work(items[0])]
        batch = Batch(items, problem)
        batch.put(batch.valid, await self.each([items[i] for i in batch.valid], work))
        return batch.done()

    async def _request(self, key: str, method: str, url: str, *, weight: int = 1,
                       **kwargs: Any) -> Reply:
        """Throttle, send, read (at most max_reply_bytes), parse. No usable
        reply raises CallFailed: a refused connection surely never arrived
        (code "network"); a timeout or reset may have."""
        await self.throttle(key, weight)
        auth = kwargs.pop("auth") if "auth" in kwargs else self.auth()
        try:
            # Our own deadline: ASGI transports ignore httpx timeouts.
            async with asyncio.timeout(self.timeout):
                # What `http.stream` does, without its context manager's async
                # generator (a few percent of a call's CPU: bench/overhead.py).
                response = await self.http.send(self.http.build_request(method, self._url(url), **kwargs),
                                                auth=httpx.USE_CLIENT_DEFAULT if auth is None else auth,
                                                stream=True)
                try:
                    content = await self._read_capped(response)
                finally:
                    await response.aclose()
        except httpx.ConnectError as exc:
            raise CallFailed(Result(Outcome.RETRYABLE, "network", f"connect failed: {exc}")) from None
        except (TimeoutError, httpx.TimeoutException):
            raise CallFailed(Result(Outcome.RETRYABLE, "timeout",
                                    f"timeout: no reply within {self.timeout:g} s",
                                    maybe_delivered=True)) from None
        except httpx.TransportError as exc:
            raise CallFailed(Result(Outcome.RETRYABLE, "reset",
                                    f"connection reset before a reply ({type(exc).__name__}: {exc})",
                                    maybe_delivered=True)) from None
        try:
            body = json.loads(content) if content else {}
            readable = bool(content)
        except ValueError:
            body, readable = {}, False
        if not isinstance(body, dict):
            body = {"data": body}
        if response.status_code in (404, 405) and not body:
            # Not the vendor answering about an item: the address is wrong, and
            # every other call would fail the same way, so stop like a bad key.
            raise CallFailed(Result(Outcome.AUTH, f"http {response.status_code}",
                                    f"no such endpoint: {method} {response.url.copy_with(query=None)}; "
                                    "check the app's base URL"))
        return Reply(response.status_code, body, response.headers, readable)

    def _url(self, url: str) -> httpx.URL:
        """`url` parsed once: httpx parses a string URL on every request, about
        5% of a call's CPU (bench/overhead.py), and a client calls the same few
        endpoints over and over."""
        parsed = self._parsed.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._parsed) < PARSED_URLS_MAX:
                self._parsed[url] = parsed
        return parsed

    async def _read_capped(self, response: httpx.Response) -> bytes:
        # A reply with no Content-Encoding, not read yet (an auth flow may
        # have read it), is read raw: aiter_bytes sets up a decoder and a
        # chunker per reply, about 1.5% of a call's CPU.
        raw = not response.is_stream_consumed and "content-encoding" not in response.headers
        parts, size = [], 0
        async for part in response.aiter_raw() if raw else response.aiter_bytes():
            size += len(part)
            if size > self.max_reply_bytes:
                raise CallFailed(Result(Outcome.RETRYABLE, "oversized",
                                        f"the reply exceeded {self.max_reply_bytes} bytes; not read",
                                        maybe_delivered=True))
            parts.append(part)
        return b"".join(parts)


def _has(body: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(body, dict) or body.get(part) in (None, "", [], {}):
            return False
        body = body[part]
    return True
