"""What RongCloud accepts: its id rule and how many items one call or one
group may carry (RongCloud's Server API guide and its server SDKs; see
docs/vendors.md). Shared by vendors/rongcloud.py, vendors/rongcloud_groups.py
and the sandbox.
"""

from __future__ import annotations

from .vocabulary import Cap, FieldRule

MAX_CONTENT_BYTES = 128 * 1024  # one message
MAX_PUBLISH_RECIPIENTS = 1000  # toUserId per private publish call
MAX_GROUP_TARGETS = 3  # toGroupId per group publish call
MAX_GROUP_CALL_MEMBERS = 1000  # userId per group create / join call
# A group holds at most 3000 members by default (RongCloud's group guide:
# "默认一个群上限为 3000 人"); the client refuses a bigger one before any call.
MAX_GROUP_MEMBERS = 3000
# /message/broadcast.json: 2 calls an hour and 3 a day (docs/vendors.md);
# the sandbox answers the next one with 1008, as the vendor does.
BROADCAST_CAPS = (Cap(2, "hour"), Cap(3, "day"))
FRIEND_PAGE = 50  # /friend/get.json `size` we ask for (the vendor's default page, unconfirmed)

ID_PATTERN = r"[A-Za-z0-9_=+\-]+"
ID_HINT = "letters, digits and + = - _"
ID_RULE = FieldRule(max_len=64, unit="bytes", pattern=ID_PATTERN, pattern_hint=ID_HINT,
                    required=True)


def id_problem(name: str, value: str) -> str | None:
    return ID_RULE.check(name, value)


def problems(*found: str | None) -> str | None:
    """Every reason given, as one message (None when there is none)."""
    return "; ".join(p for p in found if p) or None
