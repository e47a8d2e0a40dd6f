"""Maxim's message subscription (信息订阅) for the bridge: a delivery read
into FeedMessages, and the /message/send body of a relayed message.

Facts (docs/vendors.md, "Message feeds" says where): the subscription POSTs one
JSON message a delivery with `from.uid`, `to.uid`, `type` (CHAT,
GROUPCHAT), `ctype` (TEXT, IMAGE, AUDIO, VIDEO, FILE, LOCATION, COMMAND,
FORWARD, ...), `content`, `ext`, `msgId`, `appId`, and a `signature`
header equal to a value configured with the subscription (a fixed value,
not a signature of the body: it cannot bound replays). Ids are int64.
Unconfirmed, and read leniently: `timestamp` (ms, as the message API
names it), `attachment` (the send API's JSON string {url, dName, fLen,
width?, height?}) and how a recall is reported (a RECALL message with the
recalled id in `related_mid`, as the send API takes it).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Mapping
from urllib.parse import urlsplit

from .feeds import MAX_FEED_BYTES, Delivery, FeedMessage, FeedRefused, carries_mark, check_age, same_secret

TYPES = {"CHAT": False, "GROUPCHAT": True}  # type -> group?
# /message/send content_type of each kind we relay (TEXT 0, IMAGE 1, FILE 4, COMMAND 6).
CONTENT_TYPES = {"text": 0, "image": 1, "file": 4, "custom": 6}


def as_id(value: Any) -> str | None:
    """An int64 id (a JSON number or a numeric string) as its decimal string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return str(value) if isinstance(value, int) and 0 < value < 2 ** 63 else None






def read(config: Any, delivery: Delivery, now: float) -> list[FeedMessage]:
    expected = getattr(config, "feed_signature", "")
    given = delivery.headers.get("signature", "")
    if not same_secret(given, expected):
        raise FeedRefused(401, "the signature header does not match the subscription's")
    if len(delivery.body) > MAX_FEED_BYTES:
        raise FeedRefused(413, f"delivery larger than {MAX_FEED_BYTES} bytes")
    try:
        body = json.loads(delivery.body)
    except ValueError:
        raise FeedRefused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise FeedRefused(400, "the body is not a JSON object")
    if str(body.get("appId")) != config.app_id:
        raise FeedRefused(401, "appId is not this app's")
    if body.get("type") not in TYPES:
        return []  # not a one-to-one or group chat message
    group = TYPES[body["type"]]
    msg_id = _id(body.get("msgId"), "msgId")
    sender = _id((body.get("from") or {}).get("uid") if isinstance(body.get("from"), dict) else None, "from.uid")
    to = _id((body.get("to") or {}).get("uid") if isinstance(body.get("to"), dict) else None, "to.uid")
    stamp = body.get("timestamp")
    if stamp is None:
        sent_at = int(now * 1000)  # not in every delivery we know of: the time it arrived
    elif isinstance(stamp, int) and not isinstance(stamp, bool):
        check_age(stamp, now, unit=0.001)
        sent_at = stamp
    else:
        raise FeedRefused(400, "timestamp: not a number")
    ctype = body.get("ctype")
    if not isinstance(ctype, str) or not ctype:
        raise FeedRefused(400, "ctype: missing")
    raw = body.get("content")
    content = raw if isinstance(raw, str) else ""
    fields: dict[str, Any] = {"kind": ctype}  # a type we cannot carry keeps its own name
    if ctype == "TEXT":
        fields = {"kind": "text", "text": content}
    elif ctype == "COMMAND":
        try:
            custom = json.loads(content)
        except ValueError:
            custom = None
        fields = {"kind": "custom", "custom": custom if isinstance(custom, dict) else {"content": content}}
    elif ctype in ("IMAGE", "FILE"):
        fields = {"kind": ctype.lower(), "custom": _media(body.get("attachment"))}
    elif ctype == "RECALL":
        recalled = as_id(body.get("related_mid", body.get("relatedMid")))
        if recalled:
            fields = {"kind": "recall", "recalls": recalled}
    return [FeedMessage(msg_id=msg_id, sender=sender, to=to, group=group, sent_at_ms=sent_at,
                        marked=carries_mark(body.get("ext")), **fields)]


def _id(value: Any, name: str) -> str:
    found = as_id(value)
    if found is None:
        raise FeedRefused(400, f"{name}: missing or not an int64 id")
    return found


def _media(raw: Any) -> dict[str, Any]:
    try:
        attachment = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        attachment = None
    if not isinstance(attachment, dict) or not attachment.get("url"):
        raise FeedRefused(400, "attachment.url: missing")
    media = {"url": attachment["url"], "name": attachment.get("dName"), "size": attachment.get("fLen"),
             "width": attachment.get("width"), "height": attachment.get("height")}
    return {k: v for k, v in media.items() if v not in (None, "", 0)}


def relay_fields(kind: str, text: str | None, custom: Mapping[str, Any] | None) -> dict[str, Any] | str:
    """content_type, content and attachment of a relayed message, or why Maxim cannot carry it."""
    if kind not in CONTENT_TYPES:
        return f"{kind}: Maxim cannot carry it"
    if kind == "text":
        return {"content_type": 0, "content": text} if text else "text: empty"
    if kind == "custom":
        return {"content_type": 6, "content": json.dumps(dict(custom or {}), ensure_ascii=False)}
    media = dict(custom or {})
    url = media.get("url")
    if not isinstance(url, str) or not url:
        return f"{kind}: no url"
    name = media.get("name") or posixpath.basename(urlsplit(url).path)
    attachment = {"url": url, "dName": name or None, "fLen": media.get("size"),
                  "width": media.get("width"), "height": media.get("height")}
    # `content` is required by the API even for media: the file's name (or the kind) stands in.
    return {"content_type": CONTENT_TYPES[kind], "content": name or kind,
            "attachment": json.dumps({k: v for k, v in attachment.items() if v is not None},
                                     ensure_ascii=False)}
