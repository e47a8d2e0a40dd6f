"""Accounts read from a source vendor that can list its users (OpenIM,
Maxim), page by page through its own API, as input rows: the planner takes
them like the rows of an export file, and memory holds one page at a time."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterator

from imshift.vendors.vocabulary import Profile

from .inputs import Row

Pages = Callable[[str | None], AsyncIterator[tuple[list[Profile], str | None]]]


def listed_rows(pages: Pages, cursor: str | None = None,
                on_page: Callable[[str | None], None] | None = None) -> Iterator[Row]:
    """Each listed user as a row (line = its place in the listing). The
    listing's async pages are driven from this synchronous generator on an
    event loop of its own; `on_page` is told each page's resume cursor."""
    loop = asyncio.new_event_loop()
    listing = pages(cursor)
    n = 0
    try:
        while True:
            try:
                profiles, after = loop.run_until_complete(listing.__anext__())
            except StopAsyncIteration:
                return
            for profile in profiles:
                n += 1
                yield Row(n, _fields(profile))
            if on_page:
                on_page(after)
    finally:
        loop.run_until_complete(listing.aclose())
        loop.close()


def _fields(profile: Profile) -> dict[str, Any]:
    fields = {"key": profile.user_id, "name": profile.name, "avatar": profile.avatar}
    fields.update({k: v for k, v in profile.extra.items() if k not in fields})
    return fields
