"""Maxim sandbox: the message subscription (信息订阅, the bridge's feed),
simulated client sends and recalls, and POST /message/recall. Mixed into
MaximSandbox.

Choices where the vendor documents nothing (docs/vendors.md, "Message feeds"):
every message with a sender, made by a client or by /message/send (the
relay), is posted with its `ext`, one POST, 5 s, no retry; a message has
one msg_id however many members a group has; a client's recall is posted
as a RECALL message naming the recalled id in `related_mid`; a recall
through the server API is not posted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..maxim_feed import CONTENT_TYPES
from .common import Call, Endpoint, Sandbox
from .feed import FeedSandbox, Outgoing, json_body
from .maxim_params import Refused, as_id

if TYPE_CHECKING:
    from .maxim import User
    from .maxim_groups import ChatGroup

CTYPES = {0: "TEXT", 1: "IMAGE", 2: "AUDIO", 3: "VIDEO", 4: "FILE", 5: "LOCATION", 6: "COMMAND",
          7: "FORWARD", 9: "READ_ACK", 10: "RECALL", 11: "APPEND", 12: "REPLACE"}
MEDIA = (1, 2, 3, 4)  # content types that need an attachment with a url


def media_of(attachment: Any) -> dict[str, Any] | None:
    """{url, name?, size?, width?, height?} of an attachment JSON string, or None."""
    try:
        value = json.loads(attachment) if isinstance(attachment, str) else None
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
        return None
    media = {"url": value["url"], "name": value.get("dName"), "size": value.get("fLen"),
             "width": value.get("width"), "height": value.get("height")}
    return {k: v for k, v in media.items() if v is not None}


DEMO_FEED_SIGNATURE = "demo-feed-signature"


class MaximFeed(FeedSandbox, Sandbox):
    """Besides the base's, MaximSandbox provides these (maxim_groups.py the groups'):"""

    app_id: str
    _msg_ids: Iterator[int]
    if TYPE_CHECKING:
        def _acting_user(self, call: Call) -> User: ...
        def _user(self, uid: int, name: str) -> User: ...
        def _group(self, raw: Any) -> ChatGroup: ...
        def _deliver(self, to: int, sender: int | None, content_type: int, content: str,
                     group: int | None = None, msg_id: int | None = None) -> int: ...

    def init_maxim_feed(self) -> None:
        self.init_feed()
        # A fixed demo value like the sandbox's other credentials, so a sandbox
        # served on its own (`imshift sandbox`, compose) can be configured.
        self.feed_signature = DEMO_FEED_SIGNATURE
        self.messages: dict[int, dict[str, Any]] = {}  # msg_id -> the message, in send order

    def feed_endpoints(self) -> list[Endpoint]:
        return [Endpoint("/message/recall", "recall", self.recall_message, "json", ("POST", "PUT"))]

    def sign_delivery(self, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        return {"signature": self.feed_signature}, {}

    # -- one message: stored, delivered, posted ------------------------------------------

    def _message(self, sender: int | None, target_type: int, target: int, content_type: int,
                 content: str, attachment: str | None, ext: str | None) -> int:
        """Deliver one message to a user or every other member of a group,
        under one msg_id; post it to the subscription when it has a sender."""
        msg_id = next(self._msg_ids)
        group = target if target_type == 2 else None
        receivers = sorted(self.groups[target].members - {sender}) if group else [target]
        for receiver in receivers:
            self._deliver(receiver, sender, content_type, content, group=group, msg_id=msg_id)
        media = media_of(attachment) if content_type in MEDIA else None
        record = {"msg_id": msg_id, "from": sender, "to": target, "group": group is not None,
                  "content_type": content_type, "content": content, "attachment": attachment or "",
                  "ext": ext or "", "timestamp": self.sent_at_ms(), "receivers": receivers,
                  "recalled": False, "media": media}
        self.messages[msg_id] = record
        if sender is not None:
            self.feed.push(Outgoing(json_body(self._subscription(record))))
        return msg_id

    def _subscription(self, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """One delivery's body, as lanying-connector reads it (plus timestamp, attachment)."""
        return {"msgId": record["msg_id"], "from": {"uid": record["from"], "deviceSn": 0},
                "to": {"uid": record["to"]}, "type": "GROUPCHAT" if record["group"] else "CHAT",
                "ctype": CTYPES.get(record["content_type"], str(record["content_type"])),
                "content": record["content"], "attachment": record["attachment"], "ext": record["ext"],
                "config": "", "appId": self.app_id, "timestamp": record["timestamp"], **extra}

    # -- a simulated client --------------------------------------------------------------

    def client_send(self, params: Mapping[str, Any]) -> tuple[str, int, list[Outgoing]]:
        sender, target = as_id(params["from"]), as_id(params["to"])
        if sender is None or target is None:
            raise ValueError("from, to: Maxim ids (digits)")
        attachment = None
        if "text" in params:
            content_type, content = CONTENT_TYPES["text"], params["text"]
        elif "custom" in params:
            content_type, content = CONTENT_TYPES["custom"], json.dumps(params["custom"], ensure_ascii=False)
        elif "image" in params or "file" in params:
            kind = "image" if "image" in params else "file"
            media = params[kind]
            content_type, content = CONTENT_TYPES[kind], media.get("name") or kind
            attachment = json.dumps({"url": media["url"], "dName": media.get("name"), "fLen": media.get("size"),
                                     "width": media.get("width"), "height": media.get("height")})
        else:
            raise ValueError("one of text, custom, image, file is required")
        try:
            self._user(sender, "from")
            if params.get("group"):
                group = self._group(target)
                if sender not in group.members:
                    raise Refused(20002, "not a member of the group")
            else:
                self._user(target, "to")
        except Refused as refused:
            raise ValueError(refused.message) from None
        msg_id = self._message(sender, 2 if params.get("group") else 1, target, content_type, content,
                               attachment, params.get("ext"))
        return str(msg_id), self.messages[msg_id]["timestamp"], []

    def client_recall(self, params: Mapping[str, Any]) -> list[Outgoing]:
        user, msg_id = as_id(params["from"]), as_id(params["msg_id"])
        record = self.messages.get(msg_id or 0)
        if record is None or record["from"] != user:
            raise ValueError("no such message of this user")
        self._recall(record)
        # The SDK's recall is a RECALL message naming the recalled one.
        recall = dict(record, msg_id=next(self._msg_ids), content_type=10, content="", attachment="",
                      ext="", timestamp=self.sent_at_ms())
        return [Outgoing(json_body(self._subscription(recall, related_mid=record["msg_id"])))]

    def _recall(self, record: dict[str, Any]) -> None:
        record["recalled"] = True

    def recall_message(self, body: dict[str, Any], call: Call) -> Any:
        """POST /message/recall acting as the sender: the message must be
        theirs and in that conversation (the peer, or the group)."""
        user = self._acting_user(call).user_id
        conversation, msg_id = as_id(body.get("conversation_id")), as_id(body.get("msg_id"))
        if conversation is None or msg_id is None:
            raise Refused(10002, "conversation_id, msg_id: required")
        record = self.messages.get(msg_id)
        if record is None or record["to"] != conversation:
            raise Refused(10002, "msg_id: no such message in this conversation")
        if record["from"] != user:
            raise Refused(10010, "no permission: not the sender")
        self._recall(record)
        return True

    # -- what a client shows -------------------------------------------------------------

    def inbox_view(self, user_id: str) -> list[dict[str, Any]]:
        uid = as_id(user_id)
        out = []
        for m in self.messages.values():
            if uid not in m["receivers"]:
                continue
            entry = {"msg_id": str(m["msg_id"]), "from": str(m["from"] or ""), "to": str(m["to"]),
                     "group": str(m["to"]) if m["group"] else None,
                     "kind": {0: "text", 6: "custom", 1: "image", 4: "file"}.get(m["content_type"],
                                                                                 CTYPES.get(m["content_type"])),
                     "sent_at_ms": m["timestamp"], "recalled": m["recalled"]}
            if m["content_type"] == 0:
                entry["text"] = m["content"]
            elif m["content_type"] == 6:
                try:
                    entry["custom"] = json.loads(m["content"])
                except ValueError:
                    entry["text"] = m["content"]
            elif m["media"]:
                entry["custom"] = m["media"]
            out.append(entry)
        return out
