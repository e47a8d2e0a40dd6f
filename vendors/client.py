"""The async client every vendor module extends: one interface, one HTTP path.

A client is given an `httpx.AsyncClient` (so the caller picks the transport:
aiohttp for real traffic, ASGI for the sandboxes) and an optional `throttle`,
awaited before every HTTP call with the call's rate-limit key and weight.
Admin-token fetches and batch splits go through it too, so a rate limiter
sees every call that reaches the vendor.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Sequence

import httpx

from .base import Group, Message, Operation, Outcome, Profile, Result, Unsupported, VendorRules

Throttle = Callable[[str, int], Awaitable[None]]


async def no_throttle(key: str, weight: int) -> None:
    return None


@dataclass(frozen=True)
class Reply:
    """A vendor's HTTP reply, body parsed as JSON ({} when it is not JSON)."""

    status: int
    body: dict[str, Any]
    headers: httpx.Headers

    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None


class CallFailed(Exception):
    """No usable reply came back; `result` says how it failed (retryable)."""

    def __init__(self, result: Result):
        super().__init__(f"{result.code}: {result.message}")
        self.result = result


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []


class VendorClient:
    """Base class. Subclasses set `vendor`, `capabilities`, `rules` and
    implement the operations they list in `capabilities`; the rest raise
    `Unsupported` before any call is made.

    Every list-taking operation returns one Result per input item, in input
    order, splitting into the vendor's batch sizes itself.
    """

    vendor: ClassVar[str]
    capabilities: ClassVar[frozenset[Operation]]
    rules: ClassVar[VendorRules]
    # True when the vendor drops a repeated send carrying the same dedup_key,
    # so a send that may have gone out can safely be sent again.
    deduplicates_sends: ClassVar[bool] = False

    def __init__(self, http: httpx.AsyncClient, *, throttle: Throttle | None = None,
                 timeout: float = 10.0):
        self.http = http
        self.throttle = throttle or no_throttle
        self.timeout = timeout

    # -- capability checks ---------------------------------------------------------------

    @classmethod
    def supports(cls, operation: Operation) -> bool:
        return operation in cls.capabilities

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

    # -- the one HTTP path ---------------------------------------------------------------

    async def _request(self, key: str, method: str, url: str, *, weight: int = 1,
                       **kwargs: Any) -> Reply:
        """Throttle, send, parse. Network failures raise CallFailed(retryable)."""
        await self.throttle(key, weight)
        try:
            # Our own deadline: ASGI transports ignore httpx timeouts.
            async with asyncio.timeout(self.timeout):
                response = await self.http.request(method, url, **kwargs)
                await response.aread()
        except httpx.ConnectError as exc:
            raise CallFailed(Result(Outcome.RETRYABLE, "network", f"connect failed: {exc}")) from None
        except (TimeoutError, httpx.TimeoutException):
            raise CallFailed(Result(Outcome.RETRYABLE, "timeout",
                                    f"no reply within {self.timeout:g} s",
                                    maybe_delivered=True)) from None
        except httpx.TransportError as exc:
            raise CallFailed(Result(Outcome.RETRYABLE, "network", f"{type(exc).__name__}: {exc}",
                                    maybe_delivered=True)) from None
        try:
            body = json.loads(response.content) if response.content else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {"data": body}
        if response.status_code in (404, 405) and not body:
            # Not the vendor answering about an item: the address is wrong, and
            # every other call would fail the same way, so stop like a bad key.
            raise CallFailed(Result(Outcome.AUTH, f"http {response.status_code}",
                                    f"no such endpoint: {method} {response.url.copy_with(query=None)}; "
                                    "check the app's base URL"))
        return Reply(response.status_code, body, response.headers)


def same_for_all(result: Result, count: int) -> list[Result]:
    """A call-level outcome (auth, rate limit, network) applies to every item of the call."""
    return [result] * count
