"""OpenIM's early server API (open-im-server v1.0.0 - v1.0.7, the API of the
project's reference document): flat `uid`, `name`, `icon`, `uidList`,
`ownerUid`, `memberList:[{uid, setRole}]`, `/manager/...` routes.

Like v2, the operationID is a body field, the secret goes in the body of
/auth/ calls and /auth/user_token gives any user's token (the admin's
included), so this class is v2's with v1's names and routes. Where v1 differs
in kind: the server picks a group's id (creating a group is not safe to
repeat), there is no batch or broadcast send, and friends are read with the
user's own token. Facts: docs/vendors.md, the server's source at v1.0.7
(internal/api, internal/rpc, pkg/common/constant/error.go).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Generator, Sequence

import httpx

from .vocabulary import FieldRule, Group, Message, Operation, Outcome, Profile, Result
from .client import CallFailed, Codes, invalid, same_for_all
from .openim import TOKEN, data_of, listed, ok
from .openim_v2 import RULES_V2, OpenIMV2Client
from .paging import PageFetch, sliced

GROUP_CHAT = 2  # sessionType
OWNER_ROLE, MEMBER_ROLE = 1, 0  # setRole
TOKEN_CODES_V1 = frozenset({200, *range(701, 706)})  # ErrParseToken, ErrToken*
TOKEN_CODES_DOC = range(1501, 1508)  # the reference's token codes
NOT_ADDED = 408  # import_friend: "some uid establish failed", with failedUidList

RULES_V1 = replace(  # auth/user_register's binding (v1.0.7); v2's batches and rates
    RULES_V2,
    fields={"user_id": FieldRule(max_len=64, required=True),
            "name": FieldRule(max_len=64, required=True),  # required,min=1,max=64
            "avatar": FieldRule(max_len=1024),  # icon; the validator counts characters
            "gender": FieldRule(choices=("0", "1", "2")),
            "mobile": FieldRule(max_len=32),
            "birth": FieldRule(max_len=16),  # a string in v1
            "email": FieldRule(max_len=64),
            "ex": FieldRule(max_len=1024)},
    # a create reads its members back; a friend read first fetches the user's token
    calls_per_item={Operation.CREATE_GROUP: 2, Operation.GET_FRIENDS: 2})

# v1.0.7's codes (500 internal, 100-120 and 900 storage, 401 not authorized) and
# the reference document's (1102 registered, 1304 already friends, 1002 no permission).
CODES_V1 = Codes(
    ok=frozenset({0}),
    exists=frozenset({1102, 1304}),
    rate_limited=frozenset({429}),
    retryable=frozenset({500, 100, 110, 120, 900}),
    auth=frozenset({401, 1002}),
)


class _AsUser(httpx.Auth):
    """A call made with one user's token (v1 reads friends and joined groups
    only for the token's own user)."""

    def __init__(self, client: OpenIMV1Client, token: str):
        self.client, self.token = client, token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self.client.stamp(request, self.token)


class OpenIMV1Client(OpenIMV2Client):
    capabilities = OpenIMV2Client.capabilities - {Operation.BROADCAST}  # no send-to-all in v1
    repeat_safe_ops = frozenset()  # the server assigns group ids: a repeat makes a second group
    version = "v1"
    rules = RULES_V1
    codes = CODES_V1
    send_path = "/manager/send_msg"
    group_chat = GROUP_CHAT

    def _token_body(self) -> dict[str, Any]:
        return {"secret": self.config.secret, "platform": self.config.platform_id,
                "uid": self.config.admin_user_id}

    def _token_refused(self, status: int, code: int, message: str) -> bool:
        # v2's reading covers send_msg's HTTP 400 "parse token failed"
        return (code in TOKEN_CODES_V1 or code in TOKEN_CODES_DOC
                or super()._token_refused(status, code, message))

    # -- users ---------------------------------------------------------------------------

    # register (with its fallback), update_profiles and get_profiles are v2's,
    # over these two: a user's fields as v1 names them, and a stored user read back.

    @staticmethod
    def _user_fields(profile: Profile) -> dict[str, Any]:
        return _user(profile)

    @staticmethod
    def _profile_of(user: dict[str, Any]) -> Profile:
        return _profile(user)

    async def _users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored users by id (unknown ids are left out). Raises CallFailed."""
        found: dict[str, dict[str, Any]] = {}
        size = self.rules.batch_size[Operation.GET_PROFILES]
        for start in range(0, len(user_ids), size):  # an empty uidList is an error (999)
            result, body = await self._post(Operation.GET_PROFILES, "/user/get_user_info",
                                            {"uidList": list(user_ids[start:start + size])})
            if not result.succeeded:
                raise CallFailed(result)
            found.update({u["uid"]: u for u in listed(body.get("data"), None)
                          if isinstance(u, dict) and "uid" in u})
        return found

    def _user_ids(self) -> PageFetch[str]:
        """Every id in one reply's top-level `uidList`: read once per listing, then paged here."""
        everyone: list[str] | None = None

        async def page(number: int, size: int) -> tuple[Sequence[str], bool]:
            nonlocal everyone
            if everyone is None:
                result, body = await self._post(Operation.LIST_USERS, "/manager/get_all_users_uid", {})
                if not result.succeeded:
                    raise CallFailed(result)
                everyone = [u for u in listed(body, "uidList") if isinstance(u, str)]
            return await sliced(everyone)(number, size)
        return page

    async def _issue_token(self, user_id: str, key: str | Operation = Operation.ISSUE_TOKEN) -> Result:
        body = {"secret": self.config.secret, "platform": self.config.platform_id, "uid": user_id}
        result, reply = await self._post(key, "/auth/user_token", body, admin=False, expect=TOKEN)
        if result.outcome is Outcome.RETRYABLE and result.code == "500":  # also a missing user's answer
            try:
                if user_id not in await self._users([user_id]):
                    return Result(Outcome.REJECTED, result.code, f"user_id: {user_id!r} is not registered")
            except CallFailed as failed:
                return failed.result
        if result.outcome is not Outcome.OK:
            return result
        data = data_of(reply)
        return Result(Outcome.OK, result.code, data={"user_id": user_id, "token": data.get("token"),
                                                     "expires_at": data.get("expiredTime")})

    async def _as_user(self, key: Operation, user_id: str, path: str,
                       body: dict[str, Any]) -> dict[str, Any]:
        """A read made with `user_id`'s own token (fetched for it; v1 keeps
        older tokens valid). Raises CallFailed."""
        issued = await self._issue_token(user_id, key)
        if not issued.succeeded:
            raise CallFailed(issued)
        result, reply = await self.call(key, "POST", self.config.base_url.rstrip("/") + path, json=body,
                                        auth=_AsUser(self, issued.data["token"]))
        if not result.succeeded:
            raise CallFailed(result)
        return reply

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """The server assigns the id (data.groupID) and skips unknown members
        silently: the members are read back, and those missing named."""
        problem = self._group_problem(group)
        if problem:
            return invalid(problem)
        members = [m for m in dict.fromkeys(group.members) if m != group.owner]
        result, body = await self._post(Operation.CREATE_GROUP, "/group/create_group", {
            "groupName": group.name, "memberList": [{"uid": group.owner, "setRole": OWNER_ROLE},
                           *({"uid": m, "setRole": MEMBER_ROLE} for m in members)]},
            expect=("data.groupID",))
        if result.outcome is not Outcome.OK:
            return result
        group_id = str(data_of(body)["groupID"])
        try:
            there = set(await self.get_members(group_id, group.owner) or ())
        except CallFailed:
            there = {group.owner, *members}  # made: the members stage checks them again
        missing = [m for m in members if m not in there]
        message = f"{len(missing)} members not added; add them with add_members" if missing else ""
        return Result(Outcome.OK, result.code, message, data={"group_id": group_id, "members_not_added": missing})

    async def find_groups(self, owner: str, name: str) -> list[str] | None:
        """The owner's joined groups (read with the owner's token) it owns, named `name`."""
        reply = await self._as_user(Operation.CREATE_GROUP, owner, "/group/get_joined_group_list", {})
        return [str(g["groupId"]) for g in listed(reply.get("data"), None)
                if isinstance(g, dict) and g.get("groupName") == name and g.get("ownerId") == owner]

    async def _members(self, group_id: str, user_ids: Sequence[str]) -> set[str]:
        return set(await self.get_members(group_id, "") or ()) & set(user_ids)

    async def _invite(self, group_id: str, user_ids: list[str]) -> list[Result]:
        """Per-uid `result` (0 invited; -1 a member already or no such user)."""
        result, body = await self._post(Operation.ADD_MEMBERS, "/group/invite_user_to_group",
                                        {"groupID": group_id, "uidList": user_ids, "reason": ""})
        if result.outcome is not Outcome.OK:
            return same_for_all(result, len(user_ids))
        per_user = {d.get("uid"): d.get("result") for d in listed(body.get("data"), None) if isinstance(d, dict)}
        return await self._invited(group_id, user_ids, per_user)

    async def _import(self, owner: str, friend_ids: list[str]) -> list[Result]:
        """Pairs already friends are skipped (ok); a missing user is in `failedUidList` (408)."""
        result, body = await self._post(Operation.IMPORT_FRIENDS, "/friend/import_friend",
                                        {"ownerUid": owner, "uidList": friend_ids})
        if result.code != str(NOT_ADDED):
            return [ok(f) for f in friend_ids] if result.outcome is Outcome.OK else \
                same_for_all(result, len(friend_ids))
        failed = set(listed(body, "failedUidList"))
        return [Result(Outcome.REJECTED, result.code, f"friend_id: {f!r} not imported (no such user?)")
                if f in failed else ok(f) for f in friend_ids]

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """v1 answers an unknown group with no members (a group keeps its owner)."""
        if not group_id:
            return None
        result, body = await self._post(Operation.GET_MEMBERS, "/group/get_group_all_member_list",
                                        {"groupID": group_id})
        if not result.succeeded:
            raise CallFailed(result)
        members = [m.get("userId") for m in listed(body.get("data"), None) if isinstance(m, dict)]
        return list(dict.fromkeys(str(m) for m in members if m)) or None

    async def get_friends(self, user_id: str) -> list[str]:
        reply = await self._as_user(Operation.GET_FRIENDS, user_id, "/friend/get_friend_list", {})
        return list(dict.fromkeys(str(f["uid"]) for f in listed(reply.get("data"), None)
                                  if isinstance(f, dict) and f.get("uid")))

    # -- messages: /manager/send_msg, one call per recipient or group -------------------

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(recipients))
        return await self.each_valid(recipients, self._id_problem("recipient"),
                                     lambda r: self._send_one(sender, r, message))

    async def _send_one(self, sender: str, recipient: str, message: Message) -> Result:
        return await self._send_msg(Operation.SEND, sender, recipient, message, 1, user_id=recipient)

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(group_ids))
        return await self.each_valid(
            group_ids, lambda g: None if g else "group_id: required",
            lambda g: self._send_msg(Operation.SEND_GROUP, sender, g, message, GROUP_CHAT, group_id=g))

    async def _send_msg(self, key: Operation, sender: str, recv_id: str, message: Message,
                        session_type: int, **data: Any) -> Result:
        """`recvID` is the user or the group; the reply's `msgID` is top-level."""
        fields = {**self._message_fields(sender, message), "sessionType": session_type, "recvID": recv_id}
        result, body = await self._post(key, self.send_path, fields, expect=("msgID",))
        return Result(Outcome.OK, "0", data={**data, "msg_id": body["msgID"]}) \
            if result.outcome is Outcome.OK else result


V1_FIELDS = ("gender", "mobile", "birth", "email", "ex")  # beside uid, name, icon


def _user(profile: Profile) -> dict[str, Any]:
    fields: dict[str, Any] = {"uid": profile.user_id, "name": profile.name, "icon": profile.avatar}
    for key, value in profile.extra.items():
        fields[key] = int(value) if key == "gender" else value
    return {k: v for k, v in fields.items() if v != "" or k == "uid"}


def _profile(user: dict[str, Any]) -> Profile:
    """get_user_info's `{uid, name, icon, gender, mobile, birth, email, ex}` (gender 0: unset)."""
    extra = {k: str(user.get(k) or "") for k in V1_FIELDS}
    return Profile(user_id=str(user["uid"]), name=user.get("name") or "", avatar=user.get("icon") or "",
                   extra={k: v for k, v in extra.items() if v and not (k == "gender" and v == "0")})
