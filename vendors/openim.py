"""OpenIM (self-hosted, open source) server API client: what API v3 and v2 share.

OpenIM has no request signature: the shared `secret` buys an admin token,
and every other call carries that token in a `token` header plus a fresh
random `operationID` (a header in v3, a body field in v2); `OpenIMAuth`
stamps both, and the token's keeping is in openim_auth.py.
`OpenIMClient(config, ...)` builds the class
for the config's API version: `OpenIMV3Client` (openim_v3.py),
`OpenIMV2Client` (openim_v2.py) or `OpenIMV1Client` (openim_v1.py, the early
API), with each version's endpoints, payload
shapes, rules and reply parsing; the flows both run alike are here. Facts:
docs/vendors.md and the server's source (openimsdk/open-im-server v3 main and
v2.3.3, openimsdk/protocol).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Sequence

import httpx

from .vocabulary import Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import Batch, CallFailed, Reply, VendorClient, chunks, invalid, same_for_all
from .openim_auth import AdminToken, OpenIMAuth
from .paging import offset_pages

API_VERSIONS = ("v3", "v2", "v1")
ADMIN_PLATFORM_ID = 10  # v3 refuses user tokens for it
MAX_IDS_PER_CALL = 1000  # openimsdk/protocol constant.ParamMaxLength
TEXT, CUSTOM = 101, 110  # contentType
SINGLE_CHAT = 1
MSG_ID = ("data.serverMsgID",)  # what an OK send_msg reply must carry (both versions name it)
TOKEN = ("data.token",)  # ... and a token reply
ECHOED_TOKEN = re.compile(r"(token\s*[:=]\s*)\S+", re.IGNORECASE)


def new_operation_id() -> str:
    """A fresh random operationID; OpenIM only needs it non-empty and uses it to trace logs."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class OpenIMConfig:
    """One OpenIM deployment. `platform_id` is the platform user tokens are
    issued for: a token only works on its platform, so set it to your
    clients' platform (default 5, Web). `concurrency`: per-item calls in
    flight per method call."""

    secret: str = field(repr=False)  # share.yml `secret` (server default openIM123)
    base_url: str = "http://127.0.0.1:10002"  # openim-api's default port
    admin_user_id: str = "imAdmin"  # share.yml imAdminUser.userIDs[0]
    platform_id: int = 5
    api_version: str = "v3"
    concurrency: int = 8
    # The secret in the webhooks' URL (v3): OpenIM signs nothing,
    # so this is what tells its deliveries from anyone else's.
    feed_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.secret or len(self.secret) > 32:
            raise ValueError("secret: 1 to 32 characters")
        if self.api_version not in API_VERSIONS:
            raise ValueError(f"api_version: one of {', '.join(API_VERSIONS)}")
        top = 11 if self.api_version == "v3" else 7  # v2 and v1 register take 1..7
        if not 1 <= self.platform_id <= top or self.platform_id == ADMIN_PLATFORM_ID:
            raise ValueError(f"platform_id: 1..{top}, not {ADMIN_PLATFORM_ID} (Admin)")
        if self.concurrency < 1:
            raise ValueError("concurrency: at least 1")


def _by_version(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("implemented by OpenIMV3Client and OpenIMV2Client")


class _DefaultRules:
    """`OpenIMClient.rules` on the class: v3's (the default version), looked up
    when read. Non-data, so an instance's own `rules` (rules_for) wins."""

    def __get__(self, instance: Any, owner: type | None = None) -> VendorRules:
        from .openim_v3 import RULES_V3

        return RULES_V3


class OpenIMClient(AdminToken, VendorClient):
    vendor = "openim"
    capabilities = frozenset(Operation)
    rules = _DefaultRules()
    # The app picks the group id: creating a group again answers `exists`.
    repeat_safe_ops = frozenset({Operation.CREATE_GROUP})

    # -- what each version sets ----------------------------------------------------------
    version: ClassVar[str]
    send_path: ClassVar[str]  # one message
    group_chat: ClassVar[int]  # sessionType of a group message
    text_key: ClassVar[str]  # where a text message's text goes in `content`
    recv_ids_key: ClassVar[str]  # batch_send_msg's recipient list
    sent_key: ClassVar[str]  # ... and its reply's lists of results and failed ids
    failed_key: ClassVar[str]

    def stamp(self, request: httpx.Request, token: str | None) -> httpx.Request:
        """The request with a fresh operationID and `token` (if any), the version's way."""
        raise NotImplementedError

    # ... and these methods: _token_body() -> the token request's body;
    # _expiry(token reply data) -> epoch seconds; _invite(group_id, ids) and
    # _import(owner, ids) -> Results; _members(group_id, ids) -> which of the
    # ids are members; _users(ids) -> stored users by id and
    # _profile_of(user) -> its Profile; _user_ids() -> a PageFetch of user
    # ids; and the operations each version does whole, named here where the
    # registry looks, so that this class says it implements every operation.
    _token_body = _expiry = _invite = _import = _users = _profile_of = _user_ids = _by_version
    _members = _by_version
    register_users = update_profiles = get_profiles = _by_version
    issue_tokens = create_group = get_members = get_friends = _by_version
    list_group_pages = _by_version  # v3 only: v2 takes it off its capabilities

    def __new__(cls, config: OpenIMConfig | None = None, *args: Any, **kwargs: Any) -> OpenIMClient:
        # The registry and the sandbox name only OpenIMClient, and some code
        # calls OpenIMClient(config, http) directly: build the class for the
        # config's API version instead (for_config), and Python then runs that
        # class's __init__ with the same arguments.
        return super().__new__(cls.for_config(config) if config is not None else cls)

    def __init__(self, config: OpenIMConfig, http: httpx.AsyncClient, **kwargs: Any):
        super().__init__(config, http, **kwargs)
        self.config: OpenIMConfig = config
        self.clock: Callable[[], float] = time.time  # wall clock: v2 gives absolute expiry times
        self._admin_token: str | None = None
        self._admin_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._admin_auth = OpenIMAuth(self)
        self._secret_auth = OpenIMAuth(self, admin=False)

    @classmethod
    def for_config(cls, config: Any) -> type[OpenIMClient]:
        if cls is not OpenIMClient:  # a version's class serves the configs it is given
            return cls
        # Imported here: the version modules import this one.
        from .openim_v1 import OpenIMV1Client
        from .openim_v2 import OpenIMV2Client
        from .openim_v3 import OpenIMV3Client

        return {"v1": OpenIMV1Client, "v2": OpenIMV2Client}.get(config.api_version, OpenIMV3Client)

    @classmethod
    def rules_for(cls, config: Any) -> VendorRules:
        return cls.for_config(config).rules

    # -- calls and their replies ---------------------------------------------------------

    async def _post(self, key: str | Operation, path: str, body: dict[str, Any], *,
                    admin: bool = True, expect: Sequence[str] = ()) -> tuple[Result, dict[str, Any]]:
        """A call with the admin token, or (admin=False) with the secret in the
        body; `expect`: what an OK reply must carry (the base's `call`)."""
        return await self.call(key, "POST", self.config.base_url.rstrip("/") + path, json=body,
                               auth=self._admin_auth if admin else self._secret_auth, expect=expect)

    def reply_code(self, body: dict[str, Any]) -> int | None:
        code = body.get("errCode")
        if isinstance(code, str) and code.lstrip("-").isdigit():
            return int(code)
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def reply_message(self, body: dict[str, Any]) -> str:
        parts = [str(body.get(k) or "") for k in ("errMsg", "errDlt")]
        return self._scrub(" ".join(p for p in parts if p)[:300])

    def _not_permitted(self, message: str) -> bool:
        """Whether an error message says the admin account may not do this."""
        return False

    def classify(self, key: str, reply: Reply) -> Result:
        code = self.reply_code(reply.body)
        if code and reply.status != 429:
            message = self.reply_message(reply.body)
            if self._token_refused(reply.status, code, message) or self._not_permitted(message):
                return Result(Outcome.AUTH, str(code), message)
        result = super().classify(key, reply)
        if result.outcome is Outcome.REJECTED and reply.status >= 500:  # v2: HTTP 500 with codes of its own
            return replace(result, outcome=Outcome.RETRYABLE)
        return result

    def _scrub(self, message: str) -> str:
        """v2 echoes the refused token ("token:<it>") in its message: keep secrets out of results."""
        message = ECHOED_TOKEN.sub(r"\1***", message)
        for secret in (self._admin_token, self.config.secret):
            if secret:
                message = message.replace(secret, "***")
        return message

    # -- items ---------------------------------------------------------------------------

    def _id_problem(self, name: str) -> Callable[[str], str | None]:
        rule = self.rules.fields["user_id"]
        return lambda value: rule.check(name, value)

    def _group_problem(self, group: Group) -> str | None:
        """Why create_group refuses `group` before any call, or None."""
        owner, member = self._id_problem("owner"), self._id_problem("member")
        problems = list(dict.fromkeys(filter(None, [owner(group.owner), *map(member, group.members)])))
        return "; ".join(problems) or (None if group.group_id else "group_id: required")

    async def _complete_group(self, group: Group, result: Result, members: list[str],
                              rest: list[str]) -> Result:
        """After create_group: a group that existed gets the members it lacks,
        a new one the members past the first call's."""
        if result.outcome is Outcome.EXISTS:
            try:
                rest = await self._not_members(group.group_id, members)
            except CallFailed as failed:
                return failed.result
        elif result.outcome is not Outcome.OK:
            return result
        lacking = worst(await self.add_members(group.group_id, group.owner, rest))
        if lacking:
            return replace(lacking, message=f"group {result.outcome}; some members not added: "
                                            f"{lacking.message}")
        return replace(result, data={"group_id": group.group_id})

    async def _not_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        missing = []
        for part in chunks(user_ids, MAX_IDS_PER_CALL):
            members = await self._members(group_id, part)
            missing += [u for u in part if u not in members]
        return missing

    def _profiles(self, profiles: Sequence[Profile]) -> tuple[Batch[Profile], list[int], dict[int, int]]:
        """Profiles checked by the rules: the Batch, the indexes to send, and
        repeats of a user id (index -> its first valid occurrence), not sent."""
        batch = Batch(profiles, lambda p: "; ".join(self.rules.check_profile(p)))
        first: dict[str, int] = {}
        todo, repeats = [], {}
        for index in batch.valid:
            user_id = profiles[index].user_id
            if user_id in first:
                repeats[index] = first[user_id]
            else:
                first[user_id] = index
                todo.append(index)
        return batch, todo, repeats

    @staticmethod
    def _mirrored(batch: Batch[Profile], repeats: dict[int, int]) -> list[Result]:
        """The results, a repeat answered `exists` when its first succeeded, else the same."""
        for index, first in repeats.items():
            earlier = batch.results[first]
            assert earlier is not None
            batch.put([index], Result(Outcome.EXISTS, "repeat", "user_id repeated in the input",
                                      data=earlier.data) if earlier.succeeded else earlier)
        return batch.done()

    async def _per_id(self, ids: Sequence[str], name: str,
                      call: Callable[[list[str]], Awaitable[list[Result]]]) -> list[Result]:
        """Check ids, send each distinct valid id once in batches of 1000,
        and give repeats the first one's answer (OpenIM refuses repeated ids)."""
        batch = Batch(ids, self._id_problem(name))
        distinct = list(dict.fromkeys(ids[i] for i in batch.valid))
        answers: dict[str, Result] = {}
        for part in chunks(distinct, MAX_IDS_PER_CALL):
            answers.update(zip(part, await call(list(part)), strict=True))
        batch.put(batch.valid, [answers[ids[i]] for i in batch.valid])
        return batch.done()

    # -- listing users (a migration source) ---------------------------------------------

    async def _id_pages(self, cursor: str | None,
                        page_size: int) -> AsyncIterator[tuple[list[str], str | None]]:
        """Pages of user ids, the configured admin left out, each with the cursor after it."""
        size = max(1, min(page_size, self.rules.batch_size[Operation.LIST_USERS]))
        async for ids, after in offset_pages(self._user_ids(), cursor, size):
            yield [u for u in ids if u != self.config.admin_user_id], after

    async def list_users(self, page_size: int = 200) -> AsyncIterator[str]:
        """Every user id except the configured admin. Raises CallFailed."""
        async for ids, _ in self._id_pages(None, page_size):
            for user_id in ids:
                yield user_id

    async def list_user_pages(self, cursor: str | None = None, page_size: int = 200
                              ) -> AsyncIterator[tuple[list[Profile], str | None]]:
        """Each page's profiles come from one get_users_info call (a user
        deleted meanwhile is left out). Raises CallFailed."""
        async for ids, after in self._id_pages(cursor, page_size):
            users = await self._users(ids) if ids else {}
            yield [self._profile_of(users[u]) for u in ids if u in users], after

    # -- what the two versions share ----------------------------------------------------

    def _token_target(self, user_id: str) -> str | None:
        """Why issue_tokens refuses `user_id` before any call, or None."""
        if user_id == self.config.admin_user_id:
            return "user_id: the admin account gets no user token"
        return self._id_problem("user_id")(user_id)

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        """The admin invites; `owner` is not needed by OpenIM."""
        return await self._per_id(members, "member", lambda part: self._invite(group_id, part))

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """Pairs already friends are skipped by the server, so a repeat is `ok`."""
        problem = self._id_problem("owner")(owner)
        if problem:
            return same_for_all(invalid(problem), len(friend_ids))
        ours = [f for f in friend_ids if f != owner]
        done = iter(await self._per_id(ours, "friend_id", lambda part: self._import(owner, part)))
        return [invalid("friend_id: the owner cannot befriend itself") if f == owner else next(done)
                for f in friend_ids]

    # -- messages ------------------------------------------------------------------------

    def _message_fields(self, sender: str, message: Message) -> dict[str, Any]:
        if message.text is not None:
            return {"sendID": sender, "contentType": TEXT, "content": {self.text_key: message.text}}
        data = json.dumps(message.custom, ensure_ascii=False, separators=(",", ":"))
        return {"sendID": sender, "contentType": CUSTOM,
                "content": {"data": data, "description": "", "extension": ""}}

    def _message_problem(self, sender: str, message: Message) -> Result | None:
        problem = self._id_problem("sender")(sender)
        if message.text == "":
            problem = "text: required"  # the server fails an empty text with a 500
        return invalid(problem) if problem else None

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        """OpenIM has no deduplication key: `dedup_key` is not used."""
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(recipients))
        batch = Batch(recipients, self._id_problem("recipient"))
        for part in chunks(batch.valid, self.rules.batch_size[Operation.SEND]):
            batch.put(part, await self._send_batch(sender, [recipients[i] for i in part], message))
        return batch.done()

    async def _send_batch(self, sender: str, recipients: list[str], message: Message) -> list[Result]:
        """batch_send_msg answers errCode 0 even when some recipients failed:
        each failed one is sent again alone, which gives its reason."""
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "isSendAll": False,
                  self.recv_ids_key: recipients}
        result, body = await self._post(Operation.SEND, "/msg/batch_send_msg", fields)
        if result.outcome is not Outcome.OK:
            return same_for_all(result, len(recipients))
        sent, failed = self._batch_outcome(body)
        again = [r for r in recipients if r not in sent and r in failed]
        answers = dict(zip(again, await self.each(again, lambda r: self._send_one(sender, r, message)), strict=True))
        return [Result(Outcome.OK, "0", data={"user_id": r, "msg_id": sent[r]}) if r in sent else
                answers[r] if r in answers else
                Result(Outcome.RETRYABLE, "missing", "the reply does not name this recipient",
                       maybe_delivered=True) for r in recipients]

    def _batch_outcome(self, body: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
        data = data_of(body)
        # A result without a message id is not a sent message: its recipient is "missing".
        sent = {recv: str(msg_id) for r in listed(data, self.sent_key)
                if isinstance(r, dict) and isinstance(recv := r.get("recvID"), str)
                and (msg_id := r.get("serverMsgID") or r.get("clientMsgID"))}
        return sent, set(listed(data, self.failed_key))

    async def _send_one(self, sender: str, recipient: str, message: Message) -> Result:
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "recvID": recipient}
        return _sent(*await self._post(Operation.SEND, self.send_path, fields, expect=MSG_ID),
                     user_id=recipient)

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        problem = self._message_problem(sender, message)
        if problem:
            return same_for_all(problem, len(group_ids))

        async def one(group_id: str) -> Result:
            fields = {**self._message_fields(sender, message), "sessionType": self.group_chat,
                      "groupID": group_id}
            return _sent(*await self._post(Operation.SEND_GROUP, self.send_path, fields, expect=MSG_ID),
                         group_id=group_id)

        return await self.each_valid(group_ids, lambda g: None if g else "group_id: required", one)

    async def broadcast(self, sender: str, message: Message, *, dedup_key: str | None = None) -> Result:
        """batch_send_msg with isSendAll: the server lists every user itself.
        Recipients it failed are named in data["failed_user_ids"]."""
        problem = self._message_problem(sender, message)
        if problem:
            return problem
        fields = {**self._message_fields(sender, message), "sessionType": SINGLE_CHAT, "isSendAll": True,
                  self.recv_ids_key: []}
        result, body = await self._post(Operation.BROADCAST, "/msg/batch_send_msg", fields)
        if result.outcome is not Outcome.OK:
            return result
        sent, failed = self._batch_outcome(body)
        text = f"{len(failed)} recipients failed" if failed else ""
        return Result(Outcome.OK, "0", text, data={"sent": len(sent), "failed_user_ids": sorted(failed)})


def listed(data: Any, key: str | None) -> list[Any]:
    """data[key] as a list, or data itself when key is None ([] when not a list)."""
    value = data if key is None else data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def _sent(result: Result, body: dict[str, Any], **data: Any) -> Result:
    if result.outcome is not Outcome.OK:
        return result
    sent = data_of(body)
    msg_id = sent.get("serverMsgID") or sent.get("clientMsgID")
    return Result(Outcome.OK, "0", data={**data, "msg_id": msg_id})


def ok(user_id: str) -> Result:
    return Result(Outcome.OK, "0", data={"user_id": user_id})


def exists(user_id: str, message: str, code: str = "exists") -> Result:
    return Result(Outcome.EXISTS, code, message, data={"user_id": user_id})


def with_data(result: Result, **data: Any) -> Result:
    return replace(result, data=data) if result.outcome is Outcome.OK else result


_SEVERITY = [Outcome.AUTH, Outcome.RATE_LIMITED, Outcome.RETRYABLE, Outcome.REJECTED]


def worst(results: Sequence[Result]) -> Result | None:
    """The gravest failure among `results`, or None when all succeeded."""
    failed = [r for r in results if not r.succeeded]
    return min(failed, key=lambda r: _SEVERITY.index(r.outcome)) if failed else None
