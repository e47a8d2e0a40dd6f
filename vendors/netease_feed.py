"""NetEase's message copy (消息抄送) read as the bridge's feed, and the forms
a relayed message and a recall are sent with. A part of NeteaseClient
(vendors/netease.py); facts and their sources are in
docs/vendors.md, "Message feeds".

A copy is a JSON POST signed with headers CurTime, MD5 (hex MD5 of the raw
body) and CheckSum = sha1(AppSecret + MD5 + CurTime). eventType "1" is a
conversation message, "7" / "8" / "25" a one-to-one / team / super-team
recall; every other event type carries no message.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from .feeds import MARK, Delivery, FeedMessage, FeedRefused, check_age, same_secret

MESSAGE_EVENT = "1"
RECALL_EVENTS = {"7": False, "8": True, "25": True}  # eventType -> a team's message
CONV_GROUP = {"PERSON": False, "TEAM": True, "SUPER_TEAM": True}
# msgType -> our kind; the rest keep their own name and fail at the relay.
KINDS = {"TEXT": "text", "CUSTOM": "custom", "PICTURE": "image", "FILE": "file"}
# msg/sendMsg.action `type` of each kind we can send.
SEND_TYPES = {"text": 0, "image": 1, "file": 6, "custom": 100}
# The copy's CurTime is documented in ms; the brief (and older tools) say
# seconds: a value this large can only be ms.
MS_THRESHOLD = 10 ** 11
# option for a relayed send: `route` false asks the vendor not to copy it
# back to the app's copy URL (the message copy option of msg/sendMsg.action).
RELAY_OPTION = json.dumps({"route": False}, separators=(",", ":"))


def body_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def copy_checksum(secret: str, md5: str, curtime: str) -> str:
    """CheckSum of a copy: lower-case hex SHA1 of AppSecret + MD5 + CurTime."""
    return hashlib.sha1((secret + md5 + curtime).encode("utf-8")).hexdigest()


def verify(app_key: str, app_secret: str, delivery: Delivery, now: float) -> None:
    """Refuse (401) a copy the vendor did not sign for this app, or a stale one."""
    headers = delivery.headers
    sent_key = headers.get("appkey")
    if sent_key is not None and sent_key != app_key:
        raise FeedRefused(401, "AppKey header is not this app's key")
    values = {name: headers.get(name.lower(), "") for name in ("CurTime", "MD5", "CheckSum")}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise FeedRefused(401, f"missing header: {', '.join(missing)}")
    curtime = values["CurTime"]
    if not curtime.isdigit():
        raise FeedRefused(401, "CurTime is not a number")
    if not same_secret(values["MD5"].lower(), body_md5(delivery.body)):
        raise FeedRefused(401, "MD5 header does not match the body")
    # Signed over the MD5 header as sent.
    expected = copy_checksum(app_secret, values["MD5"], curtime)
    if not same_secret(values["CheckSum"].lower(), expected):
        raise FeedRefused(401, "CheckSum does not match")
    stamp = int(curtime)
    check_age(stamp, now, unit=0.001 if stamp >= MS_THRESHOLD else 1.0)


def parse(body: bytes) -> list[FeedMessage]:
    try:
        event = json.loads(body)
    except ValueError:
        raise FeedRefused(400, "body is not JSON") from None
    if not isinstance(event, dict):
        raise FeedRefused(400, "body is not a JSON object")
    kind = str(event.get("eventType", ""))
    if kind == MESSAGE_EVENT:
        return _message(event)
    if kind in RECALL_EVENTS:
        return [_recall(event, RECALL_EVENTS[kind])]
    return []  # logins, chat rooms, calls...: acknowledged, not messages


def _required(event: Mapping[str, Any], *names: str) -> list[str]:
    missing = [n for n in names if event.get(n) in (None, "")]
    if missing:
        raise FeedRefused(400, f"missing field: {', '.join(missing)}")
    return [str(event[n]) for n in names]


def _timestamp(value: str, name: str) -> int:
    if not value.isdigit():
        raise FeedRefused(400, f"{name} is not a number")
    return int(value)


def _message(event: Mapping[str, Any]) -> list[FeedMessage]:
    conv = str(event.get("convType", ""))
    if conv not in CONV_GROUP:
        return []  # CUSTOM_PERSON / CUSTOM_TEAM: system notifications, not messages
    msg_type = str(event.get("msgType", ""))
    if msg_type == "NOTIFICATION":
        return []  # the server's team-operation notices (joins, renames), not a user's message
    sender, to, msg_id, stamp, msg_type = _required(
        event, "fromAccount", "to", "msgidServer", "msgTimestamp", "msgType")
    common: dict[str, Any] = dict(msg_id=msg_id, sender=sender, to=to, group=CONV_GROUP[conv],
                  sent_at_ms=_timestamp(stamp, "msgTimestamp"), marked=_marked(event))
    kind = KINDS.get(msg_type, msg_type)
    if kind == "text":
        return [FeedMessage(kind="text", text=str(event.get("body") or ""), **common)]
    attach = _json(event.get("attach"))
    if kind == "custom":
        custom = attach if isinstance(attach, dict) else {"value": attach}
        return [FeedMessage(kind="custom", custom=custom, **common)]
    if kind in ("image", "file"):
        media = _media(attach)
        if media is None:  # no URL: nothing the bridge can send on
            return [FeedMessage(kind=msg_type, **common)]
        return [FeedMessage(kind=kind, custom=media, **common)]
    return [FeedMessage(kind=msg_type, **common)]


def _recall(event: Mapping[str, Any], group: bool) -> FeedMessage:
    sender, to, recalled = _required(event, "from", "to", "msgId")
    stamp = str(event.get("deleteTime") or event.get("sendTime") or "")
    # A recall copy has no server id of its own; it is unique per recalled message.
    return FeedMessage(msg_id=f"recall:{recalled}", sender=sender, to=to, group=group,
                       sent_at_ms=_timestamp(stamp, "deleteTime") if stamp else 0,
                       kind="recall", recalls=recalled, marked=_marked(event))


def _json(value: Any) -> Any:
    """`attach` is documented as a string, but the vendor's own examples
    also show it as an object: read both."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _media(attach: Any) -> dict[str, Any] | None:
    if not isinstance(attach, dict) or not attach.get("url"):
        return None
    media: dict[str, Any] = {"url": str(attach["url"])}
    if attach.get("name"):
        media["name"] = str(attach["name"])
    if str(attach.get("size", "")).isdigit():
        media["size"] = int(attach["size"])
    return media


def _marked(event: Mapping[str, Any]) -> bool:
    ext = event.get("ext")
    return isinstance(ext, str) and MARK in ext


# -- sending ------------------------------------------------------------------------------

def relay_body(message: FeedMessage) -> tuple[int, str] | None:
    """msg/sendMsg.action `type` and `body` for `message`, or None for a
    kind NetEase cannot carry."""
    kind = message.kind
    if kind == "text" and message.text is not None:
        payload: Any = {"msg": message.text}
    elif kind == "custom" and message.custom is not None:
        payload = dict(message.custom)
    elif kind in ("image", "file") and message.custom and message.custom.get("url"):
        url = str(message.custom["url"])
        name = str(message.custom.get("name") or url.rsplit("/", 1)[-1] or "file")
        payload = {"name": name, "url": url, "ext": _extension(name, url)}
        if message.custom.get("size") is not None:
            payload["size"] = message.custom["size"]
    else:
        return None
    return SEND_TYPES[kind], json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _extension(name: str, url: str) -> str:
    for text in (name, url.split("?", 1)[0]):
        tail = text.rsplit("/", 1)[-1]
        if "." in tail:
            return tail.rsplit(".", 1)[-1]
    return ""
