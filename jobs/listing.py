"""Accounts read from a source vendor that can list its users (OpenIM,
Maxim), page by page through its own API, as input rows: the planner takes
them like the rows of an export file, and memory holds one page at a time.

The last row of each page carries a `Page` mark: the planner stores the
page's rows and the cursor after it in one transaction, so a planning cut
off mid-listing carries on from the page after the last one stored, with
no account listed twice and none lost.
"""

from __future__ import annotations

import asyncio
from contextlib import closing
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable, Generator, Iterator

from imshift.vendors.vocabulary import Profile

from .inputs import Row

Pages = Callable[[str | None], AsyncGenerator[tuple[list[Profile], str | None], None]]


@dataclass(frozen=True)
class Page:
    """Where a listing stands after a page: the cursor that resumes after it
    (None once the last page is read)."""

    cursor: str | None

    @property
    def last(self) -> bool:
        return self.cursor is None


def listed_rows(pages: Pages, cursor: str | None = None, first_line: int = 1) -> Iterator[Row]:
    """Each listed user as a row (line = its place in the listing, from
    `first_line`), the last of each page marked with its `Page`. A page is
    asked for only once the rows before it are taken."""
    n = first_line - 1
    with closing(each_page(pages, cursor)) as paged:  # closed with this generator, not later
        for profiles, after in paged:
            for i, profile in enumerate(profiles, 1):
                n += 1
                yield Row(n, _fields(profile), mark=Page(after) if i == len(profiles) else None)


def each_page(pages: Callable[[str | None], AsyncGenerator[tuple[list[Any], str | None], None]],
              cursor: str | None) -> Generator[tuple[list[Any], str | None], None, None]:
    """A listing's async pages (each with the cursor after it), driven from
    this synchronous generator on an event loop of its own."""
    loop = asyncio.new_event_loop()
    listing = pages(cursor)
    try:
        while True:
            try:
                yield loop.run_until_complete(listing.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(listing.aclose())
        loop.close()


def _fields(profile: Profile) -> dict[str, Any]:
    fields = {"key": profile.user_id, "name": profile.name, "avatar": profile.avatar}
    fields.update({k: v for k, v in profile.extra.items() if k not in fields})
    return fields
