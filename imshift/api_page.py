"""The live page at `/` (imshift/page/: its HTML, script and style ship in
the package, nothing from a CDN), its login, which takes the token once
into an HttpOnly cookie, and its assets."""

from __future__ import annotations

from importlib import resources
from typing import Optional
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api_access import COOKIE, NO_FRAMES, refuse_other_pages, token_ok


def _asset(name: str) -> str:
    return resources.files("imshift.page").joinpath(name).read_text(encoding="utf-8")


ASSETS = {"app.js": "text/javascript; charset=utf-8", "schedules.js": "text/javascript; charset=utf-8",
          "bridges.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def page_routes(app: FastAPI) -> None:
    def login_page(error: str = "", status: int = 200) -> HTMLResponse:
        html = _asset("login.html").replace("{{error}}", error)
        return HTMLResponse(html, status_code=status, headers=NO_FRAMES)

    def with_cookie(request: Request, token: str) -> Response:
        response = RedirectResponse("/", status_code=303)  # drops ?token= from the address bar
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/", include_in_schema=False)
    def page(request: Request, token: Optional[str] = None) -> Response:
        if token is not None and app.state.token is not None:
            if token_ok(request, token):
                return with_cookie(request, token)
            return login_page("That token is not the server's IMSHIFT_API_TOKEN.", 401)
        if not token_ok(request, request.cookies.get(COOKIE)):
            return login_page()
        return HTMLResponse(_asset("index.html"), headers=NO_FRAMES)  # no page may frame it

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        refuse_other_pages(request)  # another page must not log this browser in (or out)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if app.state.token is not None and token_ok(request, token):
            return with_cookie(request, token)
        return login_page("That token is not the server's IMSHIFT_API_TOKEN.", 401)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        refuse_other_pages(request)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/page/{name}", include_in_schema=False)
    def asset(name: str) -> Response:  # scripts and styles: no secrets, no token needed
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return Response(_asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache"})
