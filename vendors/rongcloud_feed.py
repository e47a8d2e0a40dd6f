"""RongCloud's full message routing (全量消息路由) read as the bridge's feed,
and the publish and recall forms of a relayed message. A part of
RongCloudClient (vendors/rongcloud.py); facts and sources are in
docs/vendors.md, "Message feeds".

A routed message is a form-encoded POST whose URL query carries nonce,
signTimestamp (ms) and signature = sha1(AppSecret + nonce + signTimestamp).
Messages sent through the Server API are not routed unless the app asks for
it in the console, so the bridge's own sends do not come back by default;
where they do, the `extra` field of a built-in message carries feeds.MARK.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl

from .feeds import MARK, Delivery, FeedMessage, FeedRefused, check_age, same_secret

CHANNELS = {"PERSON": False, "GROUP": True}  # channelType -> a group's message
RECALL = "RC:RcCmd"  # the recall command a client sends; its content names the message
TEXT, IMAGE, FILE = "RC:TxtMsg", "RC:ImgMsg", "RC:FileMsg"
REQUIRED = ("fromUserId", "toUserId", "objectName", "content", "channelType", "msgTimestamp",
            "msgUID")


def routing_signature(secret: str, nonce: str, timestamp: str) -> str:
    return hashlib.sha1(f"{secret}{nonce}{timestamp}".encode("utf-8")).hexdigest()


def verify(app_key: str, app_secret: str, delivery: Delivery, now: float) -> None:
    query = delivery.query
    sent_key = query.get("appKey") or delivery.headers.get("app-key")
    if sent_key is not None and sent_key != app_key:
        raise FeedRefused(401, "appKey is not this app's key")
    values = {name: query.get(name, "") for name in ("nonce", "signTimestamp", "signature")}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise FeedRefused(401, f"missing query parameter: {', '.join(missing)}")
    if not values["signTimestamp"].isdigit():
        raise FeedRefused(401, "signTimestamp is not a number")
    expected = routing_signature(app_secret, values["nonce"], values["signTimestamp"])
    if not same_secret(values["signature"].lower(), expected):
        raise FeedRefused(401, "signature does not match")
    check_age(int(values["signTimestamp"]), now, unit=0.001)


def parse(body: bytes) -> list[FeedMessage]:
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        raise FeedRefused(400, "body is not a UTF-8 form") from None
    missing = [name for name in REQUIRED if not fields.get(name)]
    if missing:
        raise FeedRefused(400, f"missing field: {', '.join(missing)}")
    channel = fields["channelType"]
    if channel not in CHANNELS:
        return []  # chat rooms, ultra groups, system channels: not conversations we bridge
    if not fields["msgTimestamp"].isdigit():
        raise FeedRefused(400, "msgTimestamp is not a number")
    try:
        content = json.loads(fields["content"])
    except ValueError:
        raise FeedRefused(400, "content is not JSON") from None
    name = fields["objectName"]
    common = dict(msg_id=fields["msgUID"], sender=fields["fromUserId"], to=fields["toUserId"],
                  group=CHANNELS[channel], sent_at_ms=int(fields["msgTimestamp"]),
                  marked=isinstance(content, dict) and content.get("extra") == MARK)
    return [_message(name, content, common)]


def _message(name: str, content: Any, common: dict[str, Any]) -> FeedMessage:
    body = content if isinstance(content, dict) else {}
    if name == TEXT and isinstance(body.get("content"), str):
        return FeedMessage(kind="text", text=body["content"], **common)
    if name == IMAGE and body.get("imageUri"):
        return FeedMessage(kind="image", custom={"url": str(body["imageUri"])}, **common)
    if name == FILE and body.get("fileUrl"):
        media: dict[str, Any] = {"url": str(body["fileUrl"])}
        if body.get("name"):
            media["name"] = str(body["name"])
        if str(body.get("size", "")).isdigit():
            media["size"] = int(body["size"])
        return FeedMessage(kind="file", custom=media, **common)
    if name == RECALL:
        recalled = body.get("messageUId") or body.get("messageUID")
        if recalled:
            return FeedMessage(kind="recall", recalls=str(recalled), **common)
    if not name.startswith("RC:"):  # the app's own message type: its content as written
        custom = content if isinstance(content, dict) else {"value": content}
        return FeedMessage(kind="custom", custom=custom, **common)
    return FeedMessage(kind=name, **common)  # a built-in type the bridge cannot carry


def relay_content(message: FeedMessage, custom_object_name: str) -> tuple[str, dict[str, Any]] | None:
    """objectName and content for `message`, or None for a kind RongCloud
    cannot carry. Built-in types carry MARK in their `extra` field; the
    custom JSON is the user's and is sent as written."""
    media = message.custom or {}
    if message.kind == "text" and message.text is not None:
        return TEXT, {"content": message.text, "extra": MARK}
    if message.kind == "custom" and message.custom is not None:
        return custom_object_name, dict(message.custom)
    if message.kind == "image" and media.get("url"):
        # `content` is the thumbnail (base64) clients show first; a relay has none.
        return IMAGE, {"content": "", "imageUri": str(media["url"]), "extra": MARK}
    if message.kind == "file" and media.get("url"):
        url = str(media["url"])
        name = str(media.get("name") or url.rsplit("/", 1)[-1])
        content = {"name": name, "fileUrl": url, "type": name.rsplit(".", 1)[-1] if "." in name else "",
                   "extra": MARK}
        if media.get("size") is not None:
            content["size"] = media["size"]
        return FILE, content
    return None

