"""OpenIM v3 sandbox: its message webhooks (the feed), simulated client
sends and recalls, and the server's /msg/revoke_msg and /msg/search_msg.
Mixed into OpenIMv3Sandbox.

As the server does (docs/vendors.md, "Message feeds"), for the webhooks
enabled (`webhooks`, named as in the server's config/webhooks.yml; by
default the two imshift's setup enables, afterMsgSaveDB and afterRevokeMsg):
every user message (SDK, msgFrom 100, or REST, msgFrom 200, batch sends
included) is posted with its `ex` and a `key` query of base64 JSON
{sendID, recvID, groupID}, by afterSendSingleMsg / afterSendGroupMsg with
`seq` 0 (they fire before the message is stored) and by afterMsgSaveDB
with its seq; a revoke is posted as {callbackCommand, conversationID, seq,
userID}. Nothing is signed: the test puts the app's feed_secret in the URL
it configures.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..openim_feed import (CUSTOM, FILE, GROUP_COMMAND, PICTURE, REVOKE_COMMAND, SAVED_COMMAND,
                           SINGLE_COMMAND, TEXT, conversation_id)
from .common import Endpoint
from .feed import FeedSandbox, Outgoing, json_body
from .openim import Fail, OpenIMSandbox

USER_MSG, ADMIN_MSG = 100, 200  # msgFrom
SEND_SUCCESS = 2  # MsgStatusSendSuccess
SEARCH, REVOKE = "search_msg", "revoke_msg"  # counted apart from sends


def picture_elem(media: Mapping[str, Any]) -> dict[str, Any]:
    """The PictureElem an SDK sends for an image."""
    picture = {"uuid": "", "type": media.get("type", "jpg"), "size": media.get("size", 0),
               "width": media.get("width", 0), "height": media.get("height", 0), "url": media["url"]}
    return {"sourcePath": "", "sourcePicture": picture, "bigPicture": picture, "snapshotPicture": picture}


def file_elem(media: Mapping[str, Any]) -> dict[str, Any]:
    return {"filePath": "", "uuid": "", "sourceUrl": media["url"], "fileName": media.get("name", ""),
            "fileSize": media.get("size", 0)}


DEMO_FEED_SECRET = "demo-feed-secret"
# The server's message webhooks (config/webhooks.yml names), and those imshift's setup enables.
WEBHOOKS = ("afterSendSingleMsg", "afterSendGroupMsg", "afterMsgSaveDB", "afterRevokeMsg")
SETUP_WEBHOOKS = ("afterMsgSaveDB", "afterRevokeMsg")


class OpenIMv3Feed(FeedSandbox, OpenIMSandbox):
    """Besides OpenIMSandbox's, OpenIMv3Sandbox provides these:"""

    if TYPE_CHECKING:
        async def _v3_send_msg(self, body: dict[str, Any], who: str | None) -> Any: ...
        async def _v3_batch_send(self, body: dict[str, Any], who: str | None) -> Any: ...

    def init_openim_feed(self, webhooks: Iterable[str] = SETUP_WEBHOOKS) -> None:
        self.webhooks = frozenset(webhooks)
        if not self.webhooks <= set(WEBHOOKS):
            raise ValueError(f"webhooks: some of {', '.join(WEBHOOKS)}")
        self.init_feed()
        # A fixed demo value like the sandbox's other credentials, so a sandbox
        # served on its own (`imshift sandbox`, compose) can be configured.
        self.feed_secret = DEMO_FEED_SECRET
        self.messages: list[dict[str, Any]] = []  # every stored message, oldest first
        self._seqs: Counter[str] = Counter()  # conversationID -> last seq

    def feed_endpoints(self) -> list[Endpoint]:
        def handler(act: Any) -> Any:
            return lambda body, call: act(body, call.who)
        return [Endpoint("/msg/search_msg", SEARCH, handler(self._v3_search), body="json"),
                Endpoint("/msg/revoke_msg", REVOKE, handler(self._v3_revoke), body="json")]

    # -- content: v3 also takes pictures and files ---------------------------------------

    def _content(self, content_type: Any, content: Any, text_key: str) -> dict[str, Any]:
        """The API's validation of PictureElem and FileElem (required = non-empty / non-zero)."""
        if content_type not in (PICTURE, FILE):
            return super()._content(content_type, content, text_key)
        if not isinstance(content, dict):
            return {}
        if content_type == FILE:
            if not all(content.get(k) for k in ("sourceUrl", "fileName", "fileSize")):
                return {}
            return {"kind": "file", "custom": {"url": content["sourceUrl"], "name": content["fileName"],
                                               "size": content["fileSize"]}}
        pictures = [content.get(k) for k in ("sourcePicture", "bigPicture", "snapshotPicture")]
        if not all(isinstance(p, dict) and all(p.get(k) for k in ("type", "width", "height", "url"))
                   for p in pictures):
            return {}
        source = content["sourcePicture"]
        return {"kind": "image", "custom": {k: source[k] for k in ("url", "size", "width", "height", "type")
                                            if source.get(k)}}

    # -- storing a message and its webhook -----------------------------------------------

    def _stored(self, sender: str, session: str, target: str, content_type: int, elem: Any,
                decoded: dict[str, Any], sent: dict[str, Any], msg_from: int, ex: str) -> dict[str, Any]:
        """Record a message _deliver delivered, give it the feed's time and a
        seq, and post its webhooks: after-send, then after-save. Returns the send's reply."""
        group = session == "group"
        conversation = conversation_id(sender, target, group)
        self._seqs[conversation] += 1
        sent["sendTime"] = self.sent_at_ms()
        receivers = ([m for m in self.groups[target]["members"] if m != sender] if group else [target])
        record = {"serverMsgID": sent["serverMsgID"], "clientMsgID": sent["clientMsgID"],
                  "sendID": sender, "to": target, "group": group, "contentType": content_type,
                  "content": json.dumps(elem, ensure_ascii=False, separators=(",", ":")),
                  "kind": decoded.get("kind") or ("text" if "text" in decoded else "custom"),
                  "text": decoded.get("text"), "custom": decoded.get("custom"), "msgFrom": msg_from,
                  "ex": ex, "sendTime": sent["sendTime"], "seq": self._seqs[conversation],
                  "conversationID": conversation, "receivers": receivers, "revoked": False}
        self.messages.append(record)
        if ("afterSendGroupMsg" if group else "afterSendSingleMsg") in self.webhooks:
            self._post_webhook(self._message_webhook(record, saved=False))
        if "afterMsgSaveDB" in self.webhooks:
            self._post_webhook(self._message_webhook(record, saved=True))
        return sent

    def _post_webhook(self, body: dict[str, Any]) -> None:
        """As the server posts a webhook: to {url}/{callbackCommand}."""
        self.feed.push(Outgoing(json_body(body), path="/" + body["callbackCommand"]))

    def _message_webhook(self, record: dict[str, Any], *, saved: bool) -> dict[str, Any]:
        """A message webhook's body: CallbackAfterSend{Single,Group}MsgReq
        (before storing: seq 0, recvID or groupID) or CallbackAfterMsgSaveDBReq
        (the seq, recvID and groupID both, one of them empty)."""
        command = SAVED_COMMAND if saved else GROUP_COMMAND if record["group"] else SINGLE_COMMAND
        body = {"callbackCommand": command,
                "sendID": record["sendID"], "serverMsgID": record["serverMsgID"],
                "clientMsgID": record["clientMsgID"], "operationID": secrets.token_hex(8),
                "senderPlatformID": 0 if record["msgFrom"] == ADMIN_MSG else 5, "senderNickname":
                self.users.get(record["sendID"], {}).get("nickname", ""),
                "sessionType": 3 if record["group"] else 1, "msgFrom": record["msgFrom"],
                "contentType": record["contentType"], "status": SEND_SUCCESS,
                "sendTime": record["sendTime"], "createTime": record["sendTime"],
                "content": record["content"], "seq": record["seq"] if saved else 0, "atUserList": None,
                "faceURL": "", "ex": record["ex"]}
        if saved:
            body.update(recvID="", groupID="")
        body["groupID" if record["group"] else "recvID"] = record["to"]
        return body

    def sign_delivery(self, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        """Nothing is signed; message webhooks carry the `key` query and an operationID header."""
        sent = json.loads(body)
        headers = {"operationID": str(sent.get("operationID") or secrets.token_hex(8))}
        if sent.get("callbackCommand") == REVOKE_COMMAND:
            return headers, {}
        key = {"sendID": sent.get("sendID", ""), "recvID": sent.get("recvID", ""),
               "groupID": sent.get("groupID", "")}
        return headers, {"key": base64.b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()}

    async def _feed_send_msg(self, body: dict[str, Any], who: str | None) -> Any:
        """/msg/send_msg, then its webhook."""
        sent = await self._v3_send_msg(body, who)
        group = body["sessionType"] == 3
        target = str(body["groupID"] if group else body["recvID"])
        return self._stored(str(body["sendID"]), "group" if group else "single", target,
                            body["contentType"], body["content"],
                            self._content(body["contentType"], body["content"], "content"),
                            sent, ADMIN_MSG, str(body.get("ex") or ""))

    async def _feed_batch_send(self, body: dict[str, Any], who: str | None) -> Any:
        """/msg/batch_send_msg, then a webhook per receiver."""
        sent = await self._v3_batch_send(body, who)
        decoded = self._content(body["contentType"], body["content"], "content")
        for one in sent["results"]:  # one SendMsg, and so one webhook, per receiver
            self._stored(str(body["sendID"]), "single", one["recvID"], body["contentType"],
                         body["content"], decoded, one, ADMIN_MSG, str(body.get("ex") or ""))
        return sent

    # -- a simulated client --------------------------------------------------------------

    def client_send(self, params: Mapping[str, Any]) -> tuple[str, int, list[Outgoing]]:
        """A user's SDK send: the elem it builds, checked and delivered as
        the msg service does (sender known, a group's member)."""
        sender, target = str(params["from"]), str(params["to"])
        session = "group" if params.get("group") else "single"
        if "text" in params:
            content_type, elem = TEXT, {"content": params["text"]}
        elif "custom" in params:
            data = json.dumps(params["custom"], ensure_ascii=False, separators=(",", ":"))
            content_type, elem = CUSTOM, {"data": data, "description": "", "extension": ""}
        elif "image" in params:
            content_type, elem = PICTURE, picture_elem(params["image"])
        elif "file" in params:
            content_type, elem = FILE, file_elem(params["file"])
        else:
            raise ValueError("one of text, custom, image, file is required")
        if session == "single" and target not in self.users:
            raise ValueError(f"no such user {target!r}")
        decoded = self._content(content_type, elem, "content")
        if not decoded:
            raise ValueError("the SDK refuses this content")
        try:
            sent = self._deliver(sender, session, target, decoded)
        except Fail as refused:
            raise ValueError(refused.message) from None
        self._stored(sender, session, target, content_type, elem, decoded, sent, USER_MSG,
                     str(params.get("ex") or ""))
        return sent["serverMsgID"], sent["sendTime"], []

    def client_recall(self, params: Mapping[str, Any]) -> list[Outgoing]:
        """The SDK's revoke: the sender takes back its own message."""
        user, msg_id = str(params["from"]), str(params["msg_id"])
        record = next((m for m in self.messages if m["serverMsgID"] == msg_id), None)
        if record is None:
            raise ValueError("msg not found")
        if record["sendID"] != user:
            raise ValueError("no permission: not the sender")
        self._revoke(record, user)
        return []

    def _revoke(self, record: dict[str, Any], user: str) -> None:
        if record["revoked"]:
            raise Fail(1404, "MsgAlreadyRevoke: msg already revoke")
        record["revoked"] = True
        if "afterRevokeMsg" in self.webhooks:
            self._post_webhook({"callbackCommand": REVOKE_COMMAND, "conversationID":
                                record["conversationID"], "seq": record["seq"], "userID": user})

    # -- the server's revoke and search --------------------------------------------------

    async def _v3_revoke(self, body: dict[str, Any], who: str | None) -> Any:
        """msg rpc RevokeMsg: the argument checks, then access (the admin, or
        the user itself), the user, the message by (conversation, seq), and
        who may revoke it."""
        user, conversation, seq = str(body.get("userID") or ""), str(body.get("conversationID") or ""), body.get("seq")
        if not user:
            raise Fail(1001, "ArgsError: user_id is empty")
        if not conversation:
            raise Fail(1001, "ArgsError: conversation_id is empty")
        if not isinstance(seq, int) or seq < 0:
            raise Fail(1001, "ArgsError: seq is invalid")
        if not self._is_admin(who) and who != user:
            raise Fail(1002, "NoPermissionError: no permission")
        if user not in self.users:
            raise Fail(1004, "RecordNotFoundError: user not found")
        record = next((m for m in self.messages
                       if m["conversationID"] == conversation and m["seq"] == seq), None)
        if record is None:
            raise Fail(1004, "RecordNotFoundError: msg not found")
        if not self._is_admin(who):
            owner_or_admin = self.groups.get(record["to"], {}).get("members", {}).get(user, 0) >= 60 \
                if record["group"] else False
            if record["sendID"] != user and not owner_or_admin:
                raise Fail(1002, "NoPermissionError: no permission")
        self._revoke(record, user)
        return None

    async def _v3_search(self, body: dict[str, Any], who: str | None) -> Any:
        """SearchMessage: one-to-one and group messages, oldest first,
        filtered by sendID, recvID (a user or a group), contentType,
        sessionType and sendTime (a UTC day, "YYYY-MM-DD")."""
        pagination = body.get("pagination")
        if not isinstance(pagination, dict):
            raise Fail(1001, "ArgsError: pagination is empty")
        number, show = pagination.get("pageNumber") or 1, pagination.get("showNumber") or 0
        day = str(body.get("sendTime") or "")
        if day:
            try:
                time.strptime(day, "%Y-%m-%d")
            except ValueError:
                raise Fail(1001, "ArgsError: invalid sendTime") from None

        def match(m: dict[str, Any]) -> bool:
            return ((not body.get("sendID") or m["sendID"] == body["sendID"])
                    and (not body.get("recvID") or m["to"] == body["recvID"])
                    and (not body.get("contentType") or m["contentType"] == body["contentType"])
                    and (not body.get("sessionType") or (3 if m["group"] else 1) == body["sessionType"])
                    and (not day or time.strftime("%Y-%m-%d", time.gmtime(m["sendTime"] / 1000)) == day))

        found = [m for m in self.messages if match(m)]
        start = (number - 1) * show
        logs = [{"chatLog": {"serverMsgID": m["serverMsgID"], "clientMsgID": m["clientMsgID"],
                             "sendID": m["sendID"], "recvID": m["to"], "groupID": m["to"] if m["group"] else "",
                             "sessionType": 3 if m["group"] else 1, "msgFrom": m["msgFrom"],
                             "contentType": m["contentType"], "content": m["content"], "status": SEND_SUCCESS,
                             "sendTime": m["sendTime"], "createTime": m["sendTime"], "ex": m["ex"],
                             "seq": m["seq"]},
                 "isRevoked": m["revoked"]} for m in found[start:start + show]]
        return {"chatLogs": logs, "chatLogsNum": len(found)}

    # -- what a client shows -------------------------------------------------------------

    def inbox_view(self, user_id: str) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            if user_id not in m["receivers"]:
                continue
            entry = {"msg_id": m["serverMsgID"], "from": m["sendID"], "to": m["to"],
                     "group": m["to"] if m["group"] else None, "kind": m["kind"],
                     "sent_at_ms": m["sendTime"], "recalled": m["revoked"]}
            if m["text"] is not None:
                entry["text"] = m["text"]
            if m["custom"] is not None:
                entry["custom"] = m["custom"]
            out.append(entry)
        return out
