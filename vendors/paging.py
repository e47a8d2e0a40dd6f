"""Resumable listings. A cursor is the number of items already read, as text.

Vendors list their users by page number (OpenIM v3, Maxim) or all in one
reply (OpenIM v2). A cursor that counts items, not pages, resumes at the
same place whatever page size the resumed run asks for, so nobody is
skipped or read twice.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

T = TypeVar("T")

# (page number from 1, page size) -> (that page's items, whether it is the last)
PageFetch = Callable[[int, int], Awaitable[tuple[Sequence[T], bool]]]


def offset_of(cursor: str | None) -> int:
    """The items a cursor says were read; ValueError for one no listing gave."""
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()):
        raise ValueError(f"cursor: {cursor[:40]!r} is not a cursor a listing gave")
    return int(cursor)


async def offset_pages(fetch: PageFetch[T], cursor: str | None,
                       size: int) -> AsyncIterator[tuple[list[T], str | None]]:
    """Each page's items from `cursor` on, with the cursor after it (None
    after the last). A cursor inside a page skips that page's first items."""
    offset = offset_of(cursor)
    while True:
        number, skip = divmod(offset, size)
        items, last = await fetch(number + 1, size)
        offset = number * size + len(items)
        yield list(items[skip:]), None if last else str(offset)
        if last:
            return


def sliced(items: Sequence[T]) -> PageFetch[T]:
    """A PageFetch over a list already read whole (OpenIM v2 lists every id at once)."""
    async def fetch(number: int, size: int) -> tuple[Sequence[T], bool]:
        return items[(number - 1) * size:number * size], number * size >= len(items)
    return fetch


class NoSuchList(Exception):
    """What a PageFetch raises when the thing listed (a group) does not exist."""


async def read_all(fetch: PageFetch[T], size: int) -> list[T]:
    """Every item of a paged listing, from the start."""
    items: list[T] = []
    async for page, _ in offset_pages(fetch, None, size):
        items += page
    return items
