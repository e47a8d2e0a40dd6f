"""What the bridge reads from a vendor's message feed and sends on the other side.

A vendor's feed (NetEase message copy, RongCloud message routing, OpenIM's
after-save webhooks, Maxim's message subscription) POSTs each message an
app's users send to a URL of the app's server. A vendor client reads one such
delivery with `read_feed` (classmethod: verify it as the vendor signs it, then
parse it into `FeedMessage`s), relays a message with `relay` and takes one
back with `recall` (vendors/client.py). Nothing here knows a vendor's name.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

# Put on every send the bridge makes, where the vendor has a place for it
# (NetEase's route flag off, OpenIM's `ex`, Maxim's `ext`): a feed event
# that carries it is the bridge's own message coming back, never relayed.
MARK = "imshift-bridge"
MAX_FEED_BYTES = 1024 * 1024  # a delivery larger than this is refused (413) unread
REPLAY_WINDOW = 300.0  # seconds: a signed delivery older (or newer) than this is refused

# What a relayed message can be. Anything else is carried as its vendor's
# type name in `kind`, and ends failed with that reason at the relay.
KINDS = ("text", "custom", "image", "file", "recall")


@dataclass(frozen=True)
class Delivery:
    """One POST of a vendor's feed as the server received it."""

    headers: Mapping[str, str]  # names lower-cased
    query: Mapping[str, str]
    body: bytes
    path_secret: str = ""  # the secret part of the hook's URL (OpenIM signs nothing)


@dataclass(frozen=True)
class FeedMessage:
    """A message one user sent, as the source's feed reported it.

    `msg_id` is the vendor's server-side message id: the bridge keeps one
    copy per (source app, msg_id), so a repeated delivery is dropped.
    Images and files travel by URL in `custom` ({"url", "name"?, "size"?}).
    """

    msg_id: str
    sender: str
    to: str  # a user id (one-to-one) or a group id
    group: bool
    sent_at_ms: int  # the source's timestamp: the order within a conversation
    kind: str  # one of KINDS, or the vendor's own type name the bridge cannot carry
    text: str | None = None
    custom: Mapping[str, Any] | None = field(default=None)
    recalls: str | None = None  # kind "recall": the msg_id it takes back
    marked: bool = False  # carries MARK: the bridge sent it

    @property
    def conversation(self) -> str:
        """One key per conversation: a group, or a pair of users either way round."""
        if self.group:
            return f"g:{self.to}"
        a, b = sorted((self.sender, self.to))
        return f"p:{a}\x1f{b}"

    def mapped(self, sender: str, to: str) -> "FeedMessage":
        """The same message with the ids the target knows."""
        return replace(self, sender=sender, to=to)


class FeedRefused(Exception):
    """A delivery that is not taken: `status` is the HTTP status to answer
    (400 malformed, 401 bad signature or stale, 404 no such hook, 413 too
    large); `reason` says why, in one line, without any secret."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def mark_json() -> str:
    """MARK as a JSON object, for a send's free-form field (OpenIM `ex`, Maxim `ext`)."""
    return json.dumps({MARK: True}, separators=(",", ":"))


def carries_mark(field: Any) -> bool:
    """Whether a feed event's free-form field holds MARK (the JSON object
    mark_json makes, or the mark itself)."""
    if not isinstance(field, str) or not field:
        return False
    try:
        value = json.loads(field)
    except ValueError:
        return field == MARK
    return isinstance(value, dict) and MARK in value


def same_secret(given: str, expected: str) -> bool:
    """Whether what a delivery carries (a configured secret or signature, or
    one computed over it) is `expected`: compared in constant time, as bytes,
    so any characters compare; never when nothing is expected."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def check_age(sent_ms_or_s: float, now: float, *, unit: float = 1.0) -> None:
    """Refuse a signed delivery whose timestamp is outside the replay window
    (`unit`: 1 for seconds, 0.001 for milliseconds)."""
    if abs(now - sent_ms_or_s * unit) > REPLAY_WINDOW:
        raise FeedRefused(401, f"timestamp outside the {REPLAY_WINDOW:.0f} s replay window")
