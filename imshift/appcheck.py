"""One read-only call per app, within its rates, to learn whether the
vendor is reached and takes the app's credentials: `imshift check`
(imshift/checkcli.py) and every dry run (refuse_unless_reached)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.markup import escape

from imshift.vendors.vocabulary import Outcome, Result

from .clibase import EXIT_STOPPED, EXIT_USAGE, fail
from .context import Context


@dataclass(frozen=True)
class Checked:
    app: str
    ok: bool
    line: str  # "app (Vendor): ..." with no secret in it
    settings: bool = False  # the cause is in the settings (credentials, URL), not a service


def _describe(result: Result) -> tuple[bool, str, bool]:
    said = f"{result.code}: {result.message}" if result.message else str(result.code)
    if result.outcome is Outcome.OK:
        return True, "reachable, credentials accepted", False
    if result.outcome is Outcome.AUTH:
        if str(result.code).startswith("http 40"):  # an endpoint that is not there
            return False, f"reachable, but {result.message}", True
        return False, f"reachable, credentials refused ({said})", True
    if result.code == "network":
        return False, f"not reachable ({result.message})", False
    if result.code in ("timeout", "reset"):
        return False, f"no reply ({result.message})", False
    if result.outcome is Outcome.RATE_LIMITED:
        return False, f"reachable, but over its rate limit ({said}); check again later", False
    return False, f"reachable, but the check call was answered {said}", False


async def _check_one(ctx: Context, app: str, limiter) -> Checked:
    try:
        api = ctx.app(app).api
        client = ctx.client(app, ctx.throttle(app, limiter))
    except ValueError as exc:  # an unknown app or settings that do not fit its vendor
        return Checked(app, False, f"{app}: {exc}", settings=True)
    try:
        result = await client.check()
    finally:
        await client.http.aclose()
    ok, said, settings = _describe(result)
    if ok:
        said += f", {api} API answered"
    return Checked(app, ok, f"{app} ({api}): {said}", settings)


def check_apps(ctx: Context, apps: list[str]) -> list[Checked]:
    """Each app checked once, in order; secrets the vendor echoed are masked."""
    async def all_of() -> list[Checked]:
        limiter = ctx.limiter()
        try:
            return [await _check_one(ctx, app, limiter) for app in apps]
        finally:
            if limiter.redis is not None:
                await limiter.redis.aclose()

    checked = asyncio.run(all_of())
    secrets = [s for s in ctx.secrets() if s]
    for i, c in enumerate(checked):
        line = c.line
        for secret in secrets:
            line = line.replace(secret, "***")
        checked[i] = Checked(c.app, c.ok, line, c.settings)
    return checked


def refuse_unless_reached(ctx: Context, apps: list[str]) -> None:
    """A dry run's check: the first app that fails ends the command in one line."""
    for c in check_apps(ctx, list(dict.fromkeys(apps))):
        if not c.ok:
            fail(f"{escape(c.line)}. Nothing was created; `imshift check {c.app}` checks it again.",
                 EXIT_USAGE if c.settings else EXIT_STOPPED)
