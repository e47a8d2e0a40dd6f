"""OpenIM server API v2 (open-im-server v2.3.3): its endpoints, payload
shapes, rules and reply parsing. The shared flows, the admin token and
classification are in vendors/openim.py.

v2 mixes HTTP 400/500 with its own codes; the operationID travels in the
body (and only there); /auth/user_token gives any user's token, the admin's
included, for the secret, with an absolute expiry (`expiredTime`); register
takes one user per call and answers an existing one with an HTTP 500.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import httpx

from .vocabulary import FieldRule, Group, Operation, Outcome, Profile, Result, VendorRules
from .client import CallFailed, Codes, VendorClient, chunks, invalid, same_for_all
from .openim import (MAX_IDS_PER_CALL, TOKEN, OpenIMClient, data_of, exists, listed, new_operation_id, ok, with_data)
from .openim_v3 import RULES_V3
from .paging import PageFetch, sliced

GROUP_TYPE = 0  # NormalGroup
GROUP_CHAT = 2  # GroupChatType
ORDINARY_MEMBER = 1  # roleLevel
NUMBER_FIELDS = ("gender", "birth")

RULES_V2 = VendorRules(  # the ApiUserInfo binding; v3's batches and rates, but register is one user per call
    fields={"user_id": FieldRule(max_len=64, required=True),  # binding: required,min=1,max=64
            "name": FieldRule(max_len=64),
            "avatar": FieldRule(max_len=1024, unit="bytes"),  # faceURL
            "ex": FieldRule(max_len=1024),
            "gender": FieldRule(choices=("0", "1", "2")),
            "phoneNumber": FieldRule(max_len=32),
            "birth": FieldRule(max_len=10, pattern=r"[0-9]+", pattern_hint="a uint32 number"),
            "email": FieldRule(max_len=64)},
    batch_size={**RULES_V3.batch_size, Operation.REGISTER: 1}, rates=RULES_V3.rates,
    group_size=RULES_V3.group_size, needs=RULES_V3.needs)

# pkg/common/constant/error_info.go
CODES_V2 = Codes(
    ok=frozenset({0}),
    rate_limited=frozenset({429, 810}),  # the limiter; the send limit
    retryable=frozenset({500, 802}),  # internal, DB error
    auth=frozenset({401, 801}),  # wrong secret, no access
)


class OpenIMV2Client(OpenIMClient):
    # v2.3.3's API service routes no listing of an app's groups; its separate CMS
    # service (open_im_cms_api, another port and login) has one, which we do not speak.
    capabilities = OpenIMClient.capabilities - {Operation.LIST_GROUPS}
    list_group_pages = VendorClient.list_group_pages
    register_secrets = frozenset({"token"})  # v2 register returns the user's token
    version = "v2"
    rules = RULES_V2
    codes = CODES_V2
    token_codes = range(700, 709)
    token_path = "/auth/user_token"
    send_path = "/msg/manage_send_msg"
    group_chat = GROUP_CHAT
    text_key = "text"
    recv_ids_key, sent_key, failed_key = "recvIDList", "resultList", "FailedIDList"

    # -- auth ----------------------------------------------------------------------------

    def stamp(self, request: httpx.Request, token: str | None) -> httpx.Request:
        """The operationID goes in the body, not in a header; the request is
        rebuilt from the original each time, so a retry gets a fresh one."""
        body = json.loads(request.content or b"{}")
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
        if token:
            headers.append(("token", token))
        return httpx.Request(request.method, request.url, headers=headers,
                             json={**body, "operationID": new_operation_id()}, extensions=request.extensions)

    def _token_body(self) -> dict[str, Any]:
        return {"secret": self.config.secret, "platform": self.config.platform_id,
                "userID": self.config.admin_user_id}

    def _expiry(self, data: dict[str, Any]) -> float:
        """`expiredTime` is epoch seconds."""
        return float(data.get("expiredTime") or 0)

    def _token_refused(self, status: int, code: int, message: str) -> bool:
        # v2.3 handlers answer a bad token as HTTP 400 with errCode 500 or 400 and a message
        # about the token; "Key: '" starts a binding error, which may name a ...TokenReq struct
        return code in self.token_codes or (status == 400 and "token" in message.lower()
                                            and "Key: '" not in message)

    def _not_permitted(self, message: str) -> bool:
        return "not authorized" in message  # admin_user_id is no app manager

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        batch, todo, repeats = self._profiles(profiles)
        batch.put(todo, await self.each([profiles[i] for i in todo], self._register))
        return self._mirrored(batch, repeats)

    @staticmethod
    def _user_fields(profile: Profile) -> dict[str, Any]:
        """A user as register and update_user_info take it (v1 names the fields its own way)."""
        return _user(profile)

    async def _register(self, profile: Profile) -> Result:
        """Registers one user with the secret and returns its token. An
        existing user is an HTTP 500 (v2, and MySQL's duplicate key in v1.0.7):
        then the user is looked up; 1102 in v1's reference is `exists` by its codes."""
        body = {"secret": self.config.secret, "platform": self.config.platform_id, **self._user_fields(profile)}
        result, reply = await self._post(Operation.REGISTER, "/auth/user_register", body, admin=False)
        if result.outcome is Outcome.OK:
            data = data_of(reply)
            return Result(Outcome.OK, "0", data={"user_id": profile.user_id, "token": data.get("token"),
                                                 "expires_at": data.get("expiredTime")})
        if result.outcome is Outcome.EXISTS:
            return exists(profile.user_id, "user already registered", result.code)
        if result.outcome is Outcome.RETRYABLE:
            try:
                if profile.user_id in await self._users([profile.user_id]):
                    return exists(profile.user_id, "user already registered", result.code)
            except CallFailed as failed:
                return failed.result
        return result

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """The admin sets the given fields; empty ones are left as stored (the server skips them)."""
        batch, todo, repeats = self._profiles(profiles)

        async def one(profile: Profile) -> Result:
            result, _ = await self._post(Operation.UPDATE_PROFILE, "/user/update_user_info",
                                         self._user_fields(profile))
            return with_data(result, user_id=profile.user_id)

        batch.put(todo, await self.each([profiles[i] for i in todo], one))
        return self._mirrored(batch, repeats)

    async def _users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored users by id (unknown ids are left out). Raises CallFailed."""
        found: dict[str, dict[str, Any]] = {}
        for part in chunks(list(user_ids), self.rules.batch_size[Operation.GET_PROFILES]):
            result, body = await self._post(Operation.GET_PROFILES, "/user/get_users_info",
                                            {"userIDList": list(part)})
            if not result.succeeded:
                raise CallFailed(result)
            users = listed(body.get("data"), None)  # the list itself
            found.update({u["userID"]: u for u in users if isinstance(u, dict) and "userID" in u})
        return found

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Raises CallFailed when the server cannot answer."""
        users = await self._users(list(dict.fromkeys(user_ids)))
        return [self._profile_of(users[u]) if u in users else None for u in user_ids]

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        return await self.each_valid(user_ids, self._token_target, self._issue_token)

    async def _issue_token(self, user_id: str) -> Result:
        """The secret buys any user's token directly."""
        body = {"secret": self.config.secret, "platform": self.config.platform_id, "userID": user_id}
        result, body = await self._post(Operation.ISSUE_TOKEN, "/auth/user_token", body, admin=False,
                                        expect=TOKEN)
        if result.outcome is not Outcome.OK:
            return result
        data = data_of(body)
        return Result(Outcome.OK, result.code, data={"user_id": user_id, "token": data.get("token"),
                                                     "expires_at": data.get("expiredTime")})

    def _user_ids(self) -> PageFetch[str]:
        """v2 lists every id in one reply: read it once per listing, then page through it."""
        everyone: list[str] | None = None

        async def page(number: int, size: int) -> tuple[Sequence[str], bool]:
            nonlocal everyone
            if everyone is None:
                result, body = await self._post(Operation.LIST_USERS, "/user/get_all_users_uid", {})
                if not result.succeeded:
                    raise CallFailed(result)
                everyone = [u for u in listed(body.get("data"), None) if isinstance(u, str)]
            return await sliced(everyone)(number, size)
        return page

    @staticmethod
    def _profile_of(user: dict[str, Any]) -> Profile:
        return _profile(user)

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """Keeps the caller's group id. Up to 1000 members go with the
        creation, the rest by invitation. An existing group id is 802 (a DB
        error): then, if the group is there, it is `exists`, and its missing
        members are added, so a repeat completes an interrupted creation."""
        problem = self._group_problem(group)
        if problem:
            return invalid(problem)
        members = [m for m in dict.fromkeys(group.members) if m != group.owner]
        rest = members[MAX_IDS_PER_CALL:]
        result, _ = await self._post(Operation.CREATE_GROUP, "/group/create_group", {
            "ownerUserID": group.owner, "groupID": group.group_id, "groupName": group.name,
            "groupType": GROUP_TYPE,
            "memberList": [{"userID": m, "roleLevel": ORDINARY_MEMBER} for m in members[:MAX_IDS_PER_CALL]]})
        if result.outcome is Outcome.RETRYABLE and await self._group_exists(group.group_id):
            result = Result(Outcome.EXISTS, result.code, "group id exists")
        return await self._complete_group(group, result, members, rest)

    async def _group_exists(self, group_id: str) -> bool:
        result, body = await self._post(Operation.CREATE_GROUP, "/group/get_groups_info",
                                        {"groupIDList": [group_id]})
        return result.succeeded and bool(body.get("data"))

    async def _members(self, group_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of `user_ids` are members of the group. Raises CallFailed."""
        result, body = await self._post(Operation.ADD_MEMBERS, "/group/get_group_members_info",
                                        {"groupID": group_id, "memberList": list(user_ids)})
        if not result.succeeded:
            raise CallFailed(result)
        return {uid for m in listed(body.get("data"), None)
                if isinstance(m, dict) and isinstance(uid := m.get("userID"), str)}

    async def _invite(self, group_id: str, user_ids: list[str]) -> list[Result]:
        """The reply lists each user's result (0: invited, -1: not, being a
        member already or unknown): ask which of the refused are members."""
        result, body = await self._post(Operation.ADD_MEMBERS, "/group/invite_user_to_group",
                                        {"groupID": group_id, "invitedUserIDList": user_ids, "reason": ""})
        per_user = _per_user(body)
        if per_user is None:
            ok_all = result.outcome is Outcome.OK
            return [ok(u) for u in user_ids] if ok_all else same_for_all(result, len(user_ids))
        return await self._invited(group_id, user_ids, per_user)

    async def _invited(self, group_id: str, user_ids: list[str], per_user: dict[Any, Any]) -> list[Result]:
        """Each invitee's result from the reply's per-user codes (0: invited):
        the refused that are members already are `exists`, the rest rejected."""
        refused = [u for u in user_ids if per_user.get(u, -1) != 0]
        try:
            members = await self._members(group_id, refused) if refused else set()
        except CallFailed as failed:
            return [failed.result if u in refused else ok(u) for u in user_ids]
        return [exists(u, "already a member") if u in members else
                Result(Outcome.REJECTED, str(per_user.get(u, "missing")),
                       f"member: {u!r} not added (no such user?)") if u in refused else
                ok(u) for u in user_ids]

    async def _import(self, owner: str, friend_ids: list[str]) -> list[Result]:
        """The reply lists each friend's result, even when it fails the call (802: no such owner)."""
        result, body = await self._post(Operation.IMPORT_FRIENDS, "/friend/import_friend",
                                        {"fromUserID": owner, "friendUserIDList": friend_ids})
        per_user = _per_user(body)
        if per_user is None:
            ok_all = result.outcome is Outcome.OK
            return [ok(f) for f in friend_ids] if ok_all else same_for_all(result, len(friend_ids))
        return [ok(f) if per_user.get(f) == 0 else
                Result(Outcome.REJECTED, str(per_user.get(f, "missing")),
                       f"friend_id: {f!r} not imported {result.message}".strip()) for f in friend_ids]


    # -- reading back --------------------------------------------------------------------

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """/group/get_group_all_member_list: every member in one reply. v2
        answers an unknown group with no members; a group keeps its owner,
        so no members means no group."""
        if not group_id:
            return None
        result, body = await self._post(Operation.GET_MEMBERS, "/group/get_group_all_member_list",
                                        {"groupID": group_id})
        if not result.succeeded:
            raise CallFailed(result)
        members = [m.get("userID") for m in listed(body.get("data"), None) if isinstance(m, dict)]
        return list(dict.fromkeys(str(m) for m in members if m)) or None

    async def get_friends(self, user_id: str) -> list[str]:
        """/friend/get_friend_list: every friend in one reply. Raises CallFailed."""
        result, body = await self._post(Operation.GET_FRIENDS, "/friend/get_friend_list",
                                        {"fromUserID": user_id})
        if not result.succeeded:
            raise CallFailed(result)
        friends = [(f.get("friendUser") or {}).get("userID") for f in listed(body.get("data"), None)
                   if isinstance(f, dict)]
        return list(dict.fromkeys(str(f) for f in friends if f))

def _per_user(body: dict[str, Any]) -> dict[str, Any] | None:
    """The per-user `result` list (0 = done), when the reply has one."""
    data = body.get("data")
    if not isinstance(data, list):
        return None
    return {uid: d.get("result") for d in data
            if isinstance(d, dict) and isinstance(uid := d.get("userID"), str)}


def _profile(user: dict[str, Any]) -> Profile:
    """get_users_info returns gender (0 when unset) besides ex."""
    gender = str(user.get("gender") or "")
    extra = {"ex": str(user.get("ex") or ""), "gender": "" if gender == "0" else gender}
    return Profile(user_id=user["userID"], name=user.get("nickname") or "", avatar=user.get("faceURL") or "",
                   extra={k: v for k, v in extra.items() if v})


def _user(profile: Profile) -> dict[str, Any]:
    fields: dict[str, Any] = {"userID": profile.user_id, "nickname": profile.name, "faceURL": profile.avatar}
    for key, value in profile.extra.items():
        fields[key] = int(value) if key in NUMBER_FIELDS else value
    return {k: v for k, v in fields.items() if v != "" or k == "userID"}
