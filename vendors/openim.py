"""OpenIM (self-hosted, open source) server API client, API v3 (default) and v2.

OpenIM has no request signature: the shared `secret` buys an admin token,
and every other call carries that token in a `token` header plus a fresh
random `operationID` (a header in v3, a body field in v2). The admin token
is cached until it expires and fetched once per client at a time (a new
admin token leaves older ones only five minutes, so callers must not each
fetch their own).

Where OpenIM fails a whole batch because of some of its items (1102 on
register, a duplicate-key 500 or 1004 on invite, 1004 on import_friend),
the client asks the server which items caused it, answers those, and sends
the rest again: one call when nothing is wrong, three when something is.

Facts are from vendors.md and the server's source (openimsdk/open-im-server
v3 main and v2.3.3, openimsdk/protocol).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

import httpx

from .base import FieldRule, Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import CallFailed, Reply, Throttle, VendorClient, chunks, same_for_all

API_VERSIONS = ("v3", "v2")
ADMIN_PLATFORM_ID = 10  # v3 refuses user tokens for it
MAX_IDS_PER_CALL = 1000  # openimsdk/protocol constant.ParamMaxLength
TOKEN_MARGIN = 60.0  # fetch a new admin token this long before the old one expires

TEXT, CUSTOM = 101, 110  # contentType
SINGLE_CHAT = 1
GROUP_CHAT = {"v3": 3, "v2": 2}  # v3 ReadGroupChatType; v2 GroupChatType
GROUP_TYPE = {"v3": 2, "v2": 0}  # v3 accepts only WorkingGroup; v2 NormalGroup
V2_ORDINARY_MEMBER = 1  # v2 roleLevel

# v3 codes (pkg/common/servererrs, tools/errs)
V3_TOKEN_CODES = range(1501, 1508)
V2_TOKEN_CODES = range(700, 709)
EXISTS_CODES = {1102, 1202}
RETRYABLE_CODES = {500, 802, 90002, 90004}  # internal, v2 DB error, v3 DB/network
AUTH_CODES = {"v3": {1002}, "v2": {401, 801}}  # no permission / wrong secret / v2 no access
ECHOED_TOKEN = re.compile(r"(token\s*[:=]\s*)\S+", re.IGNORECASE)


def new_operation_id() -> str:
    """A fresh random operationID; OpenIM only needs it non-empty and uses it to trace logs."""
    return secrets.token_hex(16)


def _user_id_rule(v3: bool) -> FieldRule:
    if v3:  # protocol datautil.IsLegalUserID: unicode letters, digits, '_'
        return FieldRule(max_len=64, required=True, pattern=r"\w+", pattern_hint="letters, digits and _")
    return FieldRule(max_len=64, required=True)  # v2 binding: min=1,max=64


_COMMON_FIELDS = {
    "avatar": FieldRule(max_len=1024, unit="bytes"),  # faceURL
    "ex": FieldRule(max_len=1024),
}
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
}
RULES_V3 = VendorRules(
    fields={"user_id": _user_id_rule(True), "name": FieldRule(max_len=64, required=True), **_COMMON_FIELDS},
    batch_size=RULES_BATCH, rates=RULES_RATES)
RULES_V2 = VendorRules(  # v2 ApiUserInfo binding; register is one user per call
    fields={"user_id": _user_id_rule(False), "name": FieldRule(max_len=64), **_COMMON_FIELDS,
            "gender": FieldRule(choices=("0", "1", "2")),
            "phoneNumber": FieldRule(max_len=32),
            "birth": FieldRule(max_len=10, pattern=r"[0-9]+", pattern_hint="a uint32 number"),
            "email": FieldRule(max_len=64)},
    batch_size={**RULES_BATCH, Operation.REGISTER: 1}, rates=RULES_RATES)
V2_NUMBER_FIELDS = ("gender", "birth")


@dataclass(frozen=True)
class OpenIMConfig:
    """One OpenIM deployment. `platform_id` is the platform user tokens are
    issued for: a token only works on its platform, so set it to your
    clients' platform (default 5, Web)."""

    secret: str = field(repr=False)  # share.yml `secret` (server default openIM123)
    base_url: str = "http://127.0.0.1:10002"  # openim-api's default port
    admin_user_id: str = "imAdmin"  # share.yml imAdminUser.userIDs[0]
    platform_id: int = 5
    api_version: str = "v3"

    def __post_init__(self) -> None:
        if not self.secret or len(self.secret) > 32:
            raise ValueError("secret: 1 to 32 characters")
        if self.api_version not in API_VERSIONS:
            raise ValueError(f"api_version: one of {', '.join(API_VERSIONS)}")
        top = 11 if self.api_version == "v3" else 7  # v2 register takes 1..7
        if not 1 <= self.platform_id <= top or self.platform_id == ADMIN_PLATFORM_ID:
            raise ValueError(f"platform_id: 1..{top}, not {ADMIN_PLATFORM_ID} (Admin)")


class OpenIMClient(VendorClient):
    vendor = "openim"
    capabilities = frozenset(Operation)
    rules = RULES_V3  # an instance for API v2 carries RULES_V2 instead

    def __init__(self, config: OpenIMConfig, http: httpx.AsyncClient, *,
                 throttle: Throttle | None = None, timeout: float = 10.0):
        super().__init__(config, http, throttle=throttle, timeout=timeout)
        self.config = config
        self.version = config.api_version
        self.v3 = self.version == "v3"
        self.rules = RULES_V3 if self.v3 else RULES_V2
        self.clock: Callable[[], float] = time.time  # wall clock: v2 gives absolute expiry times
        self._admin_token: str | None = None
        self._admin_expires = 0.0
        self._token_lock = asyncio.Lock()

    # -- calls ---------------------------------------------------------------------------

    async def _post(self, key: str, path: str, body: dict[str, Any], *,
                    token: str | None = None) -> Reply:
        operation_id = new_operation_id()
        headers = {"operationID": operation_id}
        if token:
            headers["token"] = token
        if not self.v3:
            body = {**body, "operationID": operation_id}
        return await self._request(key, "POST", self.config.base_url.rstrip("/") + path,
                                   json=body, headers=headers)

    async def _admin_call(self, key: str, path: str, body: dict[str, Any]) -> Reply:
        """A call with the admin token; a token the server refuses is replaced once."""
        token = await self._token()
        reply = await self._post(key, path, body, token=token)
        if self._token_refused(reply):
            token = await self._token(stale=token)
            reply = await self._post(key, path, body, token=token)
        return reply

    async def _token(self, stale: str | None = None) -> str:
        """The cached admin token, fetched when missing, expiring, or `stale`.
        One fetch at a time: concurrent callers wait and share it."""
        async with self._token_lock:
            fresh = self._admin_token is not None and self._admin_token != stale
            if fresh and self.clock() < self._admin_expires - TOKEN_MARGIN:
                return self._admin_token
            self._admin_token = None
            if self.v3:
                reply = await self._post("auth", "/auth/get_admin_token", {
                    "secret": self.config.secret, "userID": self.config.admin_user_id})
            else:
                reply = await self._post("auth", "/auth/user_token", {
                    "secret": self.config.secret, "platform": self.config.platform_id,
                    "userID": self.config.admin_user_id})
            result = self._classify(reply)
            data = reply.body.get("data") or {}
            if not result.succeeded or not data.get("token"):
                if result.outcome is Outcome.REJECTED:  # e.g. 1001 "userID is error": a config problem
                    result = Result(Outcome.AUTH, result.code, f"admin token refused: {result.message}")
                raise CallFailed(result)
            self._admin_token = str(data["token"])
            self._admin_expires = self._expiry(data)
            return self._admin_token

    def _expiry(self, data: dict[str, Any]) -> float:
        """v3 `expireTimeSeconds` is a duration; v2 `expiredTime` is epoch seconds."""
        if self.v3:
            return self.clock() + float(data.get("expireTimeSeconds") or 0)
        return float(data.get("expiredTime") or 0)

    def _token_refused(self, reply: Reply) -> bool:
        code, message = _code(reply), _message(reply.body)
        if self.v3:
            return code in V3_TOKEN_CODES
        # v2.3 handlers answer a bad token as HTTP 400 with errCode 500 or 400 and a message
        # about the token; "Key: '" starts a binding error, which may name a ...TokenReq struct
        return code in V2_TOKEN_CODES or (reply.status == 400 and "token" in message.lower()
                                          and "Key: '" not in message)

    # -- reply classification ------------------------------------------------------------

    def _classify(self, reply: Reply) -> Result:
        code = _code(reply)
        message = self._scrub(_message(reply.body))
        if reply.status == 429 or code == 429:  # the optional BBR limiter
            return Result(Outcome.RATE_LIMITED, str(code or "http 429"), message or "too many requests",
                          retry_after=reply.retry_after())
        if code is None:
            outcome = (Outcome.RETRYABLE if reply.status >= 500 else
                       Outcome.AUTH if reply.status in (401, 403) else
                       Outcome.OK if reply.status == 200 else Outcome.REJECTED)
            if outcome is Outcome.OK:
                outcome, message = Outcome.RETRYABLE, "reply without errCode"
            return Result(outcome, f"http {reply.status}", message)
        raw = str(code)
        if code == 0 and reply.status == 200:
            return Result(Outcome.OK, raw, message)
        v2_not_admin = not self.v3 and "not authorized" in message  # admin_user_id is no app manager
        if self._token_refused(reply) or code in AUTH_CODES[self.version] or v2_not_admin:
            return Result(Outcome.AUTH, raw, message)
        if code in EXISTS_CODES:
            return Result(Outcome.EXISTS, raw, message)
        if code in RETRYABLE_CODES or reply.status >= 500:
            return Result(Outcome.RETRYABLE, raw, message)
        if code == 810 and not self.v3:  # v2 send limit
            return Result(Outcome.RATE_LIMITED, raw, message)
        return Result(Outcome.REJECTED, raw, message)

    def _scrub(self, message: str) -> str:
        """v2 echoes the refused token ("token:<it>") in its message: keep secrets out of results."""
        message = ECHOED_TOKEN.sub(r"\1***", message)
        for secret in (self._admin_token, self.config.secret):
            if secret:
                message = message.replace(secret, "***")
        return message

    def _check_ids(self, name: str, ids: Iterable[str]) -> dict[str, str]:
        """Ids the user_id rule refuses, with the reason naming `name`."""
        rule = self.rules.fields["user_id"]
        return {i: problem for i in ids if (problem := rule.check(name, i))}

    # -- users ---------------------------------------------------------------------------

    async def _users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored users by id (unknown ids are left out). Raises CallFailed."""
        found: dict[str, dict[str, Any]] = {}
        for batch in chunks(list(user_ids), self.rules.batch_size[Operation.GET_PROFILES]):
            key = "userIDs" if self.v3 else "userIDList"
            reply = await self._admin_call(Operation.GET_PROFILES.value, "/user/get_users_info",
                                           {key: list(batch)})
            result = self._classify(reply)
            if not result.succeeded:
                raise CallFailed(result)
            data = reply.body.get("data")
            users = _field(data, "usersInfo") if self.v3 else data  # v2: the list itself
            found.update({u["userID"]: u for u in users if isinstance(u, dict) and "userID" in u})
        return found

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        results, todo, repeats = self._checked(profiles)
        if self.v3:
            for batch in chunks(todo, self.rules.batch_size[Operation.REGISTER]):
                for index, result in zip(batch, await self._register_v3([profiles[i] for i in batch])):
                    results[index] = result
        else:
            for index in todo:
                results[index] = await self._register_v2(profiles[index])
        return _mirror_repeats(results, repeats)

    def _checked(self, profiles: Sequence[Profile]) -> tuple[list[Result | None], list[int], dict[int, int]]:
        """Client-side check: invalid rows become `rejected`. Returns the
        results so far, the indexes to send, and repeats of a user id
        (index -> index of its first valid occurrence), which are not sent."""
        results: list[Result | None] = [None] * len(profiles)
        todo, first, repeats = [], {}, {}
        for index, profile in enumerate(profiles):
            errors = self.rules.check_profile(profile)
            if errors:
                results[index] = Result(Outcome.REJECTED, "invalid", "; ".join(errors))
            elif profile.user_id in first:
                repeats[index] = first[profile.user_id]
            else:
                first[profile.user_id] = index
                todo.append(index)
        return results, todo, repeats

    async def _register_v3(self, batch: list[Profile], rounds: int = 2) -> list[Result]:
        """One batch; on 1102 (some already exist, the whole batch refused)
        ask which exist and register the rest; on 1001 halve the batch to
        keep one bad row from sinking the others."""
        try:
            reply = await self._admin_call(Operation.REGISTER.value, "/user/user_register",
                                           {"users": [_user_v3(p) for p in batch]})
            result = self._classify(reply)
            if result.outcome is Outcome.OK:
                return [Result(Outcome.OK, "0", data={"user_id": p.user_id}) for p in batch]
            if reply.body.get("errCode") == 1102 and rounds:
                existing = await self._users([p.user_id for p in batch])
                if existing:
                    rest = [p for p in batch if p.user_id not in existing]
                    done = iter(await self._register_v3(rest, rounds - 1) if rest else [])
                    return [Result(Outcome.EXISTS, "1102", "user already registered",
                                   data={"user_id": p.user_id})
                            if p.user_id in existing else next(done) for p in batch]
                result = Result(Outcome.RETRYABLE, "1102", "the server says registered, but none is found")
            if reply.body.get("errCode") == 1001 and len(batch) > 1:
                half = len(batch) // 2
                return (await self._register_v3(batch[:half], rounds)
                        + await self._register_v3(batch[half:], rounds))
            return same_for_all(result, len(batch))
        except CallFailed as failed:
            return same_for_all(failed.result, len(batch))

    async def _register_v2(self, profile: Profile) -> Result:
        """v2 registers one user and returns a token; an existing user is an HTTP 500."""
        body = {"secret": self.config.secret, "platform": self.config.platform_id, **_user_v2(profile)}
        try:
            reply = await self._post(Operation.REGISTER.value, "/auth/user_register", body)
            result = self._classify(reply)
            if result.outcome is Outcome.OK:
                data = reply.body.get("data") or {}
                return Result(Outcome.OK, "0", data={"user_id": profile.user_id, "token": data.get("token"),
                                                     "expires_at": data.get("expiredTime")})
            if result.outcome is Outcome.RETRYABLE and profile.user_id in await self._users([profile.user_id]):
                return Result(Outcome.EXISTS, result.code, "user already registered",
                              data={"user_id": profile.user_id})
            return result
        except CallFailed as failed:
            return failed.result

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """Sets the given fields; empty ones are left as stored."""
        results, todo, repeats = self._checked(profiles)
        for index in todo:
            profile = profiles[index]
            if self.v3:
                path, body = "/user/update_user_info_ex", {"userInfo": _user_v3(profile, partial=True)}
            else:
                path, body = "/user/update_user_info", _user_v2(profile)
            try:
                reply = await self._admin_call(Operation.UPDATE_PROFILE.value, path, body)
                results[index] = self._with(self._classify(reply), user_id=profile.user_id)
            except CallFailed as failed:
                results[index] = failed.result
        return _mirror_repeats(results, repeats)

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Raises CallFailed when the server cannot answer."""
        users = await self._users(list(dict.fromkeys(user_ids)))
        return [self._profile(users[u]) if u in users else None for u in user_ids]

    def _profile(self, user: dict[str, Any]) -> Profile:
        extra = {"ex": user.get("ex") or ""}
        if not self.v3:  # v2 get_users_info returns gender (0 when unset) besides ex
            extra["gender"] = str(user.get("gender") or "")
            extra["gender"] = "" if extra["gender"] == "0" else extra["gender"]
        return Profile(user_id=user["userID"], name=user.get("nickname") or "",
                       avatar=user.get("faceURL") or "", extra={k: v for k, v in extra.items() if v})

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        results = []
        for user_id in user_ids:
            problem = self._check_ids("user_id", [user_id]).get(user_id)
            if problem or user_id == self.config.admin_user_id:
                results.append(Result(Outcome.REJECTED, "invalid",
                                      problem or "user_id: the admin account gets no user token"))
                continue
            try:
                results.append(await self._issue_token(user_id))
            except CallFailed as failed:
                results.append(failed.result)
        return results

    async def _issue_token(self, user_id: str) -> Result:
        if self.v3:
            reply = await self._admin_call(Operation.ISSUE_TOKEN.value, "/auth/get_user_token", {
                "platformID": self.config.platform_id, "userID": user_id})
        else:  # v2: the secret buys any user's token directly
            reply = await self._post(Operation.ISSUE_TOKEN.value, "/auth/user_token", {
                "secret": self.config.secret, "platform": self.config.platform_id, "userID": user_id})
        result = self._classify(reply)
        if result.outcome is Outcome.OK:
            data = reply.body.get("data") or {}
            return Result(Outcome.OK, "0", data={"user_id": user_id, "token": data.get("token"),
                                                 "expires_at": round(self._expiry(data))})
        if self.v3 and result.code == "1002":
            # Our token is an admin's (get_admin_token checks that), so 1002 here
            # means the target: an admin account, which gets no user token.
            return Result(Outcome.REJECTED, result.code, result.message)
        return result

    async def list_users(self, page_size: int = 200) -> AsyncIterator[str]:
        """Every user id except the configured admin. Raises CallFailed."""
        size = max(1, min(page_size, self.rules.batch_size[Operation.LIST_USERS]))
        page = 1
        while True:
            body = {"pagination": {"pageNumber": page, "showNumber": size}} if self.v3 else {}
            reply = await self._admin_call(Operation.LIST_USERS.value, "/user/get_all_users_uid", body)
            result = self._classify(reply)
            if not result.succeeded:
                raise CallFailed(result)
            data = reply.body.get("data")
            ids = _field(data, "userIDs") if self.v3 else data or []  # v2: one list, no pages
            for user_id in ids:
                if user_id != self.config.admin_user_id:
                    yield user_id
            total = data.get("total") if isinstance(data, dict) else None
            if not self.v3 or len(ids) < size or (isinstance(total, int) and page * size >= total):
                return
            page += 1

    # -- messages ------------------------------------------------------------------------

    def _message_fields(self, sender: str, message: Message) -> dict[str, Any]:
        if message.text is not None:
            content = {"content" if self.v3 else "text": message.text}
            return {"sendID": sender, "contentType": TEXT, "content": content}
        data = json.dumps(message.custom, ensure_ascii=False, separators=(",", ":"))
        return {"sendID": sender, "contentType": CUSTOM,
                "content": {"data": data, "description": "", "extension": ""}}

    def _message_problem(self, sender: str, message: Message) -> Result | None:
        problem = self._check_ids("sender", [sender]).get(sender)
        if message.text == "":
            problem = "text: required"  # the server fails an empty text with a 500
        return Result(Outcome.REJECTED, "invalid", problem) if problem else None

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        """OpenIM has no deduplication key: `dedup_key` is not used."""
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(recipients))
        results: list[Result | None] = [None] * len(recipients)
        bad = self._check_ids("recipient", recipients)
        todo = [i for i, r in enumerate(recipients) if r not in bad]
        for i, r in enumerate(recipients):
            if r in bad:
                results[i] = Result(Outcome.REJECTED, "invalid", bad[r])
        for batch in chunks(todo, self.rules.batch_size[Operation.SEND]):
            ids = [recipients[i] for i in batch]
            for index, result in zip(batch, await self._send_batch(sender, ids, message)):
                results[index] = result
        return results

    async def _send_batch(self, sender: str, recipients: list[str], message: Message) -> list[Result]:
        """batch_send_msg answers errCode 0 even when some recipients failed:
        each failed one is sent again alone, which gives its reason."""
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "isSendAll": False,
                  "recvIDs" if self.v3 else "recvIDList": recipients}
        try:
            reply = await self._admin_call(Operation.SEND.value, "/msg/batch_send_msg", fields)
            result = self._classify(reply)
            if result.outcome is not Outcome.OK:
                return same_for_all(result, len(recipients))
            sent, failed = self._batch_outcome(reply)
            results = []
            for recipient in recipients:
                if recipient in sent:
                    results.append(Result(Outcome.OK, "0", data={"user_id": recipient, "msg_id": sent[recipient]}))
                elif recipient in failed:
                    results.append(await self._send_one(sender, recipient, message))
                else:
                    results.append(Result(Outcome.RETRYABLE, "missing", "the reply does not name this recipient",
                                          maybe_delivered=True))
            return results
        except CallFailed as failed:
            return same_for_all(failed.result, len(recipients))

    def _batch_outcome(self, reply: Reply) -> tuple[dict[str, str], set[str]]:
        data = reply.body.get("data") or {}
        listed = data.get("results" if self.v3 else "resultList") or []
        failed = data.get("failedUserIDs" if self.v3 else "FailedIDList") or []
        sent = {r.get("recvID"): r.get("serverMsgID") or r.get("clientMsgID") for r in listed if isinstance(r, dict)}
        return sent, set(failed)

    async def _send_one(self, sender: str, recipient: str, message: Message) -> Result:
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "recvID": recipient}
        try:
            reply = await self._admin_call(Operation.SEND.value, self._send_path, fields)
        except CallFailed as failed:
            return failed.result
        return self._sent(reply, user_id=recipient)

    @property
    def _send_path(self) -> str:
        return "/msg/send_msg" if self.v3 else "/msg/manage_send_msg"

    def _sent(self, reply: Reply, **data: Any) -> Result:
        result = self._classify(reply)
        if result.outcome is not Outcome.OK:
            return result
        body = reply.body.get("data") or {}
        return Result(Outcome.OK, "0", data={**data, "msg_id": body.get("serverMsgID") or body.get("clientMsgID")})

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(group_ids))
        results = []
        for group_id in group_ids:
            if not group_id:
                results.append(Result(Outcome.REJECTED, "invalid", "group_id: required"))
                continue
            fields = {**self._message_fields(sender, message), "sessionType": GROUP_CHAT[self.version],
                      "groupID": group_id}
            try:
                reply = await self._admin_call(Operation.SEND_GROUP.value, self._send_path, fields)
                results.append(self._sent(reply, group_id=group_id))
            except CallFailed as failed:
                results.append(failed.result)
        return results

    async def broadcast(self, sender: str, message: Message, *, dedup_key: str | None = None) -> Result:
        """batch_send_msg with isSendAll: the server lists every user itself.
        Recipients it failed are named in data["failed_user_ids"]."""
        problem = self._message_problem(sender, message)
        if problem:
            return problem
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "isSendAll": True,
                  "recvIDs" if self.v3 else "recvIDList": []}
        try:
            reply = await self._admin_call(Operation.BROADCAST.value, "/msg/batch_send_msg", fields)
        except CallFailed as failed:
            return failed.result
        result = self._classify(reply)
        if result.outcome is not Outcome.OK:
            return result
        sent, failed = self._batch_outcome(reply)
        message_text = f"{len(failed)} recipients failed" if failed else ""
        return Result(Outcome.OK, "0", message_text, data={"sent": len(sent), "failed_user_ids": sorted(failed)})

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """Keeps the caller's group id. Up to 1000 members go with the
        creation, the rest by invitation. A group that exists already is
        `exists`, and its missing members are added, so a repeat completes
        an interrupted creation."""
        bad = self._check_ids("owner", [group.owner]) | self._check_ids("member", group.members)
        if bad or not group.group_id:
            return Result(Outcome.REJECTED, "invalid", "; ".join(bad.values()) or "group_id: required")
        members = [m for m in dict.fromkeys(group.members) if m != group.owner]
        first, rest = members[:MAX_IDS_PER_CALL], members[MAX_IDS_PER_CALL:]
        try:
            reply = await self._admin_call(Operation.CREATE_GROUP.value, "/group/create_group",
                                           self._group_body(group, first))
            result = self._classify(reply)
            if result.outcome is Outcome.RETRYABLE and not self.v3 and await self._group_exists(group.group_id):
                result = Result(Outcome.EXISTS, result.code, "group id exists")  # v2 says 802 (DB error)
        except CallFailed as failed:
            return failed.result
        if result.outcome is Outcome.EXISTS:
            try:
                rest = await self._not_members(group.group_id, members)
            except CallFailed as failed:
                return failed.result
        elif result.outcome is not Outcome.OK:
            return result
        added = await self.add_members(group.group_id, group.owner, rest) if rest else []
        worst = _worst([r for r in added if not r.succeeded])
        if worst:
            return Result(worst.outcome, worst.code, f"group {result.outcome}; some members not added: {worst.message}")
        return Result(result.outcome, result.code, result.message, data={"group_id": group.group_id})

    def _group_body(self, group: Group, members: list[str]) -> dict[str, Any]:
        if self.v3:
            return {"ownerUserID": group.owner, "memberUserIDs": members, "adminUserIDs": [],
                    "groupInfo": {"groupID": group.group_id, "groupName": group.name,
                                  "groupType": GROUP_TYPE["v3"]}}
        return {"ownerUserID": group.owner, "groupID": group.group_id, "groupName": group.name,
                "groupType": GROUP_TYPE["v2"],
                "memberList": [{"userID": m, "roleLevel": V2_ORDINARY_MEMBER} for m in members]}

    async def _group_exists(self, group_id: str) -> bool:
        reply = await self._admin_call(Operation.CREATE_GROUP.value, "/group/get_groups_info",
                                       {"groupIDList": [group_id]})
        return self._classify(reply).succeeded and bool(reply.body.get("data"))

    async def _members(self, group_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of `user_ids` are members of the group. Raises CallFailed."""
        body = ({"groupID": group_id, "userIDs": list(user_ids)} if self.v3
                else {"groupID": group_id, "memberList": list(user_ids)})
        reply = await self._admin_call(Operation.ADD_MEMBERS.value, "/group/get_group_members_info", body)
        result = self._classify(reply)
        if not result.succeeded:
            raise CallFailed(result)
        data = reply.body.get("data")
        members = _field(data, "members") if self.v3 else data or []
        return {m.get("userID") for m in members if isinstance(m, dict)}

    async def _not_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        missing = []
        for batch in chunks(user_ids, MAX_IDS_PER_CALL):
            members = await self._members(group_id, batch)
            missing += [u for u in batch if u not in members]
        return missing

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        """The admin invites; `owner` is not needed by OpenIM."""
        return await self._per_id(members, "member", lambda batch: self._invite(group_id, batch))

    async def _invite(self, group_id: str, user_ids: list[str], rounds: int = 2) -> list[Result]:
        """Inviting a member again fails the whole call (v3: a duplicate-key
        500; v2: -1 for that user), as does an unknown user (v3: 1004): ask
        which ids are members or unknown, answer those, invite the rest."""
        key = "invitedUserIDs" if self.v3 else "invitedUserIDList"
        try:
            reply = await self._admin_call(Operation.ADD_MEMBERS.value, "/group/invite_user_to_group",
                                           {"groupID": group_id, key: user_ids, "reason": ""})
            result = self._classify(reply)
            per_user = self._per_user_results(reply)
            if not self.v3 and per_user is not None:
                refused = [u for u in user_ids if per_user.get(u, -1) != 0]
                members = await self._members(group_id, refused) if refused else set()
                return [_exists(u, "already a member") if u in members else
                        Result(Outcome.REJECTED, str(per_user.get(u, "missing")),
                               f"member: {u!r} not added (no such user?)") if u in refused else
                        Result(Outcome.OK, "0", data={"user_id": u}) for u in user_ids]
            if result.outcome is Outcome.OK:
                return [Result(Outcome.OK, "0", data={"user_id": u}) for u in user_ids]
            if result.code in ("500", "1004") and rounds:
                members = await self._members(group_id, user_ids)
                others = [u for u in user_ids if u not in members]
                unknown = set(others) - set(await self._users(others)) if others else set()
                if members or unknown:
                    rest = [u for u in others if u not in unknown]
                    done = iter(await self._invite(group_id, rest, rounds - 1) if rest else [])
                    return [_exists(u, "already a member") if u in members else
                            Result(Outcome.REJECTED, "1004", f"member: no such user {u!r}") if u in unknown else
                            next(done) for u in user_ids]
            return same_for_all(result, len(user_ids))
        except CallFailed as failed:
            return same_for_all(failed.result, len(user_ids))

    def _per_user_results(self, reply: Reply) -> dict[str, int] | None:
        """v2's per-user `result` list (0 = done), when the reply has one."""
        data = reply.body.get("data")
        if not isinstance(data, list):
            return None
        return {d.get("userID"): d.get("result") for d in data if isinstance(d, dict)}

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """Pairs already friends are skipped by the server, so a repeat is `ok`."""
        problem = self._check_ids("owner", [owner]).get(owner)
        if problem:
            return same_for_all(Result(Outcome.REJECTED, "invalid", problem), len(friend_ids))
        ours = [f for f in friend_ids if f != owner]
        results = await self._per_id(ours, "friend_id", lambda batch: self._import(owner, batch))
        done = iter(results)
        return [Result(Outcome.REJECTED, "invalid", "friend_id: the owner cannot befriend itself")
                if f == owner else next(done) for f in friend_ids]

    async def _import(self, owner: str, friend_ids: list[str], rounds: int = 1) -> list[Result]:
        body = ({"ownerUserID": owner, "friendUserIDs": friend_ids} if self.v3
                else {"fromUserID": owner, "friendUserIDList": friend_ids})
        try:
            reply = await self._admin_call(Operation.IMPORT_FRIENDS.value, "/friend/import_friend", body)
            result = self._classify(reply)
            per_user = self._per_user_results(reply)
            if not self.v3 and per_user is not None:
                return [Result(Outcome.OK, "0", data={"user_id": f}) if per_user.get(f) == 0 else
                        Result(Outcome.REJECTED, str(per_user.get(f, "missing")),
                               f"friend_id: {f!r} not imported {result.message}".strip())
                        for f in friend_ids]
            if result.outcome is Outcome.OK:
                return [Result(Outcome.OK, "0", data={"user_id": f}) for f in friend_ids]
            if result.code == "1004" and rounds:  # some user is missing: find who
                known = await self._users([owner, *friend_ids])
                if owner not in known:
                    return same_for_all(Result(Outcome.REJECTED, "1004", f"owner: no such user {owner!r}"),
                                        len(friend_ids))
                rest = [f for f in friend_ids if f in known]
                if len(rest) < len(friend_ids):
                    done = iter(await self._import(owner, rest, rounds - 1) if rest else [])
                    return [next(done) if f in known else
                            Result(Outcome.REJECTED, "1004", f"friend_id: no such user {f!r}") for f in friend_ids]
            return same_for_all(result, len(friend_ids))
        except CallFailed as failed:
            return same_for_all(failed.result, len(friend_ids))

    async def _per_id(self, ids: Sequence[str], name: str,
                      call: Callable[[list[str]], Awaitable[list[Result]]]) -> list[Result]:
        """Check ids, send each distinct valid id once in batches of 1000,
        and give repeats the first one's answer (OpenIM refuses repeated ids)."""
        bad = self._check_ids(name, ids)
        results: list[Result | None] = [Result(Outcome.REJECTED, "invalid", bad[i]) if i in bad else None
                                        for i in ids]
        distinct = list(dict.fromkeys(i for i in ids if i not in bad))
        answers: dict[str, Result] = {}
        for batch in chunks(distinct, MAX_IDS_PER_CALL):
            answers.update(zip(batch, await call(list(batch))))
        return [r if r is not None else answers[i] for r, i in zip(results, ids)]

    @staticmethod
    def _with(result: Result, **data: Any) -> Result:
        if result.outcome is not Outcome.OK:
            return result
        return Result(result.outcome, result.code, result.message, data=data)


def _code(reply: Reply) -> int | None:
    code = reply.body.get("errCode")
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _field(data: Any, key: str) -> list[Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def _message(body: dict[str, Any]) -> str:
    parts = [str(body.get(k) or "") for k in ("errMsg", "errDlt")]
    return " ".join(p for p in parts if p)[:300]


def _user_v3(profile: Profile, *, partial: bool = False) -> dict[str, Any]:
    fields = {"userID": profile.user_id, "nickname": profile.name, "faceURL": profile.avatar,
              "ex": profile.extra.get("ex", "")}
    if partial:  # update_user_info_ex changes only the fields present
        return {k: v for k, v in fields.items() if v or k == "userID"}
    return fields


def _user_v2(profile: Profile) -> dict[str, Any]:
    fields: dict[str, Any] = {"userID": profile.user_id, "nickname": profile.name, "faceURL": profile.avatar}
    for key, value in profile.extra.items():
        fields[key] = int(value) if key in V2_NUMBER_FIELDS else value
    return {k: v for k, v in fields.items() if v != "" or k == "userID"}


def _exists(user_id: str, message: str) -> Result:
    return Result(Outcome.EXISTS, "exists", message, data={"user_id": user_id})


def _mirror_repeats(results: list[Result | None], repeats: dict[int, int]) -> list[Result]:
    """A repeated id in one input is sent once; the repeat reports `exists`
    when the first succeeded, the same failure otherwise."""
    for index, first in repeats.items():
        earlier = results[first]
        assert earlier is not None
        results[index] = (Result(Outcome.EXISTS, "repeat", "user_id repeated in the input", data=earlier.data)
                          if earlier.succeeded else earlier)
    return [r for r in results if r is not None]


_SEVERITY = [Outcome.AUTH, Outcome.RATE_LIMITED, Outcome.RETRYABLE, Outcome.REJECTED]


def _worst(results: Sequence[Result]) -> Result | None:
    for outcome in _SEVERITY:
        for result in results:
            if result.outcome is outcome:
                return result
    return None
