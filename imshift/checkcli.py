"""`imshift check [APP...]`: one read-only call per app, within its rates,
to learn before a run whether the vendor is reached and takes the app's
credentials (imshift/appcheck.py makes the calls; dry runs make them too)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from .appcheck import check_apps
from .clibase import console, fail, load_context


def check(
    apps: Annotated[Optional[list[str]], typer.Argument(
        metavar="[APP]...", help="Apps to check (default: every configured app).")] = None,
) -> None:
    """Check each app with one read-only call, within its rates: the vendor is
    reached, takes the app's credentials, and answers the API version the app
    is set to. Exit 0 when every app passes, 1 otherwise."""
    ctx = load_context()
    names = apps or list(ctx.settings.apps)
    if not names:
        fail("no apps configured: name them in imshift.toml (or IMSHIFT_CONFIG), see the README")
    checked = check_apps(ctx, names)
    for c in checked:
        mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {escape(c.line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if all(c.ok for c in checked) else 1)
