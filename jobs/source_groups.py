"""Groups read from a source vendor that can list them (OpenIM v3), when a
run is given no groups file: each listed group becomes the row a
groups.jsonl line would be, so the planner checks and plans it exactly as
one from the file (jobs/run_stages.py `groups`).

The listing is not resumable page by page: the groups stage plans its
members stage from what it read, so a planning cut off while groups are
listed is carried on (`imshift resume R<n>`) by listing them again from the
start. That is safe: nothing of a stage is sent before the run is planned
whole, and the cut-off stages are discarded before they are planned again
(jobs/runs.py resume_planning).
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Iterator

from imshift.vendors.vocabulary import Group

from .inputs import Row, _checked
from .listing import listed_rows

GroupPages = Callable[[str | None], AsyncIterator[tuple[list[Group], str | None]]]


def listed_group_rows(pages: GroupPages) -> Iterator[Row]:
    """The source's groups as groups.jsonl rows, in the listing's order
    (line = the place in it). A group read twice (the vendor's pages moved
    under a group created meanwhile) is taken once, the first time."""
    seen: set[str] = set()
    line = 0
    for row in listed_rows(pages, fields=_fields):
        if row.fields["key"] in seen:
            continue
        seen.add(row.fields["key"])
        line += 1
        yield _checked(Row(line, row.fields))  # a NUL byte is the row's problem, as in a file


def _fields(group: Group) -> dict[str, Any]:
    fields = {"key": group.group_id, "name": group.name, "owner": group.owner,
              "members": json.dumps(list(group.members), ensure_ascii=False)}
    fields.update({k: v for k, v in (("avatar", group.avatar), ("intro", group.intro)) if v})
    return fields


def cannot_list(source: str) -> str:
    """The plan's line when there is no groups file and the source cannot list its groups."""
    return f"groups: none given, and {source} cannot list them: pass --groups groups.jsonl"
