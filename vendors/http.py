"""The HTTP client for real vendor traffic.

httpx stays the client API, but its own connection pool collapses above
about 40 requests in flight (encode/httpx#3215; measured here: 128 req/s
at 64 in flight), so real traffic goes over the aiohttp transport. Tests
against the sandboxes use `httpx.ASGITransport` instead: the transport is
the seam.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class VendorTransport(AiohttpTransport):
    """The aiohttp transport with httpx's exception meanings restored.

    httpx-aiohttp 0.2 maps every aiohttp connection error, a refused
    connection included, to `httpx.ConnectTimeout`. Whether a request may have
    reached the vendor decides whether a message send may be repeated, so a
    refused connection must read as ConnectError (surely not sent) and a
    dropped one as RemoteProtocolError (perhaps sent).
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            if isinstance(cause, aiohttp.ServerDisconnectedError):
                raise httpx.RemoteProtocolError(str(exc), request=request) from cause
            raise


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing a reply sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class VendorHTTP(httpx.AsyncClient):
    """httpx's client with no cookie jar. Vendor server APIs sign every
    request and keep no session, and httpx reads each reply's cookies
    through http.cookiejar (a urllib Request per reply): about 8% of a
    call's CPU in bench/overhead.py's profile."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._kept_none = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._kept_none

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise AttributeError("vendor HTTP clients keep no cookies")


def http_client(max_connections: int = 256, timeout: float = 30.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    # trust_env=False: proxies from the environment must not silently reroute vendor calls.
    return VendorHTTP(transport=VendorTransport(limits=limits, trust_env=False),
                      timeout=timeout, trust_env=False)
