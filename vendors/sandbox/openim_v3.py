"""OpenIM v3 endpoints (today's deployments): `operationID` and `token`
travel as headers, every error is HTTP 200 `{errCode, errMsg, errDlt}`, and
the rules follow the server's source (open-im-server, protocol, tools).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from typing import Any, Callable, Iterable, Sequence

from starlette.requests import Request

from ..vocabulary import Operation
from ..openim import ADMIN_PLATFORM_ID, MAX_IDS_PER_CALL
from .common import Endpoint, Op, Refusal
from .openim import Fail, OpenIMSandbox, legal_user_id, page, repeated
from .openim_feed import SETUP_WEBHOOKS, OpenIMv3Feed
from .store import Record

OWNER, ADMIN, MEMBER = 100, 60, 20  # v3 roleLevel
GET_MEMBERS, GET_FRIENDS = "get_members", "get_friends"  # read-backs: counted apart


def batch_op(body: dict[str, Any]) -> str:
    return Operation.BROADCAST.value if body.get("isSendAll") else Operation.SEND.value


def as_handler(act: Any) -> Any:
    """The versions' handlers take (body, the token's user)."""
    return lambda body, call: act(body, call.who)


class OpenIMv3Sandbox(OpenIMv3Feed, OpenIMSandbox):
    """v3 with its webhooks (the bridge's feed): see openim_feed.py."""

    api_version = "v3"
    SERVER_ERROR = Refusal(500, "ServerInternalError", errDlt="injected fault")
    OVER_LIMIT = Refusal(429, "too many requests, please try again later", 429,
                         headers={"Retry-After": "1"})  # the optional BBR limiter

    def __init__(self, *, webhooks: Iterable[str] = SETUP_WEBHOOKS, **kwargs: Any):
        self.init_openim_feed(webhooks)  # which webhooks the server's config enables
        super().__init__(**kwargs)

    def routes(self) -> list[Any]:
        return super().routes() + self.feed_routes()

    def client_config(self, base_url: str, secret: str) -> Any:
        return replace(super().client_config(base_url, secret), feed_secret=self.feed_secret)

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"errCode": code, "errMsg": message, "errDlt": ""}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"errCode": 0, "errMsg": "", "errDlt": "", "data": data}

    def unreadable(self, raw: bytes) -> Refusal:
        return Fail(1001, "ArgsError: the body is not a JSON object")

    def endpoints(self) -> list[Endpoint]:
        table: dict[str, tuple[Op, Callable[..., Any]]] = {
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
            "/group/get_group_member_list": (GET_MEMBERS, self._v3_member_list),
            "/group/get_groups": (Operation.LIST_GROUPS.value, self._v3_get_groups),
            "/friend/get_friend_list": (GET_FRIENDS, self._v3_friend_list),
            "/msg/send_msg": (Operation.SEND.value, self._feed_send_msg),  # with its webhooks
            "/msg/batch_send_msg": (batch_op, self._feed_batch_send),
        }
        return [Endpoint(path, op, as_handler(act), body="json")
                for path, (op, act) in table.items()] + self.feed_endpoints()

    async def authenticate(self, request: Request) -> str | None:
        """operationID header, then the token header (except on the whitelist),
        then the secret for get_admin_token. Returns the token's user."""
        path = request.url.path
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
        body = await self.params(request)
        if path == "/auth/get_admin_token":
            if body.get("secret") != self.secret:
                raise Fail(1002, "NoPermissionError: secret invalid")
            if body.get("userID") != self.admin_user_id:
                raise Fail(1001, "ArgsError: userID is error.")
        return who

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
        if repeated(ids):
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
        ids = self._all_user_ids()
        return {"total": len(ids), "userIDs": page(ids, body.get("pagination"))}

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
        if repeated(friends):
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
        if repeated(everyone):
            raise Fail(1001, "ArgsError: group member repeated")
        if any(u not in self.users for u in everyone):
            raise Fail(1101, "UserIDNotFoundError: user not found")
        group_id = str(info.get("groupID") or "")
        if group_id in self.groups:
            self.duplicates[Operation.CREATE_GROUP.value] += 1
            raise Fail(1202, f"GroupIDExisted: group id existed {group_id}")
        group_id = group_id or str(int(uuid.uuid4().hex[:8], 16))
        self.add_group(group_id, str(info.get("groupName") or ""), owner, members, admins,
                       faceURL=str(info.get("faceURL") or ""),
                       introduction=str(info.get("introduction") or ""))
        return {"groupInfo": {"groupID": group_id, "groupName": self.groups[group_id]["groupName"],
                              "ownerUserID": owner, "memberCount": len(self.groups[group_id]["members"]),
                              "groupType": 2}}

    def add_group(self, group_id: str, name: str, owner: str, members: Sequence[str] = (),
                  admins: Sequence[str] = (), **info: str) -> None:
        """Store a group as create_group does (tests fill a source with it);
        `info`: faceURL, introduction. Each keeps its creation order, the
        listing's sort key."""
        roles = {owner: OWNER} | {a: ADMIN for a in admins} | {m: MEMBER for m in members}
        self.groups[group_id] = Record(groupName=name, ownerUserID=owner, members=roles,
                                       faceURL=info.get("faceURL", ""),
                                       introduction=info.get("introduction", ""),
                                       createTime=int(self.clock() * 1000), created=len(self.groups))

    async def _v3_get_groups(self, body: dict[str, Any], who: str | None) -> Any:
        """As GetGroups (the rpc's group.go): one group by groupID, else a
        page of those whose name matches groupName (a regex), dismissed ones
        left out, the newest first; any valid token may ask."""
        pagination = body.get("pagination")
        if not isinstance(pagination, dict):  # GetGroupsReq.Check
            raise Fail(1001, "ArgsError: pagination is empty")
        number, show = pagination.get("pageNumber"), pagination.get("showNumber") or 0
        if not isinstance(number, int) or number < 1:
            raise Fail(1001, "ArgsError: pageNumber is invalid")
        if not isinstance(show, int):
            raise Fail(1001, "ArgsError: showNumber is invalid")
        group_id, name = str(body.get("groupID") or ""), str(body.get("groupName") or "")
        if group_id:  # FindGroup: that one, unpaged
            found = [group_id] if group_id in self.groups else []
            return {"total": len(found), "groups": [self._cms_group(g) for g in found]}
        try:
            pattern = re.compile(name)
        except re.error:
            raise Fail(500, "ServerInternalError: mongo count: invalid regular expression") from None
        found = sorted((g for g, r in self.groups.items() if pattern.search(r["groupName"])),
                       key=lambda g: (self.groups[g].get("createTime", 0), self.groups[g].get("created", 0)),
                       reverse=True)
        skip = (number - 1) * show  # tools' FindPage: nothing when showNumber <= 0 or past the end
        return {"total": len(found),
                "groups": [self._cms_group(g) for g in (found[skip:skip + show] if show > 0 else [])]}

    def _cms_group(self, group_id: str) -> dict[str, Any]:
        record = self.groups[group_id]
        owner = next((u for u, role in record["members"].items() if role == OWNER), "")
        info = {"groupID": group_id, "groupName": record["groupName"], "notification": "",
                "introduction": record.get("introduction", ""), "faceURL": record.get("faceURL", ""),
                "ownerUserID": owner, "createTime": record.get("createTime", 0),
                "memberCount": len(record["members"]), "ex": "", "status": 0,
                "creatorUserID": record["ownerUserID"], "groupType": 2, "needVerification": 0,
                "lookMemberInfo": 0, "applyMemberFriend": 0, "notificationUpdateTime": 0,
                "notificationUserID": ""}
        return {"groupInfo": info, "groupOwnerUserID": owner,
                "groupOwnerUserName": self.users.get(owner, {}).get("nickname", "")}

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
        if repeated(invited):
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

    async def _v3_member_list(self, body: dict[str, Any], who: str | None) -> Any:
        group_id = str(body.get("groupID") or "")
        if not group_id:
            raise Fail(1001, "ArgsError: groupID empty")
        group = self.groups.get(group_id)
        if group is None:
            raise Fail(1004, "RecordNotFoundError: group not found")
        if not self._is_admin(who) and who not in group["members"]:
            raise Fail(1203, "NotInGroupYetError")
        members = [{"groupID": group_id, "userID": u, "roleLevel": role,
                    "nickname": self.users.get(u, {}).get("nickname", "")}
                   for u, role in group["members"].items()]
        return {"total": len(members), "members": page(members, body.get("pagination"))}

    async def _v3_friend_list(self, body: dict[str, Any], who: str | None) -> Any:
        user_id = str(body.get("userID") or "")
        if not user_id:
            raise Fail(1001, "ArgsError: userID empty")
        if not self._is_admin(who) and who != user_id:
            raise Fail(1002, "NoPermissionError")
        friends = [{"ownerUserID": user_id, "friendUser": self._public_v3(self.users[f])}
                   for f in sorted(self.store.friends.get(user_id, ())) if f in self.users]
        return {"total": len(friends), "friendsInfo": page(friends, body.get("pagination"))}

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

