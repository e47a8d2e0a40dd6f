"""OpenIM sandbox: the server API of one self-hosted deployment, v3 or v2.

v3 and v2 share paths with different bodies, so one sandbox speaks one
version, chosen by `api_version`. Replies follow the server's source:
v3 answers HTTP 200 `{errCode, errMsg, errDlt, data}` for every error; v2
mixes HTTP 400/500 with its own codes. Where the real server answers
oddly, so does the sandbox (a duplicate-key 500 when inviting a member
twice, an HTTP 500 for an existing user in v2, the refused token echoed in
v2's message), so the client is tested against what it will meet.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Operation, Profile
from ..openim import ADMIN_PLATFORM_ID, API_VERSIONS, CUSTOM, MAX_IDS_PER_CALL, TEXT, OpenIMClient, OpenIMConfig
from .common import Sandbox

ADMIN_TOKEN_GRACE = 300.0  # a new admin token leaves older ones this long (v3 main)
OWNER, ADMIN, MEMBER = 100, 60, 20  # v3 roleLevel


class Fail(Exception):
    """An error reply: the vendor's code, message, and HTTP status (v2)."""

    def __init__(self, code: int, message: str, status: int = 200):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Token:
    user_id: str
    platform: int
    expires_at: float


def legal_user_id(user_id: str) -> bool:
    """protocol datautil.IsLegalUserID: unicode letters (L*), decimal digits (Nd), '_'."""
    return all(ch == "_" or ch.isalpha() or ch.isdecimal() for ch in user_id)


def _repeated(ids: list[str]) -> bool:
    return len(set(ids)) != len(ids)


class OpenIMSandbox(Sandbox):
    vendor = "openim"
    client_class = OpenIMClient

    def __init__(self, *, api_version: str = "v3", secret: str = "openIM123", admin_user_id: str = "imAdmin",
                 token_ttl: float = 90 * 86400, friend_verify: bool = False, **kwargs: Any):
        if api_version not in API_VERSIONS:
            raise ValueError(f"api_version: one of {', '.join(API_VERSIONS)}")
        self.api_version = api_version
        self.v3 = api_version == "v3"
        self.secret = secret
        self.admin_user_id = admin_user_id
        self.token_ttl = token_ttl  # the server's tokenPolicy.expire (90 days)
        self.friend_verify = friend_verify  # the server's friendVerify: only friends may message
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, Token] = {}
        self.groups: dict[str, dict[str, Any]] = {}  # id -> {"groupName", "ownerUserID", "members": {uid: role}}
        self._friends: dict[str, set[str]] = defaultdict(set)
        self._inboxes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.operation_ids: list[str] = []  # as received, to check they are fresh
        super().__init__(**kwargs)
        self._add_user({"userID": admin_user_id, "nickname": "superAdmin"})  # the server creates its admins

    # -- wiring --------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        table = self._v3_routes() if self.v3 else self._v2_routes()
        return [Route(path, self._endpoint(path, op, handler), methods=["POST"])
                for path, (op, handler) in table.items()]

    def config(self, base_url: str, *, wrong_secret: bool = False) -> OpenIMConfig:
        secret = "wrong-" + self.secret[:26] if wrong_secret else self.secret
        return OpenIMConfig(secret=secret, base_url=base_url, admin_user_id=self.admin_user_id,
                            api_version=self.api_version)

    def _endpoint(self, path: str, op: str | Callable[[dict[str, Any]], str],
                  handler: Callable[[dict[str, Any], str | None], Awaitable[Any]]):
        async def endpoint(request: Request) -> Response:
            try:
                body, who = await (self._v3_auth if self.v3 else self._v2_auth)(request, path)
                refused = await self.admit(op if isinstance(op, str) else op(body))
                if refused is not None:
                    return refused
                return self._reply(await handler(body, who))
            except Fail as fail:
                return self._error(fail)
        return endpoint

    def _reply(self, data: Any) -> Response:
        if self.v3:
            return JSONResponse({"errCode": 0, "errMsg": "", "errDlt": "", "data": data})
        return JSONResponse({"errCode": 0, "errMsg": "", "data": data})

    def _error(self, fail: Fail) -> Response:
        if self.v3:  # every v3 error is HTTP 200
            return JSONResponse({"errCode": fail.code, "errMsg": fail.message, "errDlt": ""})
        body = {"errCode": fail.code, "errMsg": fail.message}
        if isinstance(fail, _V2Partial):
            body["data"] = fail.data
        return JSONResponse(body, status_code=fail.status)

    def server_error(self) -> Response:
        if self.v3:
            return JSONResponse({"errCode": 500, "errMsg": "ServerInternalError", "errDlt": "injected fault"})
        return JSONResponse({"errCode": 500, "errMsg": "call  rpc server failed"}, status_code=500)

    def rate_limited(self, op: str) -> Response:
        """The optional BBR limiter: HTTP 429 with Retry-After."""
        return JSONResponse({"errCode": 429, "errMsg": "too many requests, please try again later", "errDlt": ""},
                            status_code=429, headers={"Retry-After": "1"})

    async def _json(self, request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    # -- tokens --------------------------------------------------------------------------

    def _issue(self, user_id: str, platform: int) -> tuple[str, Token]:
        now = self.clock()
        if platform == ADMIN_PLATFORM_ID:
            for old in self.tokens.values():  # older admin tokens keep only a grace period
                if old.user_id == user_id and old.platform == platform:
                    old.expires_at = min(old.expires_at, now + ADMIN_TOKEN_GRACE)
        token = Token(user_id, platform, now + self.token_ttl)
        value = "sbx." + secrets.token_urlsafe(24)
        self.tokens[value] = token
        return value, token

    def _parse_token(self, value: str) -> tuple[Token | None, int, str]:
        """The token, or None with the v3 code and v2 message saying why."""
        token = self.tokens.get(value)
        if token is None:
            return None, 1503, "that's not even a token"
        if self.clock() >= token.expires_at:
            return None, 1501, "token is timed out, please log in again"
        return token, 0, ""

    def token_owner(self, value: str) -> tuple[str, int] | None:
        """(user id, platform) of a live token: lets tests check issued tokens."""
        token, _, _ = self._parse_token(value)
        return (token.user_id, token.platform) if token else None

    def _is_admin(self, who: str | None) -> bool:
        return who == self.admin_user_id

    # -- state shared by both versions ---------------------------------------------------

    def _add_user(self, user: dict[str, Any]) -> None:
        fields = {"nickname": "", "faceURL": "", "ex": "", "gender": 0, "phoneNumber": "", "birth": 0, "email": ""}
        fields.update({k: v for k, v in user.items() if k in fields})
        self.users[user["userID"]] = {"userID": user["userID"], **fields, "createTime": int(self.clock() * 1000)}

    def _befriend(self, owner: str, friend: str) -> bool:
        """Make the pair friends both ways; False when they already were."""
        if friend in self._friends[owner]:
            self.duplicates[Operation.IMPORT_FRIENDS.value] += 1
            return False
        self._friends[owner].add(friend)
        self._friends[friend].add(owner)
        return True

    def _deliver(self, sender: str, session: str, target: str, content: dict[str, Any]) -> dict[str, Any]:
        """Deliver one message the way the msg service verifies it (verify.go)."""
        if session == "single":
            if not self._is_admin(sender):
                if sender not in self.users:
                    raise Fail(1004, "RecordNotFoundError: sender not found")
                if self.friend_verify and target not in self._friends[sender]:
                    raise Fail(1303, "NotPeersFriendError")
            receivers = [target]
        else:
            group = self.groups.get(target)
            if group is None:
                raise Fail(1004, "RecordNotFoundError: group not found")
            if not self._is_admin(sender) and sender not in group["members"]:
                raise Fail(1203, "NotInGroupYetError")
            receivers = [m for m in group["members"] if m != sender]
        item = {"from": sender, "session": session, **content}
        if session == "group":
            item["group_id"] = target
        for receiver in receivers:
            self._inboxes[receiver].append(dict(item))
        return {"serverMsgID": uuid.uuid4().hex, "clientMsgID": uuid.uuid4().hex,
                "sendTime": int(self.clock() * 1000)}

    def _content(self, content_type: Any, content: Any, text_key: str) -> dict[str, Any]:
        """Decode the content as the API does: text or custom; None when a required key is missing."""
        if not isinstance(content, dict):
            return {}
        if content_type == TEXT:
            text = content.get(text_key)
            return {"text": str(text)} if text else {}
        if content_type == CUSTOM:
            data = content.get("data")
            if not data:
                return {}
            try:
                return {"custom": json.loads(data)}
            except (TypeError, ValueError):
                return {"custom": data}
        raise Fail(1001, "ArgsError: unsupported content type", 400)

    def _all_user_ids(self) -> list[str]:
        return list(self.users)

    # -- read-back -----------------------------------------------------------------------

    def stored_profile(self, user_id: str) -> Profile | None:
        user = self.users.get(user_id)
        if user is None:
            return None
        keys = ("ex",) if self.v3 else ("ex", "gender", "phoneNumber", "birth", "email")
        extra = {k: str(user[k]) for k in keys if user[k] not in ("", 0)}
        return Profile(user_id=user_id, name=user["nickname"], avatar=user["faceURL"], extra=extra)

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        return [dict(m) for m in self._inboxes.get(user_id, [])]

    def group_members(self, group_id: str) -> set[str] | None:
        group = self.groups.get(group_id)
        return set(group["members"]) if group else None

    def friends(self, user_id: str) -> set[str]:
        return set(self._friends.get(user_id, ()))

    # == v3 ==============================================================================

    def _v3_routes(self) -> dict[str, tuple[Any, Any]]:
        return {
            "/auth/get_admin_token": ("auth", self._v3_admin_token),
            "/auth/get_user_token": (Operation.ISSUE_TOKEN.value, self._v3_user_token),
            "/user/user_register": (Operation.REGISTER.value, self._v3_register),
            "/user/update_user_info_ex": (Operation.UPDATE_PROFILE.value, self._v3_update),
            "/user/get_users_info": (Operation.GET_PROFILES.value, self._v3_users_info),
            "/user/get_all_users_uid": (Operation.LIST_USERS.value, self._v3_all_users),
            "/friend/import_friend": (Operation.IMPORT_FRIENDS.value, self._v3_import_friend),
            "/group/create_group": (Operation.CREATE_GROUP.value, self._v3_create_group),
            "/group/invite_user_to_group": (Operation.ADD_MEMBERS.value, self._v3_invite),
            "/group/get_group_members_info": (Operation.ADD_MEMBERS.value, self._v3_members_info),
            "/msg/send_msg": (Operation.SEND.value, self._v3_send_msg),
            "/msg/batch_send_msg": (self._batch_op, self._v3_batch_send),
        }

    @staticmethod
    def _batch_op(body: dict[str, Any]) -> str:
        return Operation.BROADCAST.value if body.get("isSendAll") else Operation.SEND.value

    async def _v3_auth(self, request: Request, path: str) -> tuple[dict[str, Any], str | None]:
        """operationID header, then the token header (except on the whitelist),
        then the secret for get_admin_token. Returns (body, token's user)."""
        operation_id = request.headers.get("operationID")
        if not operation_id:
            raise Fail(1001, "ArgsError: header must have operationID")
        self.operation_ids.append(operation_id)
        who = None
        if path != "/auth/get_admin_token":
            value = request.headers.get("token")
            if not value:
                raise Fail(1001, "ArgsError: header must have token")
            token, code, message = self._parse_token(value)
            if token is None:
                raise Fail(code, f"TokenError: {message}")
            who = token.user_id
        body = await self._json(request)
        if body is None:
            raise Fail(1001, "ArgsError: the body is not a JSON object")
        if path == "/auth/get_admin_token":
            if body.get("secret") != self.secret:
                raise Fail(1002, "NoPermissionError: secret invalid")
            if body.get("userID") != self.admin_user_id:
                raise Fail(1001, "ArgsError: userID is error.")
        return body, who

    def _need_admin(self, who: str | None, message: str = "NoPermissionError: only app manager") -> None:
        if not self._is_admin(who):
            raise Fail(1002, message)

    async def _v3_admin_token(self, body: dict[str, Any], who: str | None) -> Any:
        value, token = self._issue(self.admin_user_id, ADMIN_PLATFORM_ID)
        return {"token": value, "expireTimeSeconds": int(self.token_ttl)}

    async def _v3_user_token(self, body: dict[str, Any], who: str | None) -> Any:
        self._need_admin(who)
        platform, user_id = body.get("platformID"), str(body.get("userID") or "")
        if platform == ADMIN_PLATFORM_ID:
            raise Fail(1002, "NoPermissionError: platformID invalid. platformID must not be adminPlatformID")
        if not isinstance(platform, int) or not 1 <= platform <= 11:
            raise Fail(1001, "ArgsError: platformID is invalid")
        if user_id == self.admin_user_id:
            raise Fail(1002, "NoPermissionError: don't get Admin token")
        if user_id not in self.users:
            raise Fail(1004, "RecordNotFoundError: userID not found")
        value, token = self._issue(user_id, platform)
        return {"token": value, "expireTimeSeconds": int(self.token_ttl)}

    async def _v3_register(self, body: dict[str, Any], who: str | None) -> Any:
        users = body.get("users")
        if not isinstance(users, list) or not users or not all(isinstance(u, dict) for u in users):
            raise Fail(1001, "ArgsError: users is empty")
        for i, user in enumerate(users):
            if not legal_user_id(str(user.get("userID", ""))):
                raise Fail(1001, f"ArgsError: users[{i}].userID is illegal: letters, digits and _ only")
        for i, user in enumerate(users):
            if not user.get("nickname"):
                raise Fail(1001, f"ArgsError: users[{i}].nickname: user name is empty")
        self._need_admin(who)
        ids = [str(u.get("userID", "")) for u in users]
        if _repeated(ids):
            raise Fail(1001, "ArgsError: userID repeated")
        if "" in ids:
            raise Fail(1001, "ArgsError: userID is empty")
        existing = [i for i in ids if i in self.users]
        if existing:
            self.duplicates[Operation.REGISTER.value] += len(existing)
            raise Fail(1102, "RegisteredAlreadyError: userID registered already")
        for user in users:
            self._add_user({k: str(user.get(k) or "") for k in ("userID", "nickname", "faceURL", "ex")})
        return None

    async def _v3_update(self, body: dict[str, Any], who: str | None) -> Any:
        info = body.get("userInfo")
        if not isinstance(info, dict):
            raise Fail(1001, "ArgsError: userInfo is empty")
        user_id = str(info.get("userID") or "")
        if not user_id:
            raise Fail(1001, "ArgsError: userInfo.userID is empty")
        if not self._is_admin(who) and who != user_id:
            raise Fail(1002, "NoPermissionError")
        user = self.users.get(user_id)
        if user is None:
            raise Fail(1004, "RecordNotFoundError: record not found")
        for key in ("nickname", "faceURL", "ex"):
            if info.get(key) is not None:  # absent wrapper fields are left as stored
                user[key] = str(info[key])
        return None

    def _public_v3(self, user: dict[str, Any]) -> dict[str, Any]:
        return {k: user[k] for k in ("userID", "nickname", "faceURL", "ex", "createTime")} | {
            "appMangerLevel": 0, "globalRecvMsgOpt": 0}

    async def _v3_users_info(self, body: dict[str, Any], who: str | None) -> Any:
        ids = body.get("userIDs")
        if not isinstance(ids, list):
            raise Fail(1001, "ArgsError: userIDs is empty")
        return {"usersInfo": [self._public_v3(self.users[i]) for i in dict.fromkeys(ids) if i in self.users]}

    async def _v3_all_users(self, body: dict[str, Any], who: str | None) -> Any:
        page = body.get("pagination")
        if not isinstance(page, dict):
            raise Fail(1001, "ArgsError: pagination is empty")
        number, show = page.get("pageNumber"), page.get("showNumber") or 0
        if not isinstance(number, int) or number < 1:
            raise Fail(1001, "ArgsError: pagination.pageNumber is invalid")
        ids = self._all_user_ids()
        part = ids[(number - 1) * show:number * show] if show > 0 else ids
        return {"total": len(ids), "userIDs": part}

    async def _v3_import_friend(self, body: dict[str, Any], who: str | None) -> Any:
        owner, friends = str(body.get("ownerUserID") or ""), body.get("friendUserIDs")
        if not owner:
            raise Fail(1001, "ArgsError: ownerUserID is empty")
        if not isinstance(friends, list):
            raise Fail(1001, "ArgsError: friendUserIDs is empty")
        if len(friends) > MAX_IDS_PER_CALL:
            raise Fail(1001, "ArgsError: too many friendUserIDs, need to be less than 1000")
        self._need_admin(who)
        if any(u not in self.users for u in [owner, *friends]):
            raise Fail(1004, "RecordNotFoundError: user not found")
        if owner in friends:
            raise Fail(1301, "CanNotAddYourselfError: can not add yourself")
        if _repeated(friends):
            raise Fail(1001, "ArgsError: friend userID repeated")
        for friend in friends:
            self._befriend(owner, friend)
        return None

    async def _v3_create_group(self, body: dict[str, Any], who: str | None) -> Any:
        info, owner = body.get("groupInfo"), str(body.get("ownerUserID") or "")
        members, admins = body.get("memberUserIDs") or [], body.get("adminUserIDs") or []
        if not isinstance(info, dict):
            raise Fail(1001, "ArgsError: groupInfo is empty")
        if info.get("groupType") != 2:
            raise Fail(1001, "ArgsError: groupInfo.groupType: only 2 (working group) is supported")
        if not owner:
            raise Fail(1001, "ArgsError: ownerUserID: no group owner")
        if len(members) > MAX_IDS_PER_CALL:
            raise Fail(1001, "ArgsError: too many memberUserIDs, need to be less than 1000")
        if not self._is_admin(who) and who != owner:
            raise Fail(1002, "NoPermissionError")
        everyone = [*members, *admins, owner]
        if _repeated(everyone):
            raise Fail(1001, "ArgsError: group member repeated")
        if any(u not in self.users for u in everyone):
            raise Fail(1101, "UserIDNotFoundError: user not found")
        group_id = str(info.get("groupID") or "")
        if group_id in self.groups:
            self.duplicates[Operation.CREATE_GROUP.value] += 1
            raise Fail(1202, f"GroupIDExisted: group id existed {group_id}")
        group_id = group_id or str(int(uuid.uuid4().hex[:8], 16))
        roles = {owner: OWNER} | {a: ADMIN for a in admins} | {m: MEMBER for m in members}
        self.groups[group_id] = {"groupName": str(info.get("groupName") or ""), "ownerUserID": owner,
                                 "members": roles}
        return {"groupInfo": {"groupID": group_id, "groupName": self.groups[group_id]["groupName"],
                              "ownerUserID": owner, "memberCount": len(roles), "groupType": 2}}

    async def _v3_invite(self, body: dict[str, Any], who: str | None) -> Any:
        group_id, invited = str(body.get("groupID") or ""), body.get("invitedUserIDs")
        if not group_id:
            raise Fail(1001, "ArgsError: groupID is empty")
        if not isinstance(invited, list):
            raise Fail(1001, "ArgsError: invitedUserIDs is empty")
        if len(invited) > MAX_IDS_PER_CALL:
            raise Fail(1001, "ArgsError: too many invitedUserIDs, need to be less than 1000")
        if not invited:
            raise Fail(1001, "ArgsError: user empty")
        if _repeated(invited):
            raise Fail(1001, "ArgsError: userID duplicate")
        group = self.groups.get(group_id)
        if group is None:
            raise Fail(1004, "RecordNotFoundError: record not found")
        if not self._is_admin(who) and who not in group["members"]:
            raise Fail(1203, "NotInGroupYetError")
        if any(u not in self.users for u in invited):
            raise Fail(1004, "RecordNotFoundError: user not found")
        for user_id in invited:  # an ordered insert: stops at the first member already there
            if user_id in group["members"]:
                self.duplicates[Operation.ADD_MEMBERS.value] += 1
                raise Fail(500, "ServerInternalError: mongo insert many: E11000 duplicate key error "
                                "index: group_id_1_user_id_1")
            group["members"][user_id] = MEMBER
        return None

    async def _v3_members_info(self, body: dict[str, Any], who: str | None) -> Any:
        group_id, ids = str(body.get("groupID") or ""), body.get("userIDs")
        if not isinstance(ids, list) or not ids:
            raise Fail(1001, "ArgsError: userIDs empty")
        if not group_id:
            raise Fail(1001, "ArgsError: groupID empty")
        members = self.groups.get(group_id, {}).get("members", {})
        if not self._is_admin(who) and who not in members:
            raise Fail(1203, "NotInGroupYetError")
        return {"members": [{"groupID": group_id, "userID": u, "roleLevel": members[u]}
                            for u in dict.fromkeys(ids) if u in members]}

    def _v3_message(self, body: dict[str, Any], who: str | None) -> tuple[str, dict[str, Any]]:
        """Bind and check the fields every send carries (apistruct.SendMsg)."""
        for key in ("sendID", "content", "contentType", "sessionType"):
            if not body.get(key):
                raise Fail(1001, f"ArgsError: {key}: required")
        if body["sessionType"] in (2, 3) and not body.get("groupID"):
            raise Fail(1001, "ArgsError: groupID: required when sessionType is 2 or 3")
        self._need_admin(who, "NoPermissionError: only app manager can send message")
        content = self._content(body["contentType"], body["content"], "content")
        if not content:  # the API's validator error is not a coded error: it surfaces as 500
            raise Fail(500, "ServerInternalError: validation error: content")
        return str(body["sendID"]), content

    def _v3_session(self, session_type: Any) -> str:
        if session_type in (1, 4):
            return "single"
        if session_type == 3:
            return "group"
        raise Fail(1001, f"ArgsError: sessionType {session_type} is not supported")

    async def _v3_send_msg(self, body: dict[str, Any], who: str | None) -> Any:
        if body.get("sessionType") in (1, 4) and not body.get("recvID"):
            raise Fail(1001, "ArgsError: recvID: required when sessionType is 1 or 4")
        sender, content = self._v3_message(body, who)
        session = self._v3_session(body["sessionType"])
        target = str(body["recvID"] if session == "single" else body["groupID"])
        return self._deliver(sender, session, target, content)

    async def _v3_batch_send(self, body: dict[str, Any], who: str | None) -> Any:
        if not isinstance(body.get("recvIDs"), list):
            raise Fail(1001, "ArgsError: recvIDs: required")
        sender, content = self._v3_message(body, who)
        session = self._v3_session(body["sessionType"])
        receivers = self._all_user_ids() if body.get("isSendAll") else [str(r) for r in body["recvIDs"]]
        results, failed = [], []
        for receiver in receivers:  # one SendMsg per receiver; a failure only names the receiver
            try:
                results.append({**self._deliver(sender, session, receiver, content), "recvID": receiver})
            except Fail:
                failed.append(receiver)
        return {"results": results, "failedUserIDs": failed}

    # == v2 ==============================================================================

    def _v2_routes(self) -> dict[str, tuple[Any, Any]]:
        return {
            "/auth/user_register": (Operation.REGISTER.value, self._v2_register),
            "/auth/user_token": (self._v2_token_op, self._v2_user_token),  # the admin's token or a user's
            "/user/update_user_info": (Operation.UPDATE_PROFILE.value, self._v2_update),
            "/user/get_users_info": (Operation.GET_PROFILES.value, self._v2_users_info),
            "/user/get_all_users_uid": (Operation.LIST_USERS.value, self._v2_all_users),
            "/friend/import_friend": (Operation.IMPORT_FRIENDS.value, self._v2_import_friend),
            "/group/create_group": (Operation.CREATE_GROUP.value, self._v2_create_group),
            "/group/get_groups_info": (Operation.CREATE_GROUP.value, self._v2_groups_info),
            "/group/invite_user_to_group": (Operation.ADD_MEMBERS.value, self._v2_invite),
            "/group/get_group_members_info": (Operation.ADD_MEMBERS.value, self._v2_members_info),
            "/msg/manage_send_msg": (Operation.SEND.value, self._v2_send_msg),
            "/msg/batch_send_msg": (self._batch_op, self._v2_batch_send),
        }

    def _v2_token_op(self, body: dict[str, Any]) -> str:
        return "auth" if body.get("userID") == self.admin_user_id else Operation.ISSUE_TOKEN.value

    @staticmethod
    def _bind(body: dict[str, Any], **rules: str) -> None:
        """gin binding: `required`, `max=N` (characters), `min=N,max=N` (numbers), `oneof=...`, `uint`."""
        for key, rule in rules.items():
            value = body.get(key)
            for tag in rule.split(","):
                name, _, arg = tag.partition("=")
                bad = ((name == "required" and not value) or
                       (name == "list" and not isinstance(value, list)) or
                       (name == "max" and isinstance(value, str) and len(value) > int(arg)) or
                       (name == "range" and not (isinstance(value, int) and
                                                 int(arg.split("-")[0]) <= value <= int(arg.split("-")[1]))) or
                       (name == "oneof" and value not in (None, *map(int, arg.split("|")))) or
                       (name == "uint" and value is not None and not (isinstance(value, int) and
                                                                      0 <= value < 2 ** 32)))
                if bad:
                    raise Fail(400, f"Key: '{key}' Error:Field validation for '{key}' failed on the "
                                    f"'{name}' tag", 400)

    def _bind_user(self, body: dict[str, Any]) -> None:
        self._bind(body, userID="required,max=64", nickname="max=64", faceURL="max=1024", gender="oneof=0|1|2",
                   phoneNumber="max=32", birth="uint", email="max=64", ex="max=1024")

    async def _v2_auth(self, request: Request, path: str) -> tuple[dict[str, Any], str | None]:
        """operationID in the body; the secret on /auth/, a token header elsewhere."""
        body = await self._json(request)
        if body is None:
            raise Fail(400, "BindJSON failed", 400)
        self._bind(body, operationID="required")
        self.operation_ids.append(str(body["operationID"]))
        if path.startswith("/auth/"):
            self._bind(body, secret="required,max=32")
            if body["secret"] != self.secret:
                raise Fail(401, " params.Secret != config.Config.Secret ", 400)
            return body, None
        value = request.headers.get("token") or ""
        token, _, message = self._parse_token(value)
        if token is None:  # v2.3 echoes the token in its message
            if path.startswith("/msg/"):
                raise Fail(400, "parse token failed", 400)
            raise Fail(500, f"GetUserIDFromToken failed {message} token:{value}", 400)
        return body, token.user_id

    def _v2_need_admin(self, who: str | None) -> None:
        if not self._is_admin(who):
            raise Fail(801, "access denied")

    def _v2_token_data(self, user_id: str, platform: int) -> dict[str, Any]:
        value, token = self._issue(user_id, platform)
        return {"userID": user_id, "token": value, "expiredTime": int(token.expires_at)}

    async def _v2_register(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, platform="range=1-7")
        self._bind_user(body)
        user_id = str(body["userID"])
        if user_id in self.users:  # the rpc's DB error, answered as HTTP 500
            self.duplicates[Operation.REGISTER.value] += 1
            raise Fail(500, f"UserRegister failed user {user_id} exists", 500)
        self._add_user(body)
        return self._v2_token_data(user_id, body["platform"])

    async def _v2_user_token(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, platform="range=1-9", userID="required,max=64")
        return self._v2_token_data(str(body["userID"]), body["platform"])

    async def _v2_update(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind_user(body)
        user_id = str(body["userID"])
        if not self._is_admin(who) and who != user_id:
            raise Fail(801, "access denied")
        user = self.users.get(user_id)
        if user is not None:  # an unknown user is silently not updated
            user.update({k: v for k, v in body.items() if k in user and k not in ("userID", "createTime") and v})
        return None

    async def _v2_users_info(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, userIDList="list")
        return [{k: self.users[u][k] for k in ("userID", "nickname", "faceURL", "gender", "ex")}
                for u in dict.fromkeys(body["userIDList"]) if u in self.users]

    async def _v2_all_users(self, body: dict[str, Any], who: str | None) -> Any:
        self._v2_need_admin(who)
        return self._all_user_ids()

    async def _v2_import_friend(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, fromUserID="required", friendUserIDList="list")
        self._v2_need_admin(who)
        owner, friends = str(body["fromUserID"]), body["friendUserIDList"]
        if owner not in self.users:
            raise _V2Partial(802, "this user not exists,cant not add friend", [{"userID": f, "result": -1}
                                                                               for f in friends])
        results = []
        for friend in friends:
            ok = friend in self.users and friend != owner
            if ok:
                self._befriend(owner, friend)
            results.append({"userID": friend, "result": 0 if ok else -1})
        return results

    async def _v2_create_group(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, memberList="list")
        self._v2_need_admin(who)
        group_id, owner = str(body.get("groupID") or ""), str(body.get("ownerUserID") or "")
        if group_id in self.groups:
            self.duplicates[Operation.CREATE_GROUP.value] += 1
            raise Fail(802, "db failed")
        if owner not in self.users:
            raise Fail(802, "db failed")
        group_id = group_id or str(int(uuid.uuid4().hex[:8], 16))
        roles = {owner: 2}  # v2 roleLevel: owner 2, member 1
        roles.update({m["userID"]: 1 for m in body["memberList"]
                      if isinstance(m, dict) and m.get("userID") in self.users and m.get("userID") != owner})
        self.groups[group_id] = {"groupName": str(body.get("groupName") or ""), "ownerUserID": owner,
                                 "members": roles}
        return {"groupID": group_id, "groupName": self.groups[group_id]["groupName"], "ownerUserID": owner,
                "memberCount": len(roles)}

    async def _v2_groups_info(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, groupIDList="list")
        return [{"groupID": g, "groupName": self.groups[g]["groupName"],
                 "ownerUserID": self.groups[g]["ownerUserID"]}
                for g in body["groupIDList"] if g in self.groups]

    async def _v2_invite(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, groupID="required", invitedUserIDList="list")
        group = self.groups.get(str(body["groupID"]))
        if group is None:
            raise Fail(802, "db failed: group not found")
        if not self._is_admin(who) and who not in group["members"]:
            raise Fail(801, "access denied")
        results = []
        for user_id in body["invitedUserIDList"]:
            if user_id in group["members"]:
                self.duplicates[Operation.ADD_MEMBERS.value] += 1
            ok = user_id in self.users and user_id not in group["members"]
            if ok:
                group["members"][user_id] = 1
            results.append({"userID": user_id, "result": 0 if ok else -1})
        return results

    async def _v2_members_info(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, groupID="required", memberList="list")
        members = self.groups.get(str(body["groupID"]), {}).get("members", {})
        return [{"groupID": body["groupID"], "userID": u, "roleLevel": members[u]}
                for u in dict.fromkeys(body["memberList"]) if u in members]

    def _v2_message(self, body: dict[str, Any], who: str | None) -> tuple[str, dict[str, Any]]:
        self._bind(body, sendID="required", content="required", contentType="required", sessionType="required")
        if body["contentType"] not in (TEXT, CUSTOM):
            raise Fail(404, "contentType err", 400)
        content = self._content(body["contentType"], body["content"], "text")
        if not content:
            raise Fail(403, "Key: 'content' Error:Field validation failed on the 'required' tag", 400)
        if not self._is_admin(who):
            raise Fail(400, "not authorized", 400)
        return str(body["sendID"]), content

    def _v2_session(self, session_type: Any) -> str:
        if session_type == 1:
            return "single"
        if session_type in (2, 3):
            return "group"
        raise Fail(400, "sessionType err", 400)

    async def _v2_send_msg(self, body: dict[str, Any], who: str | None) -> Any:
        sender, content = self._v2_message(body, who)
        session = self._v2_session(body["sessionType"])
        target = str(body.get("recvID") if session == "single" else body.get("groupID") or "")
        if not target:
            raise Fail(405, f"{'recvID' if session == 'single' else 'groupID'} is a null string", 400)
        return self._deliver(sender, session, target, content)

    async def _v2_batch_send(self, body: dict[str, Any], who: str | None) -> Any:
        sender, content = self._v2_message(body, who)
        receivers = self._all_user_ids() if body.get("isSendAll") else list(body.get("recvIDList") or [])
        results, failed = [], []
        for receiver in receivers:
            try:
                results.append({**self._deliver(sender, "single", str(receiver), content), "recvID": receiver})
            except Fail:
                failed.append(receiver)
        return {"resultList": results, "FailedIDList": failed}


class _V2Partial(Fail):
    """A v2 error that still carries per-user data (import_friend)."""

    def __init__(self, code: int, message: str, data: Any):
        super().__init__(code, message)
        self.data = data
