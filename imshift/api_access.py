"""Who may use the HTTP face (imshift/api.py): with IMSHIFT_API_TOKEN set,
every API and page request carries it, as a bearer token or as the
HttpOnly cookie the page's login sets; `/openapi.json` and `/metrics` are
open to loopback clients only. Without a token, serve listens on loopback
only (imshift/api_serve.py).

A request that changes state (any method but GET, HEAD, OPTIONS) and names
another page as its Origin (or, without one, its Referer) is refused: a page
on another port of the same host is the same *site*, so the SameSite=Strict
cookie goes with its form posts and fetches. A request with neither header,
as curl and scripts send, is not a browser's and stays allowed."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated, Optional
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

COOKIE = "imshift_token"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMSHIFT_", extra="ignore")

    api_token: Optional[SecretStr] = None  # every API and page request needs it


def api_token() -> str | None:
    token = ApiSettings().api_token
    return token.get_secret_value() if token and token.get_secret_value() else None


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


bearer = HTTPBearer(auto_error=False, description="IMSHIFT_API_TOKEN")


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def token_ok(request: Request, given: str | None) -> bool:
    token: str | None = request.app.state.token
    if token is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                               token.encode("utf-8", "surrogateescape"))


def _given(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else request.cookies.get(COOKIE)


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NO_FRAMES = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def _netloc(url: str) -> str | None:
    """host:port of an origin or address, default ports dropped; None when unreadable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None  # "null": a sandboxed frame, a file, a redirect across origins
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if port in (None, default) else f"{host}:{port}"


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from this server's own page (or
    from no page at all). Host and port only, not the scheme: behind a proxy
    that ends TLS the page is https while this server sees http."""
    if request.method in SAFE_METHODS:
        return True
    sender = request.headers.get("origin") or request.headers.get("referer")
    if sender is None:
        return True
    own = _netloc(f"{request.url.scheme}://{request.headers.get('host', '')}")
    return own is not None and _netloc(sender) == own


def refuse_other_pages(request: Request) -> None:
    if not same_origin(request):
        sender = request.headers.get("origin") or request.headers.get("referer") or ""
        raise HTTPException(403, f"refused: a change sent from another page ({sender[:200]}); "
                                 "use imshift's own page, or send it without an Origin header "
                                 "as the CLI and scripts do")


async def access(request: Request,
                 credentials: Annotated[Optional[HTTPAuthorizationCredentials],
                                        Depends(bearer)] = None) -> None:
    # async: a check that does no I/O needs no hop to a worker thread
    refuse_other_pages(request)
    if not token_ok(request, _given(request, credentials)):
        raise HTTPException(401, "a valid IMSHIFT_API_TOKEN is needed: send it as "
                                 "`Authorization: Bearer TOKEN`, or log in on the page",
                            headers={"WWW-Authenticate": "Bearer"})


async def open_on_loopback(request: Request,
                           credentials: Annotated[Optional[HTTPAuthorizationCredentials],
                                                  Depends(bearer)] = None) -> None:
    if not _from_loopback(request):
        await access(request, credentials)


Access = [Depends(access)]
