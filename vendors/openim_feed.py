"""OpenIM v3's message feed for the bridge: its after-save and after-revoke
webhooks read into FeedMessages, and the `content` a relayed message is sent with.

Facts from the server's source (openimsdk/open-im-server v3 main,
openimsdk/protocol; docs/vendors.md, "Message feeds" says where):
- `afterMsgSaveDB` POSTs `{url}/callbackAfterMsgSaveDBCommand` with each
  message msgtransfer has stored (CommonCallbackReq + recvID, groupID), its
  `seq` given; SDK and REST (admin, msgFrom 200) sends alike, one attempt
  (an in-memory queue, `timeout` 5 s by default, no retry); notification
  content types (1000-5000) and typing (113) are never sent.
- `afterRevokeMsg` POSTs `{conversationID, seq, userID}` under the command
  "callbackBeforeAfterMsgCommand" (the server's own spelling): no
  serverMsgID and no time. So a message's id here is "<conversationID>#<seq>",
  the pair a revoke names.
- `afterSendSingleMsg` / `afterSendGroupMsg` fire before the message is
  stored: their `seq` is 0, so no revoke could be matched to them. They
  report the same messages again and are ignored.
- Nothing is signed: the hook URL carries a secret of the user's
  (`feed_secret`), compared in constant time; sendTime bounds replays.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from .client import invalid
from .feeds import (MAX_FEED_BYTES, Delivery, FeedMessage, FeedRefused, carries_mark, check_age, mark_json,
                    same_secret)
from .vocabulary import Operation, Outcome, Result

SAVED_COMMAND = "callbackAfterMsgSaveDBCommand"  # CallbackAfterMsgSaveDBCommand
SINGLE_COMMAND = "callbackAfterSendSingleMsgCommand"  # after-send: ignored (seq 0)
GROUP_COMMAND = "callbackAfterSendGroupMsgCommand"
REVOKE_COMMAND = "callbackBeforeAfterMsgCommand"  # CallbackAfterRevokeMsgCommand's value upstream
SINGLE_CHAT, GROUP_CHAT = 1, 3  # sessionType (4: notification, never a user's message)
TEXT, PICTURE, FILE, CUSTOM = 101, 102, 105, 110
TYPING = 113
NOTIFICATIONS = range(1000, 5001)  # constant.NotificationBegin .. NotificationEnd
# contentTypes the bridge cannot carry, by the names OpenIM's protocol gives them.
OTHER_TYPES = {103: "voice", 104: "video", 106: "at_text", 107: "merger", 108: "card",
               109: "location", 114: "quote", 115: "face", 117: "advanced_text", 118: "markdown"}


def conversation_id(sender: str, to: str, group: bool) -> str:
    """The conversationID revoke_msg takes: "sg_<group>", or "si_<a>_<b>" with the two ids sorted."""
    if group:
        return "sg_" + to
    a, b = sorted((sender, to))
    return f"si_{a}_{b}"


def message_key(conversation: str, seq: int) -> str:
    """A stored message's id in the feed: what a revoke names it by."""
    return f"{conversation}#{seq}"


def revoke_id(conversation: str, seq: int) -> str:
    """The feed's id of the revoke of that message (the webhook carries none of its own)."""
    return "revoke:" + message_key(conversation, seq)





# -- reading a delivery ----------------------------------------------------------------

def read(secret: str, delivery: Delivery, now: float) -> list[FeedMessage]:
    if not same_secret(delivery.path_secret, secret):
        raise FeedRefused(401, "the hook URL's secret does not match the app's feed_secret")
    if len(delivery.body) > MAX_FEED_BYTES:
        raise FeedRefused(413, f"delivery larger than {MAX_FEED_BYTES} bytes")
    try:
        body = json.loads(delivery.body)
    except ValueError:
        raise FeedRefused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise FeedRefused(400, "the body is not a JSON object")
    command = body.get("callbackCommand")
    if command == REVOKE_COMMAND:
        return [_revoke(body, now)]
    if command != SAVED_COMMAND:
        return []  # another webhook at the same URL (after-send included): no message to take
    return _message(body, now)


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise FeedRefused(400, f"{name}: missing or not a string")
    return value


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FeedRefused(400, f"{name}: missing or not a number")
    return value


def _message(body: dict[str, Any], now: float) -> list[FeedMessage]:
    session, content_type = _int(body, "sessionType"), _int(body, "contentType")
    if session not in (SINGLE_CHAT, GROUP_CHAT) or content_type in NOTIFICATIONS or content_type == TYPING:
        return []  # notifications and typing are not users' messages
    group = session == GROUP_CHAT
    sender, to = _text(body, "sendID"), _text(body, "groupID" if group else "recvID")
    seq = _int(body, "seq")
    if seq < 1:
        raise FeedRefused(400, "seq: a stored message has one (1 or more)")
    sent_at = _int(body, "sendTime")
    check_age(sent_at, now, unit=0.001)
    kind, text, custom = _content(content_type, body.get("content"))
    msg_id = message_key(conversation_id(sender, to, group), seq)
    return [FeedMessage(msg_id=msg_id, sender=sender, to=to, group=group, sent_at_ms=sent_at,
                        kind=kind, text=text, custom=custom, marked=carries_mark(body.get("ex")))]


def _content(content_type: int, raw: Any) -> tuple[str, str | None, Mapping[str, Any] | None]:
    """(kind, text, custom) of a message's `content` (a JSON string)."""
    if content_type not in (TEXT, PICTURE, FILE, CUSTOM):
        return OTHER_TYPES.get(content_type, f"content_type_{content_type}"), None, None
    try:
        elem = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        elem = None
    if not isinstance(elem, dict):
        raise FeedRefused(400, "content: not a JSON object")
    if content_type == TEXT:
        text = elem.get("content")
        if not isinstance(text, str):
            raise FeedRefused(400, "content.content: missing")
        return "text", text, None
    if content_type == CUSTOM:
        data = elem.get("data")
        try:
            custom = json.loads(data) if isinstance(data, str) else None
        except ValueError:
            custom = None
        # Our own sends put a JSON object in `data`; anything else goes as the whole elem.
        return "custom", None, custom if isinstance(custom, dict) else elem
    if content_type == PICTURE:
        picture = elem.get("sourcePicture")
        if not isinstance(picture, dict) or not picture.get("url"):
            raise FeedRefused(400, "content.sourcePicture.url: missing")
        media = {"url": picture["url"], "size": picture.get("size"), "width": picture.get("width"),
                 "height": picture.get("height"), "type": picture.get("type")}
        return "image", None, {k: v for k, v in media.items() if v not in (None, "", 0)}
    if not elem.get("sourceUrl"):
        raise FeedRefused(400, "content.sourceUrl: missing")
    media = {"url": elem["sourceUrl"], "name": elem.get("fileName"), "size": elem.get("fileSize")}
    return "file", None, {k: v for k, v in media.items() if v not in (None, "", 0)}


def _revoke(body: dict[str, Any], now: float) -> FeedMessage:
    """A revoke names the message by (conversationID, seq) only: `recalls`
    is the after-save message's id, message_key(conversationID, seq)."""
    conversation, user = _text(body, "conversationID"), _text(body, "userID")
    seq = _int(body, "seq")
    group = conversation.startswith("sg_")
    to = conversation[3:] if group else _peer(conversation, user)
    return FeedMessage(msg_id=revoke_id(conversation, seq), sender=user, to=to, group=group,
                       sent_at_ms=int(now * 1000), kind="recall", recalls=message_key(conversation, seq))


def _peer(conversation: str, user: str) -> str:
    """The other user of "si_<a>_<b>" (ids may hold '_': match the revoker's id at either end)."""
    pair = conversation[3:] if conversation.startswith("si_") else conversation
    if pair.startswith(user + "_") and sorted((user, pair[len(user) + 1:]))[0] == user:
        return pair[len(user) + 1:]
    if pair.endswith("_" + user):
        return pair[:-len(user) - 1]
    raise FeedRefused(400, "conversationID: does not name the revoking user")


# -- the content of a relayed message --------------------------------------------------

def relay_content(kind: str, text: str | None, custom: Mapping[str, Any] | None
                  ) -> tuple[int, dict[str, Any]] | str:
    """(contentType, content) for /msg/send_msg, or why OpenIM cannot carry it."""
    if kind == "text":
        if not text:
            return "text: OpenIM refuses an empty text"
        return TEXT, {"content": text}
    if kind == "custom":
        data = json.dumps(dict(custom or {}), ensure_ascii=False, separators=(",", ":"))
        return CUSTOM, {"data": data, "description": "", "extension": ""}
    if kind not in ("image", "file"):
        return f"{kind}: OpenIM cannot carry it"
    media = dict(custom or {})
    url = media.get("url")
    if not isinstance(url, str) or not url:
        return f"{kind}: no url"
    name = media.get("name") or posixpath.basename(urlsplit(url).path)
    if kind == "file":
        # FileElem validates sourceUrl, fileName and fileSize as required (non-zero).
        if not name or not media.get("size"):
            return "file: OpenIM needs the file's name and size"
        return FILE, {"sourceUrl": url, "fileName": name, "fileSize": int(media["size"])}
    # PictureElem requires type, width and height (non-zero) on each of its three pictures.
    width, height = media.get("width"), media.get("height")
    if not width or not height:
        return "image: OpenIM needs the picture's width and height"
    kind_of = media.get("type") or posixpath.splitext(name)[1].lstrip(".") or "image"
    picture = {"uuid": "", "type": kind_of, "size": int(media.get("size") or 0),
               "width": int(width), "height": int(height), "url": url}
    return PICTURE, {"sourcePicture": picture, "bigPicture": picture, "snapshotPicture": picture}


# -- the client's side: relay and recall (mixed into OpenIMV3Client) ------------------

SEARCH_PAGE = 100  # chat logs per /msg/search_msg page
SEARCH_PAGES = 20  # pages read per day searched before giving up
ALREADY_REVOKED = "1404"  # servererrs.MsgAlreadyRevoke


class OpenIMV3Feed:
    """read_feed, relay and recall of OpenIMV3Client, which provides these:"""

    config: Any
    _admin_auth: httpx.Auth
    _id_problem: Callable[[str], Callable[[str], str | None]]
    if TYPE_CHECKING:
        async def call(self, key: str | Operation, method: str, url: str, *, weight: int = 1,
                       repeat_safe: bool | None = None, expect: Sequence[str] = (),
                       **kwargs: Any) -> tuple[Result, dict[str, Any]]: ...

    feeds = True
    recalls = True

    @classmethod
    def read_feed(cls, config: Any, delivery: Delivery, now: float) -> list[FeedMessage]:
        return read(config.feed_secret, delivery, now)

    async def _admin_call(self, key: Operation, path: str, body: dict[str, Any], *,
                          repeat_safe: bool) -> tuple[Result, dict[str, Any]]:
        return await self.call(key, "POST", self.config.base_url.rstrip("/") + path, json=body,
                               auth=self._admin_auth, repeat_safe=repeat_safe)

    async def relay(self, message: FeedMessage, *, dedup_key: str) -> Result:
        """/msg/send_msg as the admin with sendID = the sender. OpenIM takes
        no dedup key: a cut-off call comes back maybe_delivered."""
        built = relay_content(message.kind, message.text, message.custom)
        if isinstance(built, str):
            return invalid(built)
        problem = self._id_problem("sender")(message.sender) or (
            None if message.group else self._id_problem("recipient")(message.to))
        if problem or not message.to:
            return invalid(problem or "to: required")
        content_type, content = built
        body = {"sendID": message.sender, "contentType": content_type, "content": content,
                "sessionType": GROUP_CHAT if message.group else SINGLE_CHAT, "ex": mark_json(),
                "groupID" if message.group else "recvID": message.to}
        key = Operation.SEND_GROUP if message.group else Operation.SEND
        result, reply = await self._admin_call(key, "/msg/send_msg", body, repeat_safe=False)
        if result.outcome is not Outcome.OK:
            return result
        data = reply.get("data")
        sent = data if isinstance(data, dict) else {}
        if not sent.get("serverMsgID"):
            return Result(Outcome.RETRYABLE, "incomplete", "the reply carried no serverMsgID",
                          maybe_delivered=True)
        return Result(Outcome.OK, result.code, data={
            "msg_id": sent["serverMsgID"], "sent_at_ms": sent.get("sendTime"),
            "conversation_id": conversation_id(message.sender, message.to, message.group)})

    async def recall(self, message: FeedMessage, target_msg_id: str) -> Result:
        """/msg/revoke_msg takes (conversationID, seq, userID), and a send's
        reply carries no seq: find it with /msg/search_msg (the sender's
        messages to that user or group on the day sent), then revoke as the
        sender. Already revoked is `exists`. data: `seq`, and `msg_id`, the id
        the revoke webhook reports this revoke by, so a bridge that reads this
        app's feed knows it as its own (an echo) when it comes back."""
        key = Operation.SEND_GROUP if message.group else Operation.SEND
        found = await self._find_seq(key, message, target_msg_id)
        if isinstance(found, Result):
            return found
        seq, revoked = found
        conversation = conversation_id(message.sender, message.to, message.group)
        data = {"seq": seq, "msg_id": revoke_id(conversation, seq)}
        if revoked:
            return Result(Outcome.EXISTS, ALREADY_REVOKED, "already revoked", data=data)
        result, _ = await self._admin_call(key, "/msg/revoke_msg", {
            "conversationID": conversation, "seq": seq, "userID": message.sender}, repeat_safe=True)
        if result.code == ALREADY_REVOKED:
            return Result(Outcome.EXISTS, result.code, result.message, data=data)
        return Result(result.outcome, result.code, result.message, data=data,
                      retry_after=result.retry_after) if result.succeeded else result

    async def _find_seq(self, key: Operation, message: FeedMessage,
                        target_msg_id: str) -> tuple[int, bool] | Result:
        """(seq, revoked) of the relayed message, or the Result of a failed search."""
        sent = message.sent_at_ms / 1000
        days = dict.fromkeys(time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (sent, sent + 86400))
        for day in days:  # the relay went out at or just after the source's time
            for number in range(1, SEARCH_PAGES + 1):
                result, body = await self._admin_call(key, "/msg/search_msg", {
                    "sendID": message.sender, "recvID": message.to, "sendTime": day,
                    "sessionType": GROUP_CHAT if message.group else SINGLE_CHAT,
                    "pagination": {"pageNumber": number, "showNumber": SEARCH_PAGE}}, repeat_safe=True)
                if not result.succeeded:
                    return result
                data = body.get("data")
                found = data.get("chatLogs") if isinstance(data, dict) else None
                logs = found if isinstance(found, list) else []
                for item in logs:
                    log = item.get("chatLog") if isinstance(item, dict) else None
                    if isinstance(log, dict) and log.get("serverMsgID") == target_msg_id:
                        seq = log.get("seq")
                        if isinstance(seq, int) and seq > 0:
                            return seq, bool(item.get("isRevoked"))
                if len(logs) < SEARCH_PAGE:
                    break
        # Stored asynchronously after the send: it may not be searchable yet.
        return Result(Outcome.RETRYABLE, "not found",
                      f"message {target_msg_id} not found in the sender's stored messages (yet)")
