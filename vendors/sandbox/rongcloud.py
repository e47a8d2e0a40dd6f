"""An in-memory RongCloud IM Server API: the endpoints imshift uses and those
RongCloud's own server SDK calls, signed and answered the way the vendor does.

Auth accepts what RongCloud's own SDKs send: the plain header names of the
guide or the RC- prefixed ones, in any case; nonces longer than the guide's 18
characters (the Python SDK's str(random.random()) is 19 or more); and
timestamps in seconds or milliseconds. No validity window for the timestamp
is documented, so none is enforced. Errors carry `{code, errorMessage}` with
the HTTP status the vendor pairs with the code.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import secrets
from collections import defaultdict
from typing import Any, Callable

from starlette.requests import Request

from ..vocabulary import Profile
from ..rongcloud import TEXT_OBJECT_NAME, RongCloudClient, RongCloudConfig, sign
from ..rongcloud_rules import (ID_HINT, ID_PATTERN, MAX_CONTENT_BYTES, MAX_GROUP_CALL_MEMBERS,
                               MAX_GROUP_TARGETS, MAX_PUBLISH_RECIPIENTS)
from .common import Call, Endpoint, Form, Refusal, Sandbox
from .rongcloud_feed import RongCloudFeed
from .store import Record

MAX_SYSTEM_RECIPIENTS = 100  # toUserId per system publish call
MAX_BLOCK_USERS = 20  # userId per block / unblock call
MAX_BLOCK_MINUTES = 43200  # 30 days
FRIEND_PAGE_SIZES = range(1, 101)  # /friend/get.json `size`, default 50 (our reading; unconfirmed)
GROUP_FIELD = re.compile(r"group\[(.+)\]")  # /group/sync.json sends group[<id>]=<name>


def _one(form: Form, name: str, *, required: bool = True, max_bytes: int | None = None,
         id_like: bool = False) -> str:
    value = form.get(name, "")
    if not value:
        if required:
            raise Refusal(1002, f"{name} parameter is required")
        return ""
    size = len(value.encode())
    if max_bytes is not None and size > max_bytes:
        raise Refusal(1005, f"{name} length exceeds limit: {size} bytes, at most {max_bytes}")
    if id_like and not re.fullmatch(ID_PATTERN, value):
        raise Refusal(1002, f"{name}: {value[:80]!r} may only hold {ID_HINT}")
    return value


def _many(form: Form, name: str, *, at_most: int) -> list[str]:
    values = form.getlist(name)
    if not values:
        raise Refusal(1002, f"{name} parameter is required")
    if len(values) > at_most:
        raise Refusal(1002, f"{name}: {len(values)} values, at most {at_most} per call")
    return [_one(Form([(name, v)]), name, max_bytes=64, id_like=True) for v in values]


def _posted(handler: Callable[[Form, Call], Any]) -> Callable[[Form, Call], Any]:
    """RongCloud answers 1003 to a call with no form fields at all."""
    def act(form: Form, call: Call) -> Any:
        if not form:
            raise Refusal(1003, "No POST data.")
        return handler(form, call)
    return act


def _counting(name: str) -> Callable[[Form], int]:
    """RongCloud counts a publish to N users (or N groups) as N messages."""
    return lambda form: max(1, len(form.getlist(name)))


class RongCloudSandbox(RongCloudFeed, Sandbox):
    vendor = "rongcloud"
    client_class = RongCloudClient
    secret_attr = "app_secret"
    error_status = 400
    SERVER_ERROR = Refusal(1000, "Internal server error.", 500)
    OVER_LIMIT = Refusal(1008, "The call frequency exceeds the limit.", 429)

    def __init__(self, *, app_key: str = "demo-app-key", app_secret: str = "demo-secret",
                 max_users: int | None = None, broadcast_enabled: bool = True,
                 profile_hosting: bool = True, route_api_sends: bool = False, **kwargs: Any):
        self.app_key = app_key
        self.app_secret = app_secret
        self.max_users = max_users  # a development app key stops at 100 (code 2007)
        self.broadcast_enabled = broadcast_enabled
        self.profile_hosting = profile_hosting  # needed by the friend API
        self.tokens: dict[str, list[str]] = defaultdict(list)  # every token issued, oldest first
        self.online: set[str] = set()  # users a test marks as connected
        self._uids = itertools.count(1)
        self.friended_at: dict[tuple[str, str], int] = {}  # (user, friend) -> when, in ms
        # Message routing (vendors/sandbox/rongcloud_feed.py); Server API sends
        # are routed only with route_api_sends (a console switch at the vendor).
        self.init_rongcloud_feed(route_api_sends)
        super().__init__(**kwargs)

    def routes(self) -> list:
        return super().routes() + self.feed_routes()

    # -- the vendor's replies and auth ---------------------------------------------------

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"code": code, "errorMessage": message}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"code": 200, **(data or {})}

    def client_config(self, base_url: str, secret: str) -> RongCloudConfig:
        return RongCloudConfig(self.app_key, secret, hosts=(base_url,))

    @staticmethod
    def _header(request: Request, name: str) -> str:
        return request.headers.get(name) or request.headers.get(f"RC-{name}") or ""

    def authenticate(self, request: Request) -> None:
        if self._header(request, "App-Key") != self.app_key:
            raise Refusal(1001, "App-Key: unknown app key; check the App Key and Secret.", 401)
        values = {name: self._header(request, name) for name in ("Nonce", "Timestamp", "Signature")}
        for name, value in values.items():
            if not value:
                raise Refusal(1004, f"Signature error: the {name} header is missing.", 401)
        if not values["Timestamp"].isdigit():
            raise Refusal(1004, "Signature error: Timestamp must be a number.", 401)
        expected = sign(self.app_secret, values["Nonce"], values["Timestamp"])
        if not hmac.compare_digest(values["Signature"], expected):
            raise Refusal(1004, "Signature error. Please check whether Appkey and Secret "
                                "are correct.", 401)

    def endpoints(self) -> list[Endpoint]:
        table = [
            ("/user/getToken.json", "register", self._get_token, None),
            ("/user/refresh.json", "update_profile", self._refresh, None),
            ("/user/info.json", "get_profiles", self._info, None),
            ("/user/checkOnline.json", "get_profiles", self._check_online, None),
            ("/user/block.json", "block", self._block, None),
            ("/user/unblock.json", "block", self._unblock, None),
            ("/user/block/query.json", "block", self._blocked, None),
            ("/message/private/publish.json", "send", self._publish_private, "toUserId"),
            ("/message/system/publish.json", "send", self._publish_system, "toUserId"),
            ("/message/group/publish.json", "send_group", self._publish_group, "toGroupId"),
            ("/message/broadcast.json", "broadcast", self._broadcast, None),
            ("/message/recall.json", "recall", self._recall_message, None),
            ("/group/create.json", "create_group", self._create_group, None),
            ("/group/join.json", "add_members", self._join_group, None),
            ("/group/sync.json", "add_members", self._sync_groups, None),
            ("/group/refresh.json", "create_group", self._refresh_group, None),
            ("/group/quit.json", "remove_members", self._quit_group, None),
            ("/group/dismiss.json", "remove_group", self._dismiss_group, None),
            ("/group/user/query.json", "get_members", self._group_users, None),
            ("/friend/add.json", "import_friends", self._add_friend, None),
            ("/friend/get.json", "get_friends", self._get_friends, None),
        ]
        return [Endpoint(path, op, _posted(act), weight=_counting(by) if by else None)
                for path, op, act, by in table]

    # -- users ---------------------------------------------------------------------------

    def _user(self, form: Form, name: str = "userId") -> Record:
        user_id = _one(form, name, max_bytes=64, id_like=True)
        user = self.users.get(user_id)
        if user is None:
            raise Refusal(1002, f"{name}: {user_id!r} is not registered")
        return user

    def _get_token(self, form: Form, _: Call) -> dict[str, Any]:
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        name = _one(form, "name", max_bytes=128)
        portrait = _one(form, "portraitUri", required=False, max_bytes=1024)
        user = self.users.get(user_id)
        if user is None:
            if self.max_users is not None and len(self.users) >= self.max_users:
                raise Refusal(2007, f"The maximum number of registered users in the development "
                                    f"environment is {self.max_users}.", 403)
            user = self.users[user_id] = Record(name="", portrait="", blocked_until=0)
        else:
            self.duplicates["register"] += 1
        user["name"] = name  # what getToken is given overwrites what was stored
        if portrait:
            user["portrait"] = portrait
        token = secrets.token_urlsafe(32)
        self.tokens[user_id].append(token)
        return {"userId": user_id, "token": token}

    def _refresh(self, form: Form, _: Call) -> dict[str, Any]:
        name = _one(form, "name", required=False, max_bytes=128)
        portrait = _one(form, "portraitUri", required=False, max_bytes=1024)
        user = self._user(form)
        if name:
            user["name"] = name
        if portrait:
            user["portrait"] = portrait
        return {}

    def _info(self, form: Form, _: Call) -> dict[str, Any]:
        user = self.users.get(_one(form, "userId", max_bytes=64))
        if user is None:
            return {"userName": "", "userPortrait": "", "createTime": ""}
        return {"userName": user["name"], "userPortrait": user["portrait"],
                "createTime": "2024-01-01 00:00:00"}

    def _check_online(self, form: Form, _: Call) -> dict[str, Any]:
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        return {"status": "1" if user_id in self.online else "0"}

    def _block(self, form: Form, _: Call) -> dict[str, Any]:
        user_ids = _many(form, "userId", at_most=MAX_BLOCK_USERS)
        minute = _one(form, "minute")
        if not minute.isdigit() or not 1 <= int(minute) <= MAX_BLOCK_MINUTES:
            raise Refusal(1002, f"minute: {minute[:20]!r} is not 1 to {MAX_BLOCK_MINUTES}")
        until = int((self.clock() + int(minute) * 60) * 1000)
        for user_id in user_ids:
            if user_id in self.users:  # unknown ids are skipped, as the vendor does
                self.users[user_id]["blocked_until"] = until
        return {}

    def _unblock(self, form: Form, _: Call) -> dict[str, Any]:
        for user_id in _many(form, "userId", at_most=MAX_BLOCK_USERS):
            if user_id in self.users:
                self.users[user_id]["blocked_until"] = 0
        return {}

    def _blocked(self, form: Form, _: Call) -> dict[str, Any]:
        now = self.clock() * 1000
        return {"users": [{"userId": uid, "blockEndTime": user["blocked_until"]}
                          for uid, user in self.users.items()
                          if user.get("blocked_until", 0) > now]}

    # -- messages ------------------------------------------------------------------------

    @staticmethod
    def _message(form: Form) -> dict[str, Any]:
        """The delivered form of a message: {"text": …} for RC:TxtMsg, else {"custom": …}."""
        object_name = _one(form, "objectName")
        if len(object_name) > 32:
            raise Refusal(1005, "objectName length exceeds limit: at most 32 characters")
        content = _one(form, "content", max_bytes=MAX_CONTENT_BYTES)
        try:
            payload = json.loads(content)
        except ValueError:
            raise Refusal(1002, "content: not valid JSON") from None
        if object_name == TEXT_OBJECT_NAME:
            if not isinstance(payload, dict) or not isinstance(payload.get("content"), str):
                raise Refusal(1002, 'content: RC:TxtMsg needs {"content": "<text>"}')
            return {"object_name": object_name, "text": payload["content"]}
        return {"object_name": object_name, "custom": payload}

    def _deliver(self, user_id: str, entry: dict[str, Any], prefix: str = "MSG") -> str:
        uid = f"{prefix}-{next(self._uids):08d}"
        self.store.deliver(user_id, {**entry, "msg_id": uid})
        return uid

    def _publish_to_users(self, form: Form, at_most: int, **mark: Any) -> dict[str, Any]:
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        recipients = _many(form, "toUserId", at_most=at_most)
        entry = {"from": sender, **mark, **self._message(form)}
        uids = []
        for recipient in recipients:
            uid = self._deliver(recipient, entry)
            self.store_sent(uid, sender, recipient, False, entry["object_name"], form["content"],
                            source="Server", deliver=False)  # kept for recall and routing
            if not mark:  # system messages are not conversation messages
                self.route_api(uid)
            uids.append({"userId": recipient, "messageUID": uid})
        return {"messageUIDs": uids}

    def _publish_private(self, form: Form, _: Call) -> dict[str, Any]:
        return self._publish_to_users(form, MAX_PUBLISH_RECIPIENTS)

    def _publish_system(self, form: Form, _: Call) -> dict[str, Any]:
        return self._publish_to_users(form, MAX_SYSTEM_RECIPIENTS, system=True)

    def _publish_group(self, form: Form, _: Call) -> dict[str, Any]:
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        group_ids = _many(form, "toGroupId", at_most=MAX_GROUP_TARGETS)
        message = self._message(form)
        uids = []
        for group_id in group_ids:
            uid = f"GRP-{next(self._uids):08d}"
            for member in sorted(self.store.members(group_id)):
                self.store.deliver(member, {"from": sender, "group": group_id, **message,
                                            "msg_id": uid})
            self.store_sent(uid, sender, group_id, True, message["object_name"], form["content"],
                            source="Server", deliver=False)
            self.route_api(uid)
            uids.append({"groupId": group_id, "messageUID": uid})
        return {"messageUIDs": uids}

    def _broadcast(self, form: Form, _: Call) -> dict[str, Any]:
        if not self.broadcast_enabled:  # the vendor answers 1008 when broadcast is not enabled
            raise self.OVER_LIMIT
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        entry = {"from": sender, "broadcast": True, **self._message(form)}
        uid = f"BRD-{next(self._uids):08d}"
        for user_id in self.users:
            self.store.deliver(user_id, {**entry, "msg_id": uid})
        return {"id": uid}

    # -- groups --------------------------------------------------------------------------

    def _add_to_group(self, group_id: str, name: str, members: list[str]) -> int:
        """Adds the members; returns how many were members already."""
        group = self.groups.setdefault(group_id, Record(name=name, members=set()))
        if name:
            group["name"] = name
        already = len(group["members"].intersection(members))
        group["members"].update(members)
        return already

    def _create_group(self, form: Form, _: Call) -> dict[str, Any]:
        members = _many(form, "userId", at_most=MAX_GROUP_CALL_MEMBERS)
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        name = _one(form, "groupName")
        if group_id in self.groups:
            self.duplicates["create_group"] += 1
        # Creating an existing group adds the members and answers 200, like join.
        self._add_to_group(group_id, name, members)
        return {}

    def _join_group(self, form: Form, _: Call) -> dict[str, Any]:
        members = _many(form, "userId", at_most=MAX_GROUP_CALL_MEMBERS)
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        name = _one(form, "groupName", required=False)
        # RongCloud keeps no group record beyond its members: joining an
        # unknown id starts that group.
        self.duplicates["add_members"] += self._add_to_group(group_id, name, members)
        return {}

    def _sync_groups(self, form: Form, _: Call) -> dict[str, Any]:
        """The groups a user belongs to, as group[<id>]=<name> fields: the user
        joins each (membership elsewhere is left as it is)."""
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        groups = {}
        for key, name in form.items():
            match = GROUP_FIELD.fullmatch(key)
            if match:
                group_id = match.group(1)
                if not re.fullmatch(ID_PATTERN, group_id) or len(group_id.encode()) > 64:
                    raise Refusal(1002, f"group: {group_id[:80]!r} may only hold {ID_HINT}")
                groups[group_id] = name
        for group_id, name in groups.items():
            self._add_to_group(group_id, name, [user_id])
        return {}

    def _refresh_group(self, form: Form, _: Call) -> dict[str, Any]:
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        name = _one(form, "groupName", max_bytes=128)
        if group_id in self.groups:
            self.groups[group_id]["name"] = name
        return {}

    def _quit_group(self, form: Form, _: Call) -> dict[str, Any]:
        members = _many(form, "userId", at_most=MAX_GROUP_CALL_MEMBERS)
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        group = self.groups.get(group_id)
        if group is not None:
            group["members"].difference_update(members)
            if not group["members"]:  # a group nobody is left in is dismissed
                del self.groups[group_id]
        return {}

    def _dismiss_group(self, form: Form, _: Call) -> dict[str, Any]:
        _one(form, "userId", max_bytes=64, id_like=True)  # the operator
        self.groups.pop(_one(form, "groupId", max_bytes=64, id_like=True), None)
        return {}

    def _group_users(self, form: Form, _: Call) -> dict[str, Any]:
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        return {"id": group_id, "users": [{"id": m} for m in sorted(self.store.members(group_id))]}

    # -- friends -------------------------------------------------------------------------

    def _add_friend(self, form: Form, _: Call) -> dict[str, Any]:
        if not self.profile_hosting:
            raise Refusal(1009, "Service not enabled: the profile hosting service is required.", 430)
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        target_id = _one(form, "targetId", max_bytes=64, id_like=True)
        opt_type = _one(form, "optType", required=False) or "1"
        if opt_type not in ("1", "2"):
            raise Refusal(1002, f"optType: {opt_type!r} is not 1 or 2")
        if user_id == target_id:
            raise Refusal(1002, "targetId: cannot be the userId itself")
        if opt_type == "1":  # a request the other user must accept: nothing changes yet
            return {}
        if not self.store.befriend(user_id, target_id):  # friendship at RongCloud is mutual
            self.duplicates["import_friends"] += 1
        else:
            now = int(self.clock() * 1000)
            self.friended_at[user_id, target_id] = self.friended_at[target_id, user_id] = now
        return {}

    def _get_friends(self, form: Form, _: Call) -> dict[str, Any]:
        """A page of a user's friends, oldest first (`order` 1: newest first),
        with the `pageToken` of the next page ("" after the last)."""
        if not self.profile_hosting:
            raise Refusal(1009, "Service not enabled: the profile hosting service is required.", 430)
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        size = _one(form, "size", required=False) or "50"
        if not size.isdigit() or int(size) not in FRIEND_PAGE_SIZES:
            raise Refusal(1002, f"size: {size[:20]!r} is not 1 to {FRIEND_PAGE_SIZES[-1]}")
        order = _one(form, "order", required=False) or "0"
        if order not in ("0", "1"):
            raise Refusal(1002, f"order: {order[:20]!r} is not 0 or 1")
        token = _one(form, "pageToken", required=False)
        start = int(token[3:]) if token.startswith("pt-") and token[3:].isdigit() else None
        if token and start is None:
            raise Refusal(1002, "pageToken: not a token this server gave")
        added = {f: self.friended_at.get((user_id, f), 0) for f in self.store.friends.get(user_id, ())}
        friends = sorted(added, key=lambda f: (added[f], f), reverse=order == "1")
        start = start or 0
        page = friends[start:start + int(size)]
        after = start + len(page)
        return {"totalCount": len(friends), "pageToken": f"pt-{after}" if after < len(friends) else "",
                "friendList": [{"userId": f, "name": self.users.get(f, {}).get("name", ""),
                                "remarkName": "", "friendExtProfile": "",
                                "time": added[f]} for f in page]}

    # -- read-back for tests -------------------------------------------------------------

    def profile(self, user_id: str, record: Record) -> Profile:
        return Profile(user_id, record["name"], record["portrait"])
