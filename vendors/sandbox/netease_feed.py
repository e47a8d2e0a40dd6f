"""The NetEase sandbox's message copy (消息抄送) and recall, mixed into
NeteaseSandbox (vendors/sandbox/netease.py).

A message a simulated client sends, and one sent through msg/sendMsg.action
or msg/sendBatchMsg.action unless its option says route=false, is copied to
the feed as eventType "1"; a recall is copied as eventType "7" (one-to-one)
or "8" (team). Deliveries are signed as the vendor signs them: CurTime (ms,
as the vendor's copy documentation shows it), MD5 of the body, CheckSum =
sha1(AppSecret + MD5 + CurTime).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..netease_feed import body_md5, copy_checksum
from .common import Call, Form, Refusal, Sandbox
from .feed import FeedSandbox, Outgoing, json_body

# What a client can send, as sendMsg `type` and the copy's msgType.
CLIENT_TYPES = {"text": (0, "TEXT"), "custom": (100, "CUSTOM"), "image": (1, "PICTURE"),
                "file": (6, "FILE")}
COPY_TYPES = {0: "TEXT", 1: "PICTURE", 2: "AUDIO", 3: "VIDEO", 4: "LOCATION", 6: "FILE",
              10: "TIPS", 100: "CUSTOM"}
KIND_OF_TYPE: dict[Any, str] = {0: "text", 1: "image", 6: "file", 100: "custom"}  # read with any entry's type


class NeteaseFeed(FeedSandbox, Sandbox):
    """Besides the base's, NeteaseSandbox provides these:"""

    app_key: str
    app_secret: str
    _ids: Iterator[int]
    if TYPE_CHECKING:
        def _team(self, tid: str) -> dict[str, Any]: ...
        def _known(self, form: Form, name: str) -> str: ...

    def init_netease_feed(self) -> None:
        self.init_feed()
        # msgid -> what the inbox entries do not carry (entries keep their
        # old shape): sent time, from, to, team, recalled.
        self.sent: dict[str, dict[str, Any]] = {}

    # -- the hooks ---------------------------------------------------------------------

    def sign_delivery(self, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        curtime = str(int(time.time() * 1000))
        md5 = body_md5(body)
        return ({"AppKey": self.app_key, "CurTime": curtime, "MD5": md5,
                 "CheckSum": copy_checksum(self.app_secret, md5, curtime)}, {})

    def client_send(self, params: Mapping[str, Any]) -> tuple[str, int, list[Outgoing]]:
        sender = self._client_user(params.get("from"))
        kinds = [k for k in CLIENT_TYPES if params.get(k) is not None]
        if len(kinds) != 1:
            raise ValueError("exactly one of text, custom, image, file")
        kind = kinds[0]
        content = self._client_content(kind, params[kind])
        group = bool(params.get("group"))
        to = str(params.get("to") or "")
        if group:
            if sender not in self._team(to)["members"]:
                raise ValueError(f"{sender} is not a member of team {to}")
        else:
            to = self._client_user(to)
        msgid, sent_at = self.store_message(sender, to, group, content, client="AOS")
        return str(msgid), sent_at, self.copies(msgid)

    def client_recall(self, params: Mapping[str, Any]) -> list[Outgoing]:
        sender = self._client_user(params.get("from"))
        msgid = str(params.get("msg_id") or "")
        meta = self.sent.get(msgid)
        if meta is None or meta["from"] != sender:
            raise ValueError(f"{sender} sent no message {msgid!r}")
        meta["recalled"] = True
        return [self.recall_copy(msgid, client="AOS")]

    def inbox_view(self, user_id: str) -> list[dict[str, Any]]:
        view = []
        for entry in self.store.inboxes.get(user_id.lower(), []):
            msgid = str(entry["msgid"])
            meta = self.sent.get(msgid, {})
            one: dict[str, Any] = {"msg_id": msgid, "from": entry["from"],
                                   "to": entry.get("group_id") or user_id.lower(),
                                   "group": entry.get("group_id"),
                                   "sent_at_ms": meta.get("sent_at_ms", 0)}
            if "text" in entry:
                one.update(kind="text", text=entry["text"])
            else:
                kind = KIND_OF_TYPE.get(entry.get("type"), str(entry.get("type")))
                one.update(kind=kind, custom=_media(entry["custom"]) if kind in ("image", "file")
                           else entry["custom"])
            if meta.get("recalled"):
                one["recalled"] = True
            view.append(one)
        return view

    # -- storing and copying -----------------------------------------------------------

    def store_message(self, sender: str, to: str, group: bool, content: dict[str, Any], *,
                      client: str = "REST", route: bool = True,
                      ext: str = "") -> tuple[int, int]:
        """Deliver one message to its recipients; (msgid, timetag)."""
        msgid, sent_at = next(self._ids), self.sent_at_ms()
        if group:
            for member in sorted(self._team(to)["members"] - {sender}):
                self.store.deliver(member, {"from": sender, "group_id": to, **content,
                                            "msgid": msgid})
        else:
            self.store.deliver(to, {"from": sender, **content, "msgid": msgid})
        self.sent[str(msgid)] = {"from": sender, "to": to, "group": group, "sent_at_ms": sent_at,
                                 "content": content, "client": client, "route": route, "ext": ext}
        return msgid, sent_at

    def copies(self, msgid: int | str) -> list[Outgoing]:
        """The eventType 1 copy of a stored message, unless it is not routed."""
        meta = self.sent[str(msgid)]
        if not meta["route"]:
            return []
        content = meta["content"]
        msg_type = COPY_TYPES.get(content.get("type", 0), "CUSTOM")
        event = {"eventType": "1", "convType": "TEAM" if meta["group"] else "PERSON",
                 "to": meta["to"], "fromAccount": meta["from"], "fromClientType": meta["client"],
                 "fromDeviceId": "sandbox-device", "fromNick": meta["from"],
                 "msgTimestamp": str(meta["sent_at_ms"]), "msgType": msg_type,
                 "msgidClient": uuid.uuid4().hex, "msgidServer": str(msgid), "resendFlag": "0",
                 "body": content.get("text", ""), "attach": ""}
        if "custom" in content:  # custom, picture and file content travel in `attach`
            event["attach"] = json_body(content["custom"]).decode()
        if meta["ext"]:
            event["ext"] = meta["ext"]
        return [Outgoing(json_body(event))]

    def recall_copy(self, msgid: str, *, client: str) -> Outgoing:
        meta = self.sent[msgid]
        event = {"eventType": "8" if meta["group"] else "7", "clientId": uuid.uuid4().hex,
                 "deleteTime": str(self.sent_at_ms()), "from": meta["from"],
                 "fromClientType": client, "msgId": msgid, "selfMsg": "",
                 "sendTime": str(meta["sent_at_ms"]), "to": meta["to"]}
        return Outgoing(json_body(event))

    # -- msg/recall.action -------------------------------------------------------------

    def msg_recall(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        from .netease import choice_param, int_param, text_param  # the sandbox's own readers

        msgid = text_param(form, "deleteMsgid", 64, required=True)
        text_param(form, "timetag", 20, required=True)
        int_param(form, "timetag", default=0)  # a number; its match is not checked (unconfirmed)
        kind = choice_param(form, "type", ("7", "8"), required=True)
        sender = self._known(form, "from")
        to = text_param(form, "to", 128, required=True)
        choice_param(form, "ignoreTime", ("0", "1"))
        text_param(form, "msg", 500)
        meta = self.sent.get(msgid)
        target = to if kind == "8" else to.lower()
        if (meta is None or meta["from"] != sender or meta["group"] != (kind == "8")
                or meta["to"] != target):
            raise Refusal(414, f"deleteMsgid: no message {msgid} from {sender} to {to}")
        meta["recalled"] = True
        if meta["route"]:  # unconfirmed: a message not copied is taken to get no recall copy
            self.feed.push(self.recall_copy(msgid, client="REST"))
        return {}

    # -- helpers -----------------------------------------------------------------------

    def _client_user(self, value: Any) -> str:
        accid = str(value or "").lower()
        if accid not in self.users:
            raise ValueError(f"{value!r} is not a registered account")
        return accid

    @staticmethod
    def _client_content(kind: str, value: Any) -> dict[str, Any]:
        if kind == "text":
            if not isinstance(value, str):
                raise ValueError("text must be a string")
            return {"text": value}
        if kind == "custom":
            return {"custom": value, "type": 100}
        media = {"url": value} if isinstance(value, str) else dict(value)
        if not media.get("url"):
            raise ValueError(f"{kind} needs a url")
        name = str(media.get("name") or media["url"].rsplit("/", 1)[-1])
        attach = {"name": name, "url": media["url"], "ext": name.rsplit(".", 1)[-1] if "." in name else "",
                  "md5": ""}
        if media.get("size") is not None:
            attach["size"] = media["size"]
        return {"custom": attach, "type": CLIENT_TYPES[kind][0]}


def _media(attach: Any) -> Any:
    """An image or file body as the inbox view shows it: {url, name?, size?}."""
    if not isinstance(attach, dict):
        return attach
    return {k: attach[k] for k in ("url", "name", "size") if attach.get(k) not in (None, "")}
