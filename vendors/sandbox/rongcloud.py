"""An in-memory RongCloud IM Server API: the endpoints imshift uses, signed
and answered the way the vendor does.

Auth accepts what RongCloud's own SDKs send: the plain header names of the
guide or the RC- prefixed ones, in any case; nonces longer than the guide's 18
characters (server-sdk-go sends up to 19 digits); and timestamps in seconds or
milliseconds (server-sdk-go and the old Python SDK send seconds). No validity
window for the timestamp is documented, so none is enforced.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import secrets
from collections import defaultdict
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Profile
from ..rongcloud import (ID_HINT, ID_PATTERN, MAX_CONTENT_BYTES, MAX_GROUP_CALL_MEMBERS,
                         MAX_GROUP_TARGETS, MAX_PUBLISH_RECIPIENTS, TEXT_OBJECT_NAME,
                         RongCloudClient, RongCloudConfig, sign)
from .common import Sandbox

Form = dict[str, list[str]]


class Invalid(Exception):
    """A parameter the vendor refuses: its code and a message naming the field."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _reply(code: int, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "errorMessage": message}, status_code=status)


def _one(form: Form, name: str, *, required: bool = True, max_bytes: int | None = None,
         id_like: bool = False) -> str:
    values = form.get(name) or [""]
    value = values[0]
    if not value:
        if required:
            raise Invalid(1002, f"{name} parameter is required")
        return ""
    size = len(value.encode())
    if max_bytes is not None and size > max_bytes:
        raise Invalid(1005, f"{name} length exceeds limit: {size} bytes, at most {max_bytes}")
    if id_like and not re.fullmatch(ID_PATTERN, value):
        raise Invalid(1002, f"{name}: {value[:80]!r} may only hold {ID_HINT}")
    return value


def _many(form: Form, name: str, *, at_most: int) -> list[str]:
    values = form.get(name) or []
    if not values:
        raise Invalid(1002, f"{name} parameter is required")
    if len(values) > at_most:
        raise Invalid(1002, f"{name}: {len(values)} values, at most {at_most} per call")
    return [_one({name: [v]}, name, max_bytes=64, id_like=True) for v in values]


class RongCloudSandbox(Sandbox):
    vendor = "rongcloud"
    client_class = RongCloudClient

    def __init__(self, *, app_key: str = "demo-app-key", app_secret: str = "demo-secret",
                 max_users: int | None = None, broadcast_enabled: bool = True,
                 profile_hosting: bool = True, **kwargs: Any):
        self.app_key = app_key
        self._app_secret = app_secret
        self.max_users = max_users  # a development app key stops at 100 (code 2007)
        self.broadcast_enabled = broadcast_enabled
        self.profile_hosting = profile_hosting  # needed by the friend API
        self.users: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, list[str]] = defaultdict(list)  # every token issued, oldest first
        self.groups: dict[str, dict[str, Any]] = {}  # id -> {"name", "members": set}
        self._friends: dict[str, set[str]] = defaultdict(set)
        self._inboxes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._uids = itertools.count(1)
        super().__init__(**kwargs)

    # -- the vendor's replies ------------------------------------------------------------

    def server_error(self) -> Response:
        return _reply(1000, "Internal server error.", 500)

    def rate_limited(self, op: str) -> Response:
        return _reply(1008, "The call frequency exceeds the limit.", 429)

    def config(self, base_url: str, *, wrong_secret: bool = False) -> RongCloudConfig:
        secret = "not-" + self._app_secret if wrong_secret else self._app_secret
        return RongCloudConfig(self.app_key, secret, hosts=(base_url,))

    # -- auth, parsing, admission --------------------------------------------------------

    @staticmethod
    def _header(request: Request, name: str) -> str:
        return request.headers.get(name) or request.headers.get(f"RC-{name}") or ""

    def _auth_failure(self, request: Request) -> Response | None:
        app_key = self._header(request, "App-Key")
        if app_key != self.app_key:
            return _reply(1001, "App-Key: unknown app key; check the App Key and Secret.", 401)
        nonce = self._header(request, "Nonce")
        timestamp = self._header(request, "Timestamp")
        signature = self._header(request, "Signature")
        for name, value in (("Nonce", nonce), ("Timestamp", timestamp), ("Signature", signature)):
            if not value:
                return _reply(1004, f"Signature error: the {name} header is missing.", 401)
        if not timestamp.isdigit():
            return _reply(1004, "Signature error: Timestamp must be a number.", 401)
        if not hmac.compare_digest(signature, sign(self._app_secret, nonce, timestamp)):
            return _reply(1004, "Signature error. Please check whether Appkey and Secret "
                                "are correct.", 401)
        return None

    def _endpoint(self, op: str, act: Callable[[Form], Response], *,
                  weighed_by: str | None = None) -> Callable[[Request], Awaitable[Response]]:
        """Auth, then admission (rate limit, faults), then the vendor's checks and action."""
        async def handle(request: Request) -> Response:
            denied = self._auth_failure(request)
            if denied:
                return denied
            body = await request.body()
            form: Form = {}
            for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
                form.setdefault(key, []).append(value)
            # RongCloud counts a publish to N users (or N groups) as N messages.
            weight = max(1, len(form.get(weighed_by, []))) if weighed_by else 1
            refused = await self.admit(op, weight)
            if refused:
                return refused
            if not body:
                return _reply(1003, "No POST data.", 400)
            try:
                return act(form)
            except Invalid as bad:
                return _reply(bad.code, str(bad), 400)
        return handle

    def routes(self) -> list[Route]:
        endpoints = [
            ("/user/getToken.json", "register", self._get_token, None),
            ("/user/refresh.json", "update_profile", self._refresh, None),
            ("/user/info.json", "get_profiles", self._info, None),
            ("/message/private/publish.json", "send", self._publish_private, "toUserId"),
            ("/message/group/publish.json", "send_group", self._publish_group, "toGroupId"),
            ("/message/broadcast.json", "broadcast", self._broadcast, None),
            ("/group/create.json", "create_group", self._create_group, None),
            ("/group/join.json", "add_members", self._join_group, None),
            ("/friend/add.json", "import_friends", self._add_friend, None),
        ]
        return [Route(path, self._endpoint(op, act, weighed_by=weighed_by), methods=["POST"])
                for path, op, act, weighed_by in endpoints]

    # -- users ---------------------------------------------------------------------------

    def _get_token(self, form: Form) -> Response:
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        name = _one(form, "name", max_bytes=128)
        portrait = _one(form, "portraitUri", required=False, max_bytes=1024)
        user = self.users.get(user_id)
        if user is None:
            if self.max_users is not None and len(self.users) >= self.max_users:
                return _reply(2007, f"The maximum number of registered users in the development "
                                    f"environment is {self.max_users}.", 403)
            user = self.users[user_id] = {"name": "", "portrait": ""}
        else:
            self.duplicates["register"] += 1
        user["name"] = name  # what getToken is given overwrites what was stored
        if portrait:
            user["portrait"] = portrait
        token = secrets.token_urlsafe(32)
        self.tokens[user_id].append(token)
        return JSONResponse({"code": 200, "userId": user_id, "token": token})

    def _refresh(self, form: Form) -> Response:
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        name = _one(form, "name", required=False, max_bytes=128)
        portrait = _one(form, "portraitUri", required=False, max_bytes=1024)
        user = self.users.get(user_id)
        if user is None:
            raise Invalid(1002, f"userId: {user_id!r} is not registered")
        if name:
            user["name"] = name
        if portrait:
            user["portrait"] = portrait
        return JSONResponse({"code": 200})

    def _info(self, form: Form) -> Response:
        user = self.users.get(_one(form, "userId", max_bytes=64))
        if user is None:
            return JSONResponse({"code": 200, "userName": "", "userPortrait": "", "createTime": ""})
        return JSONResponse({"code": 200, "userName": user["name"],
                             "userPortrait": user["portrait"], "createTime": "2024-01-01 00:00:00"})

    # -- messages ------------------------------------------------------------------------

    @staticmethod
    def _message(form: Form) -> dict[str, Any]:
        """The delivered form of a message: {"text": …} for RC:TxtMsg, else {"custom": …}."""
        object_name = _one(form, "objectName")
        if len(object_name) > 32:
            raise Invalid(1005, "objectName length exceeds limit: at most 32 characters")
        content = _one(form, "content", max_bytes=MAX_CONTENT_BYTES)
        try:
            payload = json.loads(content)
        except ValueError:
            raise Invalid(1002, "content: not valid JSON") from None
        if object_name == TEXT_OBJECT_NAME:
            if not isinstance(payload, dict) or not isinstance(payload.get("content"), str):
                raise Invalid(1002, 'content: RC:TxtMsg needs {"content": "<text>"}')
            return {"object_name": object_name, "text": payload["content"]}
        return {"object_name": object_name, "custom": payload}

    def _deliver(self, user_id: str, entry: dict[str, Any]) -> str:
        uid = f"MSG-{next(self._uids):08d}"
        self._inboxes[user_id].append({**entry, "msg_id": uid})
        return uid

    def _publish_private(self, form: Form) -> Response:
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        recipients = _many(form, "toUserId", at_most=MAX_PUBLISH_RECIPIENTS)
        entry = {"from": sender, **self._message(form)}
        uids = [{"userId": r, "messageUID": self._deliver(r, entry)} for r in recipients]
        return JSONResponse({"code": 200, "messageUIDs": uids})

    def _publish_group(self, form: Form) -> Response:
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        group_ids = _many(form, "toGroupId", at_most=MAX_GROUP_TARGETS)
        message = self._message(form)
        uids = []
        for group_id in group_ids:
            uid = f"GRP-{next(self._uids):08d}"
            members = self.groups.get(group_id, {}).get("members", set())
            for member in sorted(members):
                self._inboxes[member].append({"from": sender, "group": group_id, **message,
                                              "msg_id": uid})
            uids.append({"groupId": group_id, "messageUID": uid})
        return JSONResponse({"code": 200, "messageUIDs": uids})

    def _broadcast(self, form: Form) -> Response:
        if not self.broadcast_enabled:  # what vendors.md records for a disabled service
            return self.rate_limited("broadcast")
        sender = _one(form, "fromUserId", max_bytes=64, id_like=True)
        entry = {"from": sender, "broadcast": True, **self._message(form)}
        uid = f"BRD-{next(self._uids):08d}"
        for user_id in self.users:
            self._inboxes[user_id].append({**entry, "msg_id": uid})
        return JSONResponse({"code": 200, "id": uid})

    # -- groups and friends --------------------------------------------------------------

    def _add_to_group(self, group_id: str, name: str, members: list[str]) -> int:
        """Adds the members; returns how many were members already."""
        group = self.groups.setdefault(group_id, {"name": name, "members": set()})
        if name:
            group["name"] = name
        already = len(group["members"].intersection(members))
        group["members"].update(members)
        return already

    def _create_group(self, form: Form) -> Response:
        members = _many(form, "userId", at_most=MAX_GROUP_CALL_MEMBERS)
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        name = _one(form, "groupName")
        if group_id in self.groups:
            self.duplicates["create_group"] += 1
        # Creating an existing group adds the members and answers 200, like join.
        self._add_to_group(group_id, name, members)
        return JSONResponse({"code": 200})

    def _join_group(self, form: Form) -> Response:
        members = _many(form, "userId", at_most=MAX_GROUP_CALL_MEMBERS)
        group_id = _one(form, "groupId", max_bytes=64, id_like=True)
        name = _one(form, "groupName", required=False)
        # RongCloud keeps no group record beyond its members: joining an
        # unknown id starts that group.
        self.duplicates["add_members"] += self._add_to_group(group_id, name, members)
        return JSONResponse({"code": 200})

    def _add_friend(self, form: Form) -> Response:
        if not self.profile_hosting:
            return _reply(1009, "Service not enabled: the profile hosting service is required.",
                          430)
        user_id = _one(form, "userId", max_bytes=64, id_like=True)
        target_id = _one(form, "targetId", max_bytes=64, id_like=True)
        opt_type = _one(form, "optType", required=False) or "1"
        if opt_type not in ("1", "2"):
            raise Invalid(1002, f"optType: {opt_type!r} is not 1 or 2")
        if user_id == target_id:
            raise Invalid(1002, "targetId: cannot be the userId itself")
        if opt_type == "1":  # a request the other user must accept: nothing changes yet
            return JSONResponse({"code": 200})
        if target_id in self._friends[user_id]:
            self.duplicates["import_friends"] += 1
        self._friends[user_id].add(target_id)  # friendship at RongCloud is mutual
        self._friends[target_id].add(user_id)
        return JSONResponse({"code": 200})

    # -- read-back for tests -------------------------------------------------------------

    def stored_profile(self, user_id: str) -> Profile | None:
        user = self.users.get(user_id)
        return Profile(user_id, user["name"], user["portrait"]) if user else None

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        return list(self._inboxes.get(user_id, []))

    def group_members(self, group_id: str) -> set[str] | None:
        group = self.groups.get(group_id)
        return set(group["members"]) if group else None

    def friends(self, user_id: str) -> set[str]:
        return set(self._friends.get(user_id, set()))
