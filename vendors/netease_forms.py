"""NetEase's wire forms, as a part of NeteaseClient (vendors/netease.py): the
form fields every call sends, the JSON lists inside them, member slices that
fit team/create and team/add, and reading profiles and lists back from replies.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from .vocabulary import FieldRule, Message, Profile

MEMBERS_MAX_BYTES = 1024  # team/create and team/add: the `members` JSON text
MEMBERS_MAX_COUNT = 200  # team/add: at most 200 people per call

ACCID_RULE = FieldRule(max_len=32, pattern=r"[A-Za-z0-9_@.\-]+",
                       pattern_hint="letters, digits, _ @ . - only", required=True)
PROFILE_EXTRAS = {"sign": 256, "email": 64, "birth": 16, "mobile": 32, "ex": 1024}


def as_form(values: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as the vendor wants them: every value a string, booleans
    "true"/"false", nothing for None."""
    form = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise TypeError(f"form field {key} must be a string, not {type(value).__name__}")
        form[key] = value
    return form


def json_list(items: Sequence[str]) -> str:
    """A JSON array as the vendor takes it inside a form field, compact."""
    return json.dumps(list(items), ensure_ascii=False, separators=(",", ":"))


def member_slices(members: Sequence[str], max_bytes: int = MEMBERS_MAX_BYTES,
                  max_count: int = MEMBERS_MAX_COUNT) -> list[list[str]]:
    """Split members, in order, into lists whose JSON text fits `max_bytes`."""
    slices: list[list[str]] = []
    current: list[str] = []
    size = 2  # the brackets
    for member in members:
        grows = len(json.dumps(member).encode()) + (1 if current else 0)
        if current and (size + grows > max_bytes or len(current) >= max_count):
            slices.append(current)
            current, size, grows = [], 2, grows - 1
        current.append(member)
        size += grows
    if current:
        slices.append(current)
    return slices


def create_members(owner: str, members: Sequence[str]) -> list[str]:
    """The members a team/create takes besides its owner: lower-cased (as
    the vendor keeps accids), each once, in order."""
    owner = owner.lower()
    return list(dict.fromkeys(m.lower() for m in members if m.lower() != owner))


def profile_form(profile: Profile) -> dict[str, str]:
    """The profile fields that are set, by the vendor's names (avatar is `icon`)."""
    fields = {"name": profile.name, "icon": profile.avatar, **profile.extra}
    return {key: value for key, value in fields.items() if value}


def profile_from(info: Mapping[str, Any]) -> Profile:
    extra = {key: str(info[key]) for key in PROFILE_EXTRAS if info.get(key)}
    if info.get("gender"):  # 0 is "unknown", the same as unset
        extra["gender"] = str(info["gender"])
    return Profile(str(info.get("accid", "")), str(info.get("name") or ""),
                   str(info.get("icon") or ""), extra)


def message_form(message: Message) -> tuple[int, str]:
    """The `type` and `body` fields: 0 with {"msg": text}, or 100 with the custom JSON."""
    if message.text is not None:
        return 0, json.dumps({"msg": message.text}, ensure_ascii=False)
    return 100, json.dumps(message.custom, ensure_ascii=False)


def message_problem(message: Message, max_len: int) -> str | None:
    body = message_form(message)[1]
    if len(body) > max_len:
        return f"body: {len(body)} chars, at most {max_len} allowed"
    return None


def string_list(value: Any) -> list[str]:
    """A list the vendor sends either as JSON or as a JSON string (`unregister`)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [str(v) for v in value] if isinstance(value, list) else []


def failed_accids(body: Mapping[str, Any]) -> list[str]:
    """team/create and team/add report members they could not take in `faccid`."""
    faccid = body.get("faccid") or {}
    return string_list(faccid.get("accid")) if isinstance(faccid, dict) else []
