"""Who may use the HTTP face (imshift/api.py): with IMSHIFT_API_TOKEN set,
every API and page request carries it, as a bearer token or as the
HttpOnly cookie the page's login sets; `/openapi.json` and `/metrics` are
open to loopback clients only. Without a token, serve listens on loopback
only (imshift/api_serve.py)."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated, Optional

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
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                               token.encode("utf-8", "surrogateescape"))


def _given(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else request.cookies.get(COOKIE)


async def access(request: Request,
                 credentials: Annotated[Optional[HTTPAuthorizationCredentials],
                                        Depends(bearer)] = None) -> None:
    # async: a check that does no I/O needs no hop to a worker thread
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
