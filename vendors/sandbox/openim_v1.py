"""OpenIM's early API (open-im-server v1.0.x, the project's reference
document): flat `uid`/`name`/`icon`, `/manager/...` routes, the server's own
group ids, and its replies as v1.0.7 writes them (binding errors HTTP 400
with errCode 400, a wrong secret HTTP 400 with 401, an existing user HTTP 500,
a bad token errCode 200, a top-level `uidList` and `msgID`). Sent v2's or
v3's names (`userID`, `nickname`, ...) it answers that `uid` is missing.

Users are kept in the shared form (`userID`, `nickname`, `faceURL`, ...) so
the read-backs of openim.py serve all versions.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..vocabulary import Operation, Profile
from .common import Endpoint, Op
from .openim import Fail
from .openim_v2 import OpenIMv2Sandbox
from .openim_v3 import GET_FRIENDS, GET_MEMBERS, as_handler
from .store import Record

# v1 name -> the shared record's name
SHARED = {"uid": "userID", "name": "nickname", "icon": "faceURL", "gender": "gender",
          "mobile": "phoneNumber", "birth": "birth", "email": "email", "ex": "ex"}
BAD_TOKEN = Fail(200, "Parse token failed")  # constant.ErrParseToken, HTTP 200
NOT_AUTHORIZED = Fail(401, "not authorized")


class OpenIMv1Sandbox(OpenIMv2Sandbox):
    api_version = "v1"

    def __init__(self, *, secret: str = "tuoyun", admin_user_id: str = "openIM123456",
                 token_ttl: float = 7 * 86400, **kwargs: Any):
        # v1.0.7's config.yaml: secret, manager.appManagerUid[0], tokenpolicy.accessExpire (days)
        super().__init__(secret=secret, admin_user_id=admin_user_id, token_ttl=token_ttl, **kwargs)
        self._group_seq = 0

    def endpoints(self) -> list[Endpoint]:
        table: dict[str, tuple[Op, Callable[..., Any]]] = {
            "/auth/user_register": (Operation.REGISTER.value, self._register),
            "/auth/user_token": (self._token_op, self._user_token),
            "/user/update_user_info": (Operation.UPDATE_PROFILE.value, self._update),
            "/user/get_user_info": (Operation.GET_PROFILES.value, self._user_info),
            "/manager/get_all_users_uid": (Operation.LIST_USERS.value, self._all_users),
            "/friend/import_friend": (Operation.IMPORT_FRIENDS.value, self._import_friend),
            "/friend/get_friend_list": (GET_FRIENDS, self._friend_list),
            "/group/create_group": (Operation.CREATE_GROUP.value, self._create_group),
            "/group/get_joined_group_list": (Operation.CREATE_GROUP.value, self._joined_groups),
            "/group/invite_user_to_group": (Operation.ADD_MEMBERS.value, self._invite),
            "/group/get_group_all_member_list": (GET_MEMBERS, self._all_members),
            "/manager/send_msg": (self._send_op, self._send_msg),
        }
        return [Endpoint(path, op, as_handler(act), body="json") for path, (op, act) in table.items()]

    def _token_op(self, body: dict[str, Any]) -> str:
        return "auth" if body.get("uid") == self.admin_user_id else Operation.ISSUE_TOKEN.value

    @staticmethod
    def _send_op(body: dict[str, Any]) -> str:
        return (Operation.SEND_GROUP if body.get("sessionType") == 2 else Operation.SEND).value

    async def authenticate(self, request: Request) -> str | None:
        """/auth/: the body is bound first, then the secret compared; elsewhere
        the token's user, or None for no valid token (each handler answers that
        its own way, and some never look)."""
        path, body = request.url.path, await self.params(request)
        if path.startswith("/auth/"):
            self._bind(body, secret="required,max=32")
            if path == "/auth/user_register":
                self._bind(body, platform="range=1-7", uid="required,max=64", name="required,max=64",
                           icon="max=1024", gender="oneof=0|1|2", mobile="max=32", birth="max=16",
                           email="max=64", ex="max=1024")
            else:
                self._bind(body, platform="range=1-8", uid="required,max=64")
            if body["secret"] != self.secret:
                raise Fail(401, "not authorized", 400)
            return None
        if body.get("operationID"):
            self.operation_ids.append(str(body["operationID"]))
        token, _, _ = self._parse_token(request.headers.get("token") or "")
        return token.user_id if token else None

    def _need(self, who: str | None, *, admin: bool = False) -> str:
        if who is None:
            raise BAD_TOKEN
        if admin and not self._is_admin(who):
            raise NOT_AUTHORIZED
        return who

    # -- users ---------------------------------------------------------------------------

    def _v1_user(self, user_id: str) -> dict[str, Any]:
        user = self.users[user_id]
        return {v1: user[shared] for v1, shared in SHARED.items()}

    def _token_data(self, user_id: str, platform: int) -> dict[str, Any]:
        value, token = self._issue(user_id, platform)
        return {"uid": user_id, "token": value, "expiredTime": int(token.expires_at)}

    async def _register(self, body: dict[str, Any], who: str | None) -> Any:
        user_id = str(body["uid"])
        if user_id in self.users:  # MySQL's duplicate key, from the rpc
            self.duplicates[Operation.REGISTER.value] += 1
            raise Fail(500, f"rpc error: code = Unknown desc = Error 1062: Duplicate entry "
                            f"'{user_id}' for key 'PRIMARY'", 500)
        self._add_user({"birth": "", **{SHARED[k]: v for k, v in body.items() if k in SHARED}})
        return self._token_data(user_id, body["platform"])

    async def _user_token(self, body: dict[str, Any], who: str | None) -> Any:
        if body["uid"] not in self.users:
            raise Fail(500, "rpc error: code = Unknown desc = record not found", 500)
        return self._token_data(str(body["uid"]), body["platform"])

    async def _update(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required")
        who = self._need(who)
        user = self.users.get(str(body.get("uid") or "") if self._is_admin(who) else who)
        if user is not None:  # an unknown uid updates nothing, and says nothing
            for key, shared in SHARED.items():
                if key != "uid" and body.get(key) not in (None, "", 0):
                    user[shared] = body[key]
        return None

    async def _user_info(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required")  # v1.0.7 checks no token here
        if not body.get("uidList"):
            raise Fail(999, "uidList is nil")
        return [self._v1_user(u) for u in body["uidList"] if u in self.users]

    async def _all_users(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required")
        self._need(who, admin=True)
        return JSONResponse({"errCode": 0, "errMsg": "", "uidList": list(self.users)})

    def profile(self, user_id: str, user: dict[str, Any]) -> Profile:
        extra = {k: str(user[SHARED[k]]) for k in ("gender", "mobile", "birth", "email", "ex")
                 if user[SHARED[k]] not in ("", 0)}
        return Profile(user_id=user_id, name=user["nickname"], avatar=user["faceURL"], extra=extra)

    # -- friends -------------------------------------------------------------------------

    async def _import_friend(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required", uidList="list", ownerUid="required")
        owner, friends = str(body["ownerUid"]), body["uidList"]
        for refused, message in ((who is None, "Parse token failed"),
                                 (not self._is_admin(who), "not authorized"),
                                 (owner not in self.users, "this user not exists,cant not add friend")):
            if refused:
                raise Fail(606, message, failedUidList=friends)  # constant.ErrAddFriend
        failed = [f for f in friends if f not in self.users]
        for friend in friends:
            if friend not in failed:
                self._befriend(owner, friend)  # a pair already friends is left as it is
        reply = (408, "some uid establish failed") if failed else (0, "")
        return JSONResponse({"errCode": reply[0], "errMsg": reply[1], "failedUidList": failed})

    async def _friend_list(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required")
        owner = self._need(who)  # the token's own friends only
        return [{**self._v1_user(f), "comment": "", "isInBlackList": 0}
                for f in sorted(self.store.friends.get(owner, ())) if f in self.users]

    # -- groups --------------------------------------------------------------------------

    async def _create_group(self, body: dict[str, Any], who: str | None) -> Any:
        """The server picks the id; a non-admin creator becomes its owner;
        unknown members are skipped without a word."""
        self._bind(body, operationID="required")
        who = self._need(who)
        self._group_seq += 1
        group_id = hashlib.md5(f"{self.clock()}-{self._group_seq}".encode()).hexdigest()
        roles = {} if self._is_admin(who) else {who: 1}
        for member in body.get("memberList") or []:
            if isinstance(member, dict) and member.get("uid") in self.users:
                roles[member["uid"]] = int(member.get("setRole") or 0)
        owner = next((u for u, role in roles.items() if role == 1), "")
        self.groups[group_id] = Record(groupName=str(body.get("groupName") or ""), ownerUserID=owner,
                                       members=roles)
        return {"groupID": group_id}

    async def _joined_groups(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required")
        who = self._need(who)
        return [{"groupId": g, "groupName": group["groupName"], "ownerId": group["ownerUserID"],
                 "memberCount": len(group["members"])}
                for g, group in self.groups.items() if who in group["members"]]

    async def _invite(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, groupID="required", uidList="list", operationID="required")
        who = self._need(who)
        group = self.groups.get(str(body["groupID"]))
        if group is None or (not self._is_admin(who) and who not in group["members"]):
            raise Fail(800, "no permission")  # constant.ErrAccess, for both
        results = []
        for user_id in body["uidList"]:
            if user_id in group["members"]:
                self.duplicates[Operation.ADD_MEMBERS.value] += 1
            added = user_id in self.users and user_id not in group["members"]
            if added:
                group["members"][user_id] = 0
            results.append({"uid": user_id, "result": 0 if added else -1})
        return results

    async def _all_members(self, body: dict[str, Any], who: str | None) -> Any:
        # v1.0.7 checks no token here; an unknown group has no members (a null list)
        members = self.groups.get(str(body.get("groupID") or ""), {}).get("members", {})
        return [{"groupID": body["groupID"], "userId": u, "role": role, "nickName": self.users[u]["nickname"]}
                for u, role in members.items()] or None

    # -- messages ------------------------------------------------------------------------

    async def _send_msg(self, body: dict[str, Any], who: str | None) -> Any:
        self._bind(body, operationID="required", sendID="required", recvID="required", content="required",
                   contentType="required", sessionType="required")
        if body["contentType"] not in (101, 110):  # the sandbox keeps text and custom only
            raise Fail(404, "contentType err", 400)
        content = self._content(body["contentType"], body["content"], "text")
        if not content:
            raise Fail(403, "Key: 'content' Error:Field validation failed on the 'required' tag", 400)
        if who is None:
            raise Fail(400, "parse token failed", 400)
        if not self._is_admin(who):
            raise Fail(400, "not authorized", 400)
        if body["sessionType"] not in (1, 2):
            raise Fail(400, "sessionType err", 400)
        sent = self._deliver(str(body["sendID"]), "single" if body["sessionType"] == 1 else "group",
                             str(body["recvID"]), content)
        return JSONResponse({"errCode": 0, "errMsg": "", "sendTime": sent["sendTime"] * 1_000_000,
                             "msgID": sent["clientMsgID"]})
