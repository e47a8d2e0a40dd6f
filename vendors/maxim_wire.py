"""Maxim's wire forms: its int64 ids, the headers that make an admin call act
as a user or a group, and the items of a batch reply. Shared by the users
and messages code (maxim.py) and the groups and friends code (maxim_groups.py).
"""

from __future__ import annotations

import re
from typing import Any

_VENDOR_ID = re.compile(r"[0-9]{1,19}")


def acting_as(*, user_id: int | None = None, group_id: int | None = None) -> dict[str, str]:
    """One call's extra headers: `user_id` acts as that user, `group_id` as
    that group's admin (both only with an admin token)."""
    return {name: str(value) for name, value in (("user_id", user_id), ("group_id", group_id))
            if value is not None}


def vendor_id(value: str) -> int | None:
    """Maxim's numeric id, or None when `value` cannot be one."""
    if _VENDOR_ID.fullmatch(value) and 0 < int(value) < 2 ** 63:
        return int(value)
    return None


def checked_id(value: str) -> int:
    """Maxim's numeric id of a value `not_an_id` has passed."""
    uid = vendor_id(value)
    if uid is None:
        raise ValueError(f"{value[:80]!r} is not a Maxim id")
    return uid


def not_an_id(field_name: str, value: str) -> str | None:
    """The reason `value` cannot be a Maxim id for `field_name`, or None."""
    return None if vendor_id(value) else f"{field_name}: {value[:80]!r} is not a Maxim id (digits)"


def items_by(body: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    """A batch reply's items (`data`, a list of objects) by their `key` field."""
    data = body.get("data")
    return {item.get(key): item for item in (data if isinstance(data, list) else [])
            if isinstance(item, dict)}


def is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2 ** 63
