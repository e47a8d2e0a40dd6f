"""The RongCloud sandbox's full message routing (全量消息路由) and
/message/recall.json, mixed into RongCloudSandbox (vendors/sandbox/rongcloud.py).

A message a simulated client sends (and its recall, an RC:RcCmd) is routed
to the feed as a form-encoded POST signed in the URL query (nonce,
signTimestamp, signature). Messages sent through the Server API are not
routed, as the vendor's default is; `route_api_sends=True` is the console
switch that routes them too.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Iterator, Mapping
from urllib.parse import urlencode

from ..rongcloud_feed import FILE, IMAGE, RECALL, TEXT, routing_signature
from .common import Call, Form, Refusal, Sandbox
from .feed import FeedSandbox, Outgoing

FORM_TYPE = "application/x-www-form-urlencoded"
CLIENT_CUSTOM = "App:Custom"  # objectName a simulated client's custom message has by default


class RongCloudFeed(FeedSandbox, Sandbox):
    """Besides the base's, RongCloudSandbox provides these:"""

    app_secret: str
    _uids: Iterator[int]

    route_api_sends = False

    def init_rongcloud_feed(self, route_api_sends: bool) -> None:
        self.init_feed()
        self.route_api_sends = route_api_sends
        # msg_id -> what inbox entries do not carry (they keep their old shape).
        self.sent: dict[str, dict[str, Any]] = {}

    # -- the hooks ---------------------------------------------------------------------

    def sign_delivery(self, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        nonce, stamp = str(secrets.randbelow(10 ** 9)), str(int(time.time() * 1000))
        return {}, {"nonce": nonce, "signTimestamp": stamp,
                    "signature": routing_signature(self.app_secret, nonce, stamp)}

    def client_send(self, params: Mapping[str, Any]) -> tuple[str, int, list[Outgoing]]:
        sender = self._client_user(params.get("from"))
        kinds = [k for k in ("text", "custom", "image", "file") if params.get(k) is not None]
        if len(kinds) != 1:
            raise ValueError("exactly one of text, custom, image, file")
        object_name, payload = _client_content(kinds[0], params[kinds[0]],
                                               str(params.get("object_name") or CLIENT_CUSTOM))
        to, group = str(params.get("to") or ""), bool(params.get("group"))
        if group:
            if sender not in self.store.members(to):
                raise ValueError(f"{sender} is not a member of group {to}")
        else:
            to = self._client_user(to)
        uid = self.vendor_uid()
        content = json.dumps(payload, ensure_ascii=False)
        self.store_sent(uid, sender, to, group, object_name, content, source="Android")
        return uid, self.sent[uid]["sent_at_ms"], [self.routed(uid)]

    def client_recall(self, params: Mapping[str, Any]) -> list[Outgoing]:
        sender = self._client_user(params.get("from"))
        uid = str(params.get("msg_id") or "")
        meta = self.sent.get(uid)
        if meta is None or meta["from"] != sender:
            raise ValueError(f"{sender} sent no message {uid!r}")
        return [self._recalled(uid, source="Android")]

    def inbox_view(self, user_id: str) -> list[dict[str, Any]]:
        view = []
        for entry in self.store.inboxes.get(user_id, []):
            meta = self.sent.get(entry["msg_id"], {})
            one: dict[str, Any] = {"msg_id": entry["msg_id"], "from": entry["from"],
                                   "to": entry.get("group") or user_id, "group": entry.get("group"),
                                   "sent_at_ms": meta.get("sent_at_ms", 0)}
            one.update(_kind(entry))
            if meta.get("recalled"):
                one["recalled"] = True
            view.append(one)
        return view

    # -- storing and routing -----------------------------------------------------------

    def vendor_uid(self) -> str:
        """A message UID shaped as the vendor's (four groups of four)."""
        raw = f"{next(self._uids):016X}"
        return "-".join(raw[i:i + 4] for i in range(0, 16, 4))

    def store_sent(self, uid: str, sender: str, to: str, group: bool, object_name: str,
                   content: str, *, source: str, deliver: bool = True) -> None:
        """Keep what routing needs; `deliver` puts it in the recipients' inboxes."""
        if deliver:
            entry = {"from": sender, "object_name": object_name, **_entry_body(object_name, content)}
            members = sorted(set(self.store.members(to)) - {sender}) if group else [to]
            for member in members:
                self.store.deliver(member, {**entry, **({"group": to} if group else {}),
                                            "msg_id": uid})
        self.sent[uid] = {"from": sender, "to": to, "group": group, "object_name": object_name,
                          "content": content, "sent_at_ms": self.sent_at_ms(), "source": source}

    def routed(self, uid: str) -> Outgoing:
        meta = self.sent[uid]
        fields = {"fromUserId": meta["from"], "toUserId": meta["to"],
                  "objectName": meta["object_name"], "content": meta["content"],
                  "channelType": "GROUP" if meta["group"] else "PERSON",
                  "msgTimestamp": str(meta["sent_at_ms"]), "msgUID": uid,
                  "sensitiveType": "0", "source": meta["source"]}
        return Outgoing(urlencode(fields).encode(), FORM_TYPE)

    def route_api(self, uid: str) -> None:
        """A Server API send: routed only where the app switched that on."""
        if self.route_api_sends:
            self.feed.push(self.routed(uid))

    def _recalled(self, uid: str, *, source: str) -> Outgoing:
        meta = self.sent[uid]
        meta["recalled"] = True
        command = {"messageUId": uid, "conversationType": 3 if meta["group"] else 1,
                   "targetId": meta["to"], "sentTime": meta["sent_at_ms"], "isAdmin": 0,
                   "isDelete": 0}
        recall_uid = self.vendor_uid()
        self.store_sent(recall_uid, meta["from"], meta["to"], meta["group"], RECALL,
                        json.dumps(command), source=source, deliver=False)
        return self.routed(recall_uid)

    # -- /message/recall.json ----------------------------------------------------------

    def _recall_message(self, form: Form, _: Call) -> dict[str, Any]:
        from .rongcloud import _one  # the sandbox's own field reader

        kind = _one(form, "conversationType")
        if kind not in ("1", "3"):
            raise Refusal(1002, f"conversationType: {kind[:20]!r} is not 1 or 3 (simulated)")
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        target = _one(form, "targetId", max_bytes=64, id_like=True)
        uid = _one(form, "messageUID", max_bytes=64)
        if not _one(form, "sentTime").isdigit():
            raise Refusal(1002, "sentTime: not a number")
        meta = self.sent.get(uid)
        if (meta is None or meta["from"] != sender or meta["to"] != target
                or meta["group"] != (kind == "3") or meta["object_name"] == RECALL):
            raise Refusal(1002, f"messageUID: no message {uid} from {sender} to {target}")
        command = self._recalled(uid, source="Server")
        if self.route_api_sends:
            self.feed.push(command)
        return {}

    # -- helpers -----------------------------------------------------------------------

    def _client_user(self, value: Any) -> str:
        user_id = str(value or "")
        if user_id not in self.users:
            raise ValueError(f"{value!r} is not a registered user")
        return user_id


def _client_content(kind: str, value: Any, custom_name: str) -> tuple[str, dict[str, Any]]:
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError("text must be a string")
        return TEXT, {"content": value}
    if kind == "custom":
        return custom_name, value
    media = {"url": value} if isinstance(value, str) else dict(value)
    if not media.get("url"):
        raise ValueError(f"{kind} needs a url")
    if kind == "image":
        return IMAGE, {"content": "", "imageUri": media["url"]}
    name = str(media.get("name") or media["url"].rsplit("/", 1)[-1])
    body = {"name": name, "fileUrl": media["url"], "type": name.rsplit(".", 1)[-1] if "." in name else ""}
    if media.get("size") is not None:
        body["size"] = media["size"]
    return FILE, body


def _entry_body(object_name: str, content: str) -> dict[str, Any]:
    """An inbox entry's content, as the publish handlers store it."""
    payload = json.loads(content)
    if object_name == TEXT:
        return {"text": payload["content"]}
    return {"custom": payload}


def _kind(entry: Mapping[str, Any]) -> dict[str, Any]:
    name = entry.get("object_name", TEXT)
    if "text" in entry:
        return {"kind": "text", "text": entry["text"]}
    custom = entry.get("custom")
    body = custom if isinstance(custom, dict) else {}
    if name == IMAGE:
        return {"kind": "image", "custom": {"url": body.get("imageUri")}}
    if name == FILE:
        media = {"url": body.get("fileUrl"), "name": body.get("name"), "size": body.get("size")}
        return {"kind": "file", "custom": {k: v for k, v in media.items() if v is not None}}
    if not name.startswith("RC:"):
        return {"kind": "custom", "custom": custom}
    return {"kind": name, "custom": custom}
