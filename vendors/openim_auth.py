"""OpenIM's admin token: fetched with the shared secret, cached until it
expires, fetched once per client at a time (a new admin token leaves older
ones only five minutes), and once more when a call is refused for it.

`OpenIMAuth` stamps every request the version's way (operationID, and the
token unless the call carries the secret); `AdminToken` is the part of the
client that keeps the token. The versions (openim_v3.py, openim_v2.py) say
where the token comes from, how long it lasts and which codes refuse it.
"""

from __future__ import annotations

import json
import asyncio
from typing import TYPE_CHECKING, Any, AsyncGenerator, Callable, ClassVar

import httpx

from .vocabulary import Outcome, Result
from .client import CallFailed, Reply

if TYPE_CHECKING:
    from .openim import OpenIMClient

TOKEN_MARGIN = 60.0  # fetch a new admin token this long before the old one expires
# The auth flow reads a reply for a refused token only when it declares at most
# this length: a refusal is short, and this cannot decode past the reply cap.
PEEK_BYTES = 8 * 1024


class OpenIMAuth(httpx.Auth):
    """Stamps a request the version's way (`client.stamp`): a fresh operationID
    and, unless `admin` is False (v2 calls carrying the secret), the admin
    token: cached, fetched here when none is fresh, and again once if refused."""

    def __init__(self, client: OpenIMClient, *, admin: bool = True):
        self.client = client
        self.admin = admin

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self.client
        if not self.admin:
            yield client.stamp(request, None)
            return
        stale: str | None = None
        for attempt in range(2):
            token = client._fresh_token(stale)
            if token is None:
                async with client._token_lock:  # one fetch at a time: the others wait and share it
                    token = client._fresh_token(stale)
                    if token is None:
                        await client.throttle("auth", 1)
                        response = yield client.stamp(client._token_request(), None)
                        token = client._keep_token(await _reply(response))
            response = yield client.stamp(request, token)
            if attempt or not await client._refused_token(response):
                return
            stale = token


class AdminToken:
    """The client's admin token. The client sets `_admin_token`,
    `_admin_expires`, `_token_lock` and `_admin_auth`; each version sets
    `token_path`, `token_codes`, `_token_body()` and `_expiry(data)`."""

    token_codes: ClassVar[range]  # the codes of a refused token
    token_path: ClassVar[str]
    _token_body: Callable[[], dict[str, Any]]
    _expiry: Callable[[dict[str, Any]], float]
    # the client's (VendorClient, OpenIMClient)
    _admin_token: str | None
    _admin_expires: float
    _token_lock: asyncio.Lock
    _admin_auth: httpx.Auth
    clock: Callable[[], float]
    config: Any
    http: httpx.AsyncClient
    classify: Callable[[str, Reply], Result]
    reply_code: Callable[[dict[str, Any]], Any]
    reply_message: Callable[[dict[str, Any]], str]

    def auth(self) -> httpx.Auth:
        return self._admin_auth

    def _token_refused(self, status: int, code: int, message: str) -> bool:
        return code in self.token_codes

    def _fresh_token(self, stale: str | None) -> str | None:
        """The cached admin token unless missing, expiring, or `stale`."""
        token = self._admin_token
        fresh = token is not None and token != stale and self.clock() < self._admin_expires - TOKEN_MARGIN
        return token if fresh else None

    def _token_request(self) -> httpx.Request:
        url = self.config.base_url.rstrip("/") + self.token_path
        return self.http.build_request("POST", url, json=self._token_body())

    def _keep_token(self, reply: Reply) -> str:
        """Cache the token a token reply carries, or raise CallFailed."""
        result = self.classify("auth", reply)
        data = reply.body.get("data")
        token = data.get("token") if isinstance(data, dict) else None
        if result.outcome is Outcome.OK and not token:
            result = Result(Outcome.RETRYABLE, "incomplete", "the admin token reply carried no token")
        if result.outcome is Outcome.REJECTED:  # e.g. 1001 "userID is error": a config problem
            why = result.message or result.code
            result = Result(Outcome.AUTH, result.code, f"admin token refused: {why}")
        if result.outcome is not Outcome.OK:
            raise CallFailed(result)
        assert isinstance(data, dict)
        self._admin_token, self._admin_expires = str(token), self._expiry(data)
        return self._admin_token

    async def _refused_token(self, response: httpx.Response) -> bool:
        """Whether a reply says the token it answers was refused. Read only
        when short (see PEEK_BYTES); a longer reply is left to the base."""
        declared = response.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > PEEK_BYTES:
            return False
        reply = await _reply(response)
        code = self.reply_code(reply.body)
        return bool(code) and self._token_refused(reply.status, code, self.reply_message(reply.body))


async def _reply(response: httpx.Response) -> Reply:
    """A reply read in the auth flow, parsed as the base parses one."""
    content = await response.aread()
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        return Reply(response.status_code, {}, response.headers, readable=False)
    return Reply(response.status_code, body if isinstance(body, dict) else {"data": body}, response.headers)
