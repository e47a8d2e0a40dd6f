"""How the Maxim sandbox reads request values, the way the vendor's Java
server binds them: int64 ids (numbers or numeric strings), strings, lists of
ids, numbers in the query. A value it cannot read is refused with 10002.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from .common import Form, Refusal

Refused = Refusal  # a business error: answered as HTTP 200 with this code


def as_id(value: Any) -> int | None:
    """An int64 id as Jackson would read it (a number or a numeric string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2 ** 63 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return as_id(int(value))
    return None


@overload
def text(body: dict[str, Any], name: str, *, required: Literal[True]) -> str: ...
@overload
def text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None: ...
def text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise Refused(10002, f"{name}: required")
        return None
    if not isinstance(value, str):
        raise Refused(10002, f"{name}: must be a string")
    return value


def id_list(body: dict[str, Any], name: str) -> list[int]:
    values = body.get(name)
    if not isinstance(values, list) or not values:
        raise Refused(10002, f"{name}: a non-empty list of ids is required")
    ids = [as_id(v) for v in values]
    if None in ids:
        raise Refused(10002, f"{name}: {values[ids.index(None)]!r} is not an id")
    return ids  # type: ignore[return-value]  # no None left: refused just above


def int_param(query: Form, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise Refused(10002, f"{name}: {raw[:20]!r} is not a number") from None


def window(query: Form, default_limit: int) -> tuple[int, int]:
    """`cursor` (an offset, ≥ 0) and `limit` (≥ 1) of a paged read."""
    start, limit = int_param(query, "cursor", 0), int_param(query, "limit", default_limit)
    if start < 0:
        raise Refused(10002, "cursor: must not be negative")
    if limit < 1:
        raise Refused(10002, "limit: must be at least 1")
    return start, limit
