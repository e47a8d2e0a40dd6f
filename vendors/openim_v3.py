"""OpenIM server API v3 (open-im-server v3 main, openimsdk/protocol): its
endpoints, payload shapes, rules and reply parsing. The shared flows, the
admin token and classification are in vendors/openim.py.

v3 answers every error as HTTP 200 `{errCode, errMsg, errDlt}`; the
operationID travels in a header; get_admin_token gives a token for a
duration (`expireTimeSeconds`).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import httpx

from .vocabulary import FieldRule, Group, Operation, Outcome, Profile, Result, VendorRules
from .client import Batch, CallFailed, Codes, chunks, invalid, same_for_all
from .openim import (MAX_IDS_PER_CALL, TOKEN, OpenIMClient, data_of, exists, listed, new_operation_id, ok, with_data)
from .openim_feed import OpenIMV3Feed
from .openim_groups import GROUPS_PER_PAGE, OpenIMV3Groups, listing_page, page_of
from .paging import NoSuchList, PageFetch, read_all

GROUP_TYPE = 2  # v3 accepts only WorkingGroup
GROUP_CHAT = 3  # ReadGroupChatType

RULES_BATCH = {
    Operation.REGISTER: 1000,  # no cap in v3 code; one InsertMany, like the protocol's 1000-id lists
    Operation.UPDATE_PROFILE: 1,
    Operation.GET_PROFILES: 1000,
    Operation.ISSUE_TOKEN: 1,
    Operation.SEND: 100,  # the server sends to each recipient in turn inside the call: keep calls short
    Operation.SEND_GROUP: 1,
    Operation.BROADCAST: 1,
    Operation.CREATE_GROUP: 1,
    Operation.ADD_MEMBERS: MAX_IDS_PER_CALL,
    Operation.IMPORT_FRIENDS: MAX_IDS_PER_CALL,
    Operation.LIST_USERS: 1000,  # showNumber per page
    Operation.LIST_GROUPS: GROUPS_PER_PAGE,  # showNumber per page of /group/get_groups
    Operation.GET_MEMBERS: 1,  # one group a call (its pages are 1000 members)
    Operation.GET_FRIENDS: 1,
}
# Self-hosted, limiter off by default: moderate rates a single-node
# deployment carries; batch calls (up to 1000 items each) go slower.
RULES_RATES = {
    Operation.REGISTER: 20,
    Operation.UPDATE_PROFILE: 100,
    Operation.GET_PROFILES: 50,
    Operation.ISSUE_TOKEN: 100,
    Operation.SEND: 10,
    Operation.SEND_GROUP: 50,
    Operation.BROADCAST: 1,
    Operation.CREATE_GROUP: 20,
    Operation.ADD_MEMBERS: 20,
    Operation.IMPORT_FRIENDS: 20,
    Operation.LIST_USERS: 50,
    Operation.LIST_GROUPS: 50,
    Operation.GET_MEMBERS: 50,
    Operation.GET_FRIENDS: 50,
}


def _legal_user_id() -> str:
    """datautil.IsLegalUserID as a regex: every rune Go's unicode.IsLetter
    (L*), unicode.IsDigit (Nd) or '_'. Python's \\w also takes the other
    numbers (Nl, No: '²', 'Ⅻ'), which the server refuses: they are left out."""
    others = [n for n in range(sys.maxunicode + 1)
              if chr(n).isnumeric() and not chr(n).isdecimal() and not chr(n).isalpha()]
    spans: list[list[int]] = []
    for n in others:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    excluded = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in spans)
    return rf"(?:(?![{excluded}])\w)+"


LEGAL_USER_ID = _legal_user_id()
RULES_V3 = VendorRules(
    fields={
        # The server's own rule: protocol UserRegisterReq.Check -> datautil.IsLegalUserID,
        # and the user rpc refuses only an empty id (and ':'); no length limit.
        # Mongo's unique index on user_id compares bytes, with no folding: ids
        # are told apart as written (id_form None).
        "user_id": FieldRule(required=True, pattern=LEGAL_USER_ID, pattern_hint="letters, digits and _"),
        # UserRegisterReq.Check refuses only an empty nickname; neither the
        # user rpc nor the Mongo model limits its length.
        "name": FieldRule(required=True),
        "avatar": FieldRule(max_len=1024, unit="bytes"),  # faceURL
        "ex": FieldRule(max_len=1024),
    },
    batch_size=RULES_BATCH, rates=RULES_RATES,
    # sendID on every message, the isSendAll broadcast's too.
    needs={op: ("sender",) for op in (Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST)},
    # OpenIM's docs state no cap on a group's members (the deployer's own
    # server): None.
    group_size=None)

# pkg/common/servererrs and tools/errs
CODES_V3 = Codes(
    ok=frozenset({0}),
    exists=frozenset({1102, 1202}),  # RegisteredAlready, GroupIDExisted
    rate_limited=frozenset({429}),  # the optional BBR limiter
    retryable=frozenset({500, 90002, 90004}),  # internal, DB, network
    auth=frozenset({1002}),  # no permission / wrong secret
)


class OpenIMV3Client(OpenIMV3Feed, OpenIMV3Groups, OpenIMClient):
    version = "v3"
    rules = RULES_V3
    codes = CODES_V3
    token_codes = range(1501, 1508)  # TokenExpired .. TokenKicked
    token_path = "/auth/get_admin_token"
    send_path = "/msg/send_msg"
    group_chat = GROUP_CHAT
    text_key = "content"
    recv_ids_key, sent_key, failed_key = "recvIDs", "results", "failedUserIDs"

    # -- auth ----------------------------------------------------------------------------

    def stamp(self, request: httpx.Request, token: str | None) -> httpx.Request:
        request.headers["operationID"] = new_operation_id()
        if token:
            request.headers["token"] = token
        return request

    def _token_body(self) -> dict[str, Any]:
        return {"secret": self.config.secret, "userID": self.config.admin_user_id}

    def _expiry(self, data: dict[str, Any]) -> float:
        """`expireTimeSeconds` is a duration."""
        return self.clock() + float(data.get("expireTimeSeconds") or 0)

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        batch, todo, repeats = self._profiles(profiles)
        for part in chunks(todo, self.rules.batch_size[Operation.REGISTER]):
            batch.put(part, await self._register([profiles[i] for i in part]))
        return self._mirrored(batch, repeats)

    async def _register(self, profiles: list[Profile], rounds: int = 2) -> list[Result]:
        """One batch; on 1102 (some already exist, the whole batch refused)
        ask which exist and register the rest; on 1001 halve the batch to
        keep one bad row from sinking the others."""
        result, _ = await self._post(Operation.REGISTER, "/user/user_register",
                                     {"users": [_user(p) for p in profiles]})
        if result.outcome is Outcome.OK:
            return [ok(p.user_id) for p in profiles]
        if result.code == "1102" and rounds:
            try:
                existing = await self._users([p.user_id for p in profiles])
            except CallFailed as failed:
                return same_for_all(failed.result, len(profiles))
            if existing:
                rest = [p for p in profiles if p.user_id not in existing]
                done = iter(await self._register(rest, rounds - 1) if rest else [])
                return [exists(p.user_id, "user already registered", "1102")
                        if p.user_id in existing else next(done) for p in profiles]
            result = Result(Outcome.RETRYABLE, "1102", "the server says registered, but none is found")
        if result.code == "1001" and len(profiles) > 1:
            half = len(profiles) // 2
            first = await self._register(profiles[:half], rounds)
            return first + await self._register(profiles[half:], rounds)
        return same_for_all(result, len(profiles))

    async def _users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored users by id (unknown ids are left out). Raises CallFailed."""
        found: dict[str, dict[str, Any]] = {}
        for part in chunks(list(user_ids), self.rules.batch_size[Operation.GET_PROFILES]):
            result, body = await self._post(Operation.GET_PROFILES, "/user/get_users_info",
                                            {"userIDs": list(part)})
            if not result.succeeded:
                raise CallFailed(result)
            users = listed(body.get("data"), "usersInfo")
            found.update({u["userID"]: u for u in users if isinstance(u, dict) and "userID" in u})
        return found

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Raises CallFailed when the server cannot answer."""
        users = await self._users(list(dict.fromkeys(user_ids)))
        return [_profile(users[u]) if u in users else None for u in user_ids]

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """Sets the given fields; empty ones are left as stored."""
        batch, todo, repeats = self._profiles(profiles)

        async def one(profile: Profile) -> Result:
            result, _ = await self._post(Operation.UPDATE_PROFILE, "/user/update_user_info_ex",
                                         {"userInfo": _user(profile, partial=True)})
            return with_data(result, user_id=profile.user_id)

        batch.put(todo, await self.each([profiles[i] for i in todo], one))
        return self._mirrored(batch, repeats)

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        batch = Batch(user_ids, self._token_target)
        batch.put(batch.valid, await self.each([user_ids[i] for i in batch.valid], self._issue_token))
        return batch.done()

    async def _issue_token(self, user_id: str) -> Result:
        result, body = await self._post(Operation.ISSUE_TOKEN, "/auth/get_user_token",
                                        {"platformID": self.config.platform_id, "userID": user_id},
                                        expect=TOKEN)
        if result.code == "1002":
            # Our token is an admin's (get_admin_token checks that), so 1002 here
            # means the target: an admin account, which gets no user token.
            return Result(Outcome.REJECTED, result.code, result.message)
        if result.outcome is not Outcome.OK:
            return result
        data = data_of(body)
        return Result(Outcome.OK, result.code, data={"user_id": user_id, "token": data.get("token"),
                                                     "expires_at": round(self._expiry(data))})

    def _user_ids(self) -> PageFetch[str]:
        return self._uid_page

    async def _uid_page(self, number: int, size: int) -> tuple[list[str], bool]:
        result, body = await self._post(Operation.LIST_USERS, "/user/get_all_users_uid",
                                        {"pagination": {"pageNumber": number, "showNumber": size}})
        return listing_page(result, body, "userIDs", number, size, kind=str)

    @staticmethod
    def _profile_of(user: dict[str, Any]) -> Profile:
        return _profile(user)

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """Keeps the caller's group id. Up to 1000 members go with the
        creation, the rest by invitation. A group that exists already (1202)
        is `exists`, and its missing members are added, so a repeat completes
        an interrupted creation."""
        problem = self._group_problem(group)
        if problem:
            return invalid(problem)
        members = [m for m in dict.fromkeys(group.members) if m != group.owner]
        rest = members[MAX_IDS_PER_CALL:]
        result, _ = await self._post(Operation.CREATE_GROUP, "/group/create_group", {
            "ownerUserID": group.owner, "memberUserIDs": members[:MAX_IDS_PER_CALL], "adminUserIDs": [],
            "groupInfo": {"groupID": group.group_id, "groupName": group.name, "groupType": GROUP_TYPE}})
        return await self._complete_group(group, result, members, rest)

    async def _members(self, group_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of `user_ids` are members of the group. Raises CallFailed."""
        result, body = await self._post(Operation.ADD_MEMBERS, "/group/get_group_members_info",
                                        {"groupID": group_id, "userIDs": list(user_ids)})
        if not result.succeeded:
            raise CallFailed(result)
        return {uid for m in listed(body.get("data"), "members")
                if isinstance(m, dict) and isinstance(uid := m.get("userID"), str)}

    async def _invite(self, group_id: str, user_ids: list[str], rounds: int = 2) -> list[Result]:
        """Inviting a member again fails the whole call (a duplicate-key 500),
        as does an unknown user (1004): ask which ids are members or unknown,
        answer those, invite the rest."""
        result, _ = await self._post(Operation.ADD_MEMBERS, "/group/invite_user_to_group",
                                     {"groupID": group_id, "invitedUserIDs": user_ids, "reason": ""})
        if result.outcome is Outcome.OK:
            return [ok(u) for u in user_ids]
        if result.code in ("500", "1004") and rounds:
            try:
                members = await self._members(group_id, user_ids)
                others = [u for u in user_ids if u not in members]
                unknown = set(others) - set(await self._users(others)) if others else set()
            except CallFailed as failed:
                return same_for_all(failed.result, len(user_ids))
            if members or unknown:
                rest = [u for u in others if u not in unknown]
                done = iter(await self._invite(group_id, rest, rounds - 1) if rest else [])
                return [exists(u, "already a member") if u in members else
                        Result(Outcome.REJECTED, "1004", f"member: no such user {u!r}") if u in unknown else
                        next(done) for u in user_ids]
        return same_for_all(result, len(user_ids))

    async def _import(self, owner: str, friend_ids: list[str], rounds: int = 1) -> list[Result]:
        result, _ = await self._post(Operation.IMPORT_FRIENDS, "/friend/import_friend",
                                     {"ownerUserID": owner, "friendUserIDs": friend_ids})
        if result.outcome is Outcome.OK:
            return [ok(f) for f in friend_ids]
        if result.code == "1004" and rounds:  # some user is missing: find who
            try:
                known = await self._users([owner, *friend_ids])
            except CallFailed as failed:
                return same_for_all(failed.result, len(friend_ids))
            if owner not in known:
                return same_for_all(Result(Outcome.REJECTED, "1004", f"owner: no such user {owner!r}"),
                                    len(friend_ids))
            rest = [f for f in friend_ids if f in known]
            if len(rest) < len(friend_ids):
                done = iter(await self._import(owner, rest, rounds - 1) if rest else [])
                return [next(done) if f in known else
                        Result(Outcome.REJECTED, "1004", f"friend_id: no such user {f!r}")
                        for f in friend_ids]
        return same_for_all(result, len(friend_ids))


    # -- reading back --------------------------------------------------------------------

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """/group/get_group_member_list, 1000 a page. An unknown group, or
        one without members (a group keeps at least its owner), is None."""
        try:
            members = await self._member_ids(group_id) if group_id else []
        except NoSuchList:
            return None
        return list(dict.fromkeys(members)) or None

    async def get_friends(self, user_id: str) -> list[str]:
        """/friend/get_friend_list, 1000 a page. Raises CallFailed."""
        async def page(number: int, size: int) -> tuple[list[str], bool]:
            result, body = await self._post(Operation.GET_FRIENDS, "/friend/get_friend_list", {
                "userID": user_id, "pagination": {"pageNumber": number, "showNumber": size}})
            return page_of(result, body, "friendsInfo",
                            lambda f: (f.get("friendUser") or {}).get("userID"), number, size)

        return list(dict.fromkeys(await read_all(page, MAX_IDS_PER_CALL)))


def _profile(user: dict[str, Any]) -> Profile:
    return Profile(user_id=user["userID"], name=user.get("nickname") or "",
                   avatar=user.get("faceURL") or "", extra={"ex": user["ex"]} if user.get("ex") else {})


def _user(profile: Profile, *, partial: bool = False) -> dict[str, Any]:
    fields = {"userID": profile.user_id, "nickname": profile.name, "faceURL": profile.avatar,
              "ex": profile.extra.get("ex", "")}
    if partial:  # update_user_info_ex changes only the fields present
        return {k: v for k, v in fields.items() if v or k == "userID"}
    return fields

