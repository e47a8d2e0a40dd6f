"""OpenIM v2 endpoints (the early API): `operationID` is a body field, the
secret travels in the body of /auth/ calls, and errors mix HTTP 400/500
with v2's own codes, as the v2 server answers.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from starlette.requests import Request

from ..vocabulary import Operation
from ..openim import CUSTOM, TEXT
from .common import Endpoint, Op, Refusal
from .openim import Fail, OpenIMSandbox
from .openim_v3 import GET_FRIENDS, GET_MEMBERS, as_handler, batch_op
from .store import Record


class OpenIMv2Sandbox(OpenIMSandbox):
    api_version = "v2"
    SERVER_ERROR = Refusal(500, "call  rpc server failed", 500)
    OVER_LIMIT = Refusal(429, "too many requests, please try again later", 429,
                         headers={"Retry-After": "1"}, errDlt="")

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"errCode": code, "errMsg": message}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"errCode": 0, "errMsg": "", "data": data}

    def unreadable(self, raw: bytes) -> Refusal:
        return Fail(400, "BindJSON failed", 400)

    def endpoints(self) -> list[Endpoint]:
        table: dict[str, tuple[Op, Callable[..., Any]]] = {
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
            "/group/get_group_all_member_list": (GET_MEMBERS, self._v2_all_members),
            "/friend/get_friend_list": (GET_FRIENDS, self._v2_friend_list),
            "/msg/batch_send_msg": (batch_op, self._v2_batch_send),
        }
        return [Endpoint(path, op, as_handler(act), body="json") for path, (op, act) in table.items()]

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

    async def authenticate(self, request: Request) -> str | None:
        """operationID in the body; the secret on /auth/, a token header elsewhere."""
        path = request.url.path
        body = await self.params(request)
        self._bind(body, operationID="required")
        self.operation_ids.append(str(body["operationID"]))
        if path.startswith("/auth/"):
            self._bind(body, secret="required,max=32")
            if body["secret"] != self.secret:
                raise Fail(401, " params.Secret != config.Config.Secret ", 400)
            return None
        value = request.headers.get("token") or ""
        token, _, message = self._parse_token(value)
        if token is None:  # v2.3 echoes the token in its message
            if path.startswith("/msg/"):
                raise Fail(400, "parse token failed", 400)
            raise Fail(500, f"GetUserIDFromToken failed {message} token:{value}", 400)
        return token.user_id

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
            raise Fail(802, "this user not exists,cant not add friend",
                       data=[{"userID": f, "result": -1} for f in friends])
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
        self.groups[group_id] = Record(**{"groupName": str(body.get("groupName") or ""), "ownerUserID": owner,
                                 "members": roles})
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

    async def _v2_all_members(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, groupID="required")
        # An unknown group answers no members, as the v2 server's query does.
        members = self.groups.get(str(body["groupID"]), {}).get("members", {})
        if not self._is_admin(who) and who not in members:
            raise Fail(801, "access denied")
        return [{"groupID": body["groupID"], "userID": u, "roleLevel": role} for u, role in members.items()]

    async def _v2_friend_list(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, fromUserID="required")
        owner = str(body["fromUserID"])
        if not self._is_admin(who) and who != owner:
            raise Fail(801, "access denied")
        return [{"ownerUserID": owner, "friendUser": {k: self.users[f][k] for k in ("userID", "nickname", "faceURL")}}
                for f in sorted(self.store.friends.get(owner, ())) if f in self.users]

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

