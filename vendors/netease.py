"""NetEase Yunxin (网易云信) IM server API, v1 (`/nimserver/*.action`).

Every call is a form-encoded POST whose values are all strings, signed with
four headers: AppKey, Nonce, CurTime (UTC seconds) and CheckSum, the lower-case
hex SHA1 of AppSecret + Nonce + CurTime. Replies come with HTTP 200 and a
body `code`; codes are "open" (414 is both "bad parameter", "bad signature"
and "already registered"), so each endpoint's reply is read with its `desc`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, Sequence, TypeVar
from urllib.parse import urlencode

import httpx

from .base import FieldRule, Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import CallFailed, Reply, Throttle, VendorClient, chunks, same_for_all

BASE_URLS = {
    "cn": "https://api.netease.im/nimserver",  # China data centre
    "sg": "https://api-sg.netease.im/nimserver",  # overseas data centre
}
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=utf-8"
MAX_NONCE = 128
MEMBERS_MAX_BYTES = 1024  # team/create and team/add: the `members` JSON text
MEMBERS_MAX_COUNT = 200  # team/add: at most 200 people per call
TEXT_BODY_MAX = 5000  # msg/send*: the `body` JSON text, in characters
BROADCAST_BODY_MAX = 4096

# After an over-limit reply (416) the vendor blocks the app for a while.
BLOCKED_FOR: dict[Operation, float] = {Operation.REGISTER: 10.0, Operation.SEND: 60.0}

# The `desc` words of a 414 that mean the signature headers were refused.
AUTH_DESC_WORDS = ("checksum", "appkey", "curtime", "nonce")
RETRYABLE_CODES = {408, 500, 501, 503}

ACCID_RULE = FieldRule(max_len=32, pattern=r"[A-Za-z0-9_@.\-]+",
                       pattern_hint="letters, digits, _ @ . - only", required=True)


def checksum(secret: str, nonce: str, curtime: str) -> str:
    """The CheckSum header: lower-case hex SHA1 of AppSecret + Nonce + CurTime."""
    return hashlib.sha1((secret + nonce + curtime).encode("utf-8")).hexdigest()


def valid_accids(ids: Sequence[str], field: str, results: Any) -> list[int]:
    """Indexes of the ids that are valid accids; each invalid one gets its
    rejected Result in `results` (a list or dict by index), without a call."""
    valid = []
    for i, accid in enumerate(ids):
        problem = ACCID_RULE.check(field, accid)
        if problem:
            results[i] = Result(Outcome.REJECTED, "invalid", problem)
        else:
            valid.append(i)
    return valid


def json_list(items: Sequence[str]) -> str:
    """A JSON array as the vendor takes it inside a form field, compact."""
    return json.dumps(list(items), ensure_ascii=False, separators=(",", ":"))


def member_slices(members: Sequence[str], max_bytes: int = MEMBERS_MAX_BYTES,
                  max_count: int = MEMBERS_MAX_COUNT) -> list[list[str]]:
    """Split members, in order, into lists whose JSON text fits `max_bytes`."""
    slices: list[list[str]] = []
    current: list[str] = []
    size = 2  # the brackets
    for member in members:
        grows = len(json.dumps(member).encode()) + (1 if current else 0)
        if current and (size + grows > max_bytes or len(current) >= max_count):
            slices.append(current)
            current, size, grows = [], 2, grows - 1
        current.append(member)
        size += grows
    if current:
        slices.append(current)
    return slices


@dataclass(frozen=True)
class NeteaseConfig:
    app_key: str
    app_secret: str = field(repr=False)
    region: Literal["cn", "sg"] = "cn"
    base_url: str | None = None  # overrides the region's host (e.g. a sandbox)
    team_invite_msg: str = "welcome"  # team/create and team/add require one (≤ 150 bytes)
    broadcast_offline: bool = True  # keep broadcasts for users who are offline

    @property
    def url(self) -> str:
        return (self.base_url or BASE_URLS[self.region]).rstrip("/")


PROFILE_EXTRAS = {"sign": 256, "email": 64, "birth": 16, "mobile": 32, "ex": 1024}

T = TypeVar("T")
R = TypeVar("R")


class NeteaseClient(VendorClient):
    vendor = "netease"
    capabilities = frozenset({
        Operation.REGISTER, Operation.UPDATE_PROFILE, Operation.GET_PROFILES,
        Operation.ISSUE_TOKEN, Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST,
        Operation.CREATE_GROUP, Operation.ADD_MEMBERS, Operation.IMPORT_FRIENDS,
    })
    rules = VendorRules(
        fields={
            "user_id": ACCID_RULE,
            "name": FieldRule(max_len=64),
            "avatar": FieldRule(max_len=1024),  # `icon`
            "gender": FieldRule(choices=("0", "1", "2")),
            **{name: FieldRule(max_len=size) for name, size in PROFILE_EXTRAS.items()},
        },
        batch_size={
            Operation.REGISTER: 1, Operation.UPDATE_PROFILE: 1, Operation.GET_PROFILES: 200,
            Operation.ISSUE_TOKEN: 1, Operation.SEND: 500, Operation.SEND_GROUP: 1,
            Operation.BROADCAST: 1, Operation.CREATE_GROUP: 1,
            Operation.ADD_MEMBERS: MEMBERS_MAX_COUNT, Operation.IMPORT_FRIENDS: 1,
        },
        # Documented: account creation 100 calls/s; batch send 120 calls/min.
        # The rest are undocumented, so conservative.
        rates={
            Operation.REGISTER: 100, Operation.SEND: 2, Operation.UPDATE_PROFILE: 20,
            Operation.GET_PROFILES: 20, Operation.ISSUE_TOKEN: 20, Operation.SEND_GROUP: 10,
            Operation.BROADCAST: 0.1, Operation.CREATE_GROUP: 5, Operation.ADD_MEMBERS: 5,
            Operation.IMPORT_FRIENDS: 20,
        },
        id_form=str.lower,
    )
    max_in_flight = 8  # per method call: one-item endpoints go out side by side

    def __init__(self, config: NeteaseConfig, http: httpx.AsyncClient, *,
                 throttle: Throttle | None = None, timeout: float = 10.0):
        super().__init__(config, http, throttle=throttle, timeout=timeout)
        self.config = config

    # -- signing and the one call path -----------------------------------------------

    def _headers(self) -> dict[str, str]:
        nonce = secrets.token_hex(16)  # 32 characters, fresh per request
        curtime = str(int(time.time()))
        return {"AppKey": self.config.app_key, "Nonce": nonce, "CurTime": curtime,
                "CheckSum": checksum(self.config.app_secret, nonce, curtime),
                "Content-Type": FORM_CONTENT_TYPE}

    async def _call(self, op: Operation, path: str, form: Mapping[str, Any]) -> Reply:
        """POST one signed form; every value goes out as a string."""
        return await self._request(op.value, "POST", f"{self.config.url}/{path}",
                                   headers=self._headers(), content=urlencode(as_form(form)))

    async def _each(self, items: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
        gate = asyncio.Semaphore(self.max_in_flight)

        async def one(item: T) -> R:
            async with gate:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    # -- accounts ----------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        async def register(profile: Profile) -> Result:
            invalid = self._invalid_profile(profile)
            if invalid:
                return invalid
            accid = profile.user_id.lower()  # the vendor lower-cases accids itself
            try:
                reply = await self._call(Operation.REGISTER, "user/create.action",
                                         {"accid": accid, **profile_form(profile)})
            except CallFailed as failed:
                return failed.result
            result = classify(Operation.REGISTER, reply)
            info = reply.body.get("info") or {}
            data = {"user_id": str(info.get("accid") or accid)}
            if info.get("token"):
                data["token"] = str(info["token"])
            return with_data(result, data)

        return await self._each(profiles, register)

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """user/updateUinfo.action with the fields that are set; empty ones stay as they are."""
        async def update(profile: Profile) -> Result:
            invalid = self._invalid_profile(profile)
            if invalid:
                return invalid
            accid = profile.user_id.lower()
            try:
                reply = await self._call(Operation.UPDATE_PROFILE, "user/updateUinfo.action",
                                         {"accid": accid, **profile_form(profile)})
            except CallFailed as failed:
                return failed.result
            return with_data(classify(Operation.UPDATE_PROFILE, reply), {"user_id": accid})

        return await self._each(profiles, update)

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Unknown or malformed ids read back as None. A failed call raises CallFailed."""
        wanted = [u.lower() for u in user_ids if not ACCID_RULE.check("user_id", u)]
        found: dict[str, Profile] = {}
        for batch in chunks(wanted, self.rules.batch_size[Operation.GET_PROFILES]):
            reply = await self._call(Operation.GET_PROFILES, "user/getUinfos.action",
                                     {"accids": json_list(batch)})
            result = classify(Operation.GET_PROFILES, reply)
            if not result.succeeded:
                raise CallFailed(result)
            for info in reply.body.get("uinfos") or []:
                profile = profile_from(info)
                found[profile.user_id] = profile
        return [found.get(u.lower()) for u in user_ids]

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        async def refresh(user_id: str) -> Result:
            problem = ACCID_RULE.check("user_id", user_id)
            if problem:
                return Result(Outcome.REJECTED, "invalid", problem)
            accid = user_id.lower()
            try:
                reply = await self._call(Operation.ISSUE_TOKEN, "user/refreshToken.action",
                                         {"accid": accid})
            except CallFailed as failed:
                return failed.result
            info = reply.body.get("info") or {}
            data = {"user_id": accid}
            if info.get("token"):
                data["token"] = str(info["token"])  # NetEase tokens do not expire
            return with_data(classify(Operation.ISSUE_TOKEN, reply), data)

        return await self._each(user_ids, refresh)

    # -- messages ----------------------------------------------------------------------

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        """msg/sendBatchMsg.action, 500 recipients a call. NetEase takes no
        deduplication key, so `dedup_key` is not used."""
        results: list[Result | None] = [None] * len(recipients)
        refused = (ACCID_RULE.check("fromAccid", sender)
                   or message_problem(message, TEXT_BODY_MAX))
        if refused:
            return same_for_all(Result(Outcome.REJECTED, "invalid", refused), len(recipients))
        valid = valid_accids(recipients, "toAccids", results)
        kind, body = message_form(message)
        for batch in chunks(valid, self.rules.batch_size[Operation.SEND]):
            accids = [recipients[i].lower() for i in batch]
            try:
                reply = await self._call(Operation.SEND, "msg/sendBatchMsg.action", {
                    "fromAccid": sender.lower(), "toAccids": json_list(accids),
                    "type": kind, "body": body})
            except CallFailed as failed:
                for i in batch:
                    results[i] = failed.result
                continue
            result = classify(Operation.SEND, reply)
            unregistered = set(string_list(reply.body.get("unregister")))
            for i, accid in zip(batch, accids):
                if result.succeeded and accid in unregistered:
                    results[i] = Result(Outcome.REJECTED, "unregister",
                                        f"toAccids: {accid!r} is not a registered account")
                else:
                    results[i] = result
        return [r for r in results if r is not None]

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        refused = ACCID_RULE.check("from", sender) or message_problem(message, TEXT_BODY_MAX)
        if refused:
            return same_for_all(Result(Outcome.REJECTED, "invalid", refused), len(group_ids))
        kind, body = message_form(message)

        async def send_one(tid: str) -> Result:
            try:
                reply = await self._call(Operation.SEND_GROUP, "msg/sendMsg.action", {
                    "from": sender.lower(), "ope": 1, "to": tid, "type": kind, "body": body})
            except CallFailed as failed:
                return failed.result
            msgid = (reply.body.get("data") or {}).get("msgid")
            return with_data(classify(Operation.SEND_GROUP, reply),
                             {"group_id": tid, **({"msg_id": str(msgid)} if msgid else {})})

        return await self._each(group_ids, send_one)

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        """msg/broadcastMsg.action: the body is the text itself, or the custom
        content as JSON."""
        body = message.text if message.text is not None else json.dumps(
            message.custom, ensure_ascii=False)
        problem = ((ACCID_RULE.check("from", sender) if sender else None)
                   or FieldRule(max_len=BROADCAST_BODY_MAX, required=True).check("body", body))
        if problem:
            return Result(Outcome.REJECTED, "invalid", problem)
        form = {"body": body, "isOffline": self.config.broadcast_offline}
        if sender:
            form["from"] = sender.lower()
        try:
            reply = await self._call(Operation.BROADCAST, "msg/broadcastMsg.action", form)
        except CallFailed as failed:
            return failed.result
        broadcast_id = (reply.body.get("msg") or {}).get("broadcastId")
        return with_data(classify(Operation.BROADCAST, reply),
                         {"msg_id": str(broadcast_id)} if broadcast_id else {})

    # -- groups and friends ------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """team/create.action with the first slice of members that fits the
        1024-byte `members` field, then team/add.action for the other slices.
        The vendor picks the group id (tid): Result.data["group_id"]. When the
        group was made but some slices could not be added, the result is still
        ok (the group exists: creating it again would make a second one) and
        data["members_not_added"] lists who is missing, for add_members."""
        problem = (FieldRule(max_len=64, required=True).check("tname", group.name)
                   or ACCID_RULE.check("owner", group.owner)
                   or self._members_problem(group.members))
        if problem:
            return Result(Outcome.REJECTED, "invalid", problem)
        owner = group.owner.lower()
        members = list(dict.fromkeys(m.lower() for m in group.members if m.lower() != owner))
        first, *rest = member_slices(members) or [[]]
        try:
            reply = await self._call(Operation.CREATE_GROUP, "team/create.action", {
                "tname": group.name, "owner": owner, "members": json_list(first),
                "msg": self.config.team_invite_msg, "magree": 0, "joinmode": 0})
        except CallFailed as failed:
            return failed.result
        result = classify(Operation.CREATE_GROUP, reply)
        if not result.succeeded:
            return result
        tid = str(reply.body.get("tid", ""))
        missing = failed_accids(reply.body)
        for members_slice in rest:
            added = await self._add_slice(tid, owner, members_slice)
            missing += [m for m, r in zip(members_slice, added) if not r.succeeded]
        message = f"{len(missing)} members not added; add them with add_members" if missing else ""
        return Result(Outcome.OK, result.code, message,
                      data={"group_id": tid, "members_not_added": missing})

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        problem = ACCID_RULE.check("owner", owner)
        if problem:
            return same_for_all(Result(Outcome.REJECTED, "invalid", problem), len(members))
        results: dict[int, Result] = {}
        valid = valid_accids(members, "members", results)
        accids = [members[i].lower() for i in valid]
        position = 0
        for members_slice in member_slices(accids):
            added = await self._add_slice(group_id, owner.lower(), members_slice)
            for result in added:
                results[valid[position]] = result
                position += 1
        return [results[i] for i in range(len(members))]

    async def _add_slice(self, tid: str, owner: str, members: list[str]) -> list[Result]:
        try:
            reply = await self._call(Operation.ADD_MEMBERS, "team/add.action", {
                "tid": tid, "owner": owner, "members": json_list(members),
                "magree": 0, "msg": self.config.team_invite_msg})
        except CallFailed as failed:
            return same_for_all(failed.result, len(members))
        result = with_data(classify(Operation.ADD_MEMBERS, reply), {"group_id": tid})
        refused = set(failed_accids(reply.body))
        reason = str((reply.body.get("faccid") or {}).get("msg") or "refused by the vendor")
        return [Result(Outcome.REJECTED, "faccid", f"members: {m!r}: {reason}")
                if result.succeeded and m in refused else result for m in members]

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """friend/add.action type=1 (added directly, no request), one call per friend."""
        problem = ACCID_RULE.check("accid", owner)
        if problem:
            return same_for_all(Result(Outcome.REJECTED, "invalid", problem), len(friend_ids))

        async def befriend(friend: str) -> Result:
            problem = ACCID_RULE.check("faccid", friend)
            if problem:
                return Result(Outcome.REJECTED, "invalid", problem)
            try:
                reply = await self._call(Operation.IMPORT_FRIENDS, "friend/add.action", {
                    "accid": owner.lower(), "faccid": friend.lower(), "type": 1})
            except CallFailed as failed:
                return failed.result
            return with_data(classify(Operation.IMPORT_FRIENDS, reply),
                             {"user_id": friend.lower()})

        return await self._each(friend_ids, befriend)

    # -- local checks ------------------------------------------------------------------

    def _invalid_profile(self, profile: Profile) -> Result | None:
        errors = self.rules.check_profile(profile)
        return Result(Outcome.REJECTED, "invalid", "; ".join(errors)) if errors else None

    @staticmethod
    def _members_problem(members: Sequence[str]) -> str | None:
        for member in members:
            problem = ACCID_RULE.check("members", member)
            if problem:
                return problem
        return None


# -- reading replies -------------------------------------------------------------------

def classify(op: Operation, reply: Reply) -> Result:
    """One reply's outcome, read per endpoint (NetEase codes are open)."""
    code = reply.body.get("code")
    desc = str(reply.body.get("desc") or "")
    if not isinstance(code, int):
        if reply.status >= 500 or reply.status == 200:  # a gateway page, not the API
            return Result(Outcome.RETRYABLE, f"http {reply.status}", "no code in the reply")
        outcome = Outcome.AUTH if reply.status in (401, 403) else Outcome.REJECTED
        return Result(outcome, f"http {reply.status}", "no code in the reply")
    raw = str(code)
    if code == 200:
        return Result(Outcome.OK, raw)
    if code == 416:
        return Result(Outcome.RATE_LIMITED, raw, desc or "frequency control",
                      retry_after=BLOCKED_FOR.get(op))
    if code in RETRYABLE_CODES or reply.status >= 500:
        return Result(Outcome.RETRYABLE, raw, desc)
    if code == 414 and any(word in desc.lower() for word in AUTH_DESC_WORDS):
        return Result(Outcome.AUTH, raw, desc)
    if (op, code) in EXISTS or (code == 414 and op is Operation.REGISTER
                                 and "already register" in desc.lower()):
        return Result(Outcome.EXISTS, raw, desc)
    return Result(Outcome.REJECTED, raw, desc)


# Replies that mean "it is already there" on one endpoint.
EXISTS = {(Operation.ADD_MEMBERS, 809), (Operation.IMPORT_FRIENDS, 417)}


def with_data(result: Result, data: Mapping[str, Any]) -> Result:
    return Result(result.outcome, result.code, result.message, data=dict(data),
                  retry_after=result.retry_after, maybe_delivered=result.maybe_delivered)


def as_form(values: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as the vendor wants them: every value a string, booleans
    "true"/"false", nothing for None."""
    form = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise TypeError(f"form field {key} must be a string, not {type(value).__name__}")
        form[key] = value
    return form


def profile_form(profile: Profile) -> dict[str, str]:
    """The profile fields that are set, by the vendor's names (avatar is `icon`)."""
    fields = {"name": profile.name, "icon": profile.avatar, **profile.extra}
    return {key: value for key, value in fields.items() if value}


def profile_from(info: Mapping[str, Any]) -> Profile:
    extra = {key: str(info[key]) for key in PROFILE_EXTRAS if info.get(key)}
    if info.get("gender"):  # 0 is "unknown", the same as unset
        extra["gender"] = str(info["gender"])
    return Profile(str(info.get("accid", "")), str(info.get("name") or ""),
                   str(info.get("icon") or ""), extra)


def message_form(message: Message) -> tuple[int, str]:
    """The `type` and `body` fields: 0 with {"msg": text}, or 100 with the custom JSON."""
    if message.text is not None:
        return 0, json.dumps({"msg": message.text}, ensure_ascii=False)
    return 100, json.dumps(message.custom, ensure_ascii=False)


def message_problem(message: Message, max_len: int) -> str | None:
    body = message_form(message)[1]
    if len(body) > max_len:
        return f"body: {len(body)} chars, at most {max_len} allowed"
    return None


def string_list(value: Any) -> list[str]:
    """A list the vendor sends either as JSON or as a JSON string (`unregister`)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [str(v) for v in value] if isinstance(value, list) else []


def failed_accids(body: Mapping[str, Any]) -> list[str]:
    """team/create and team/add report members they could not take in `faccid`."""
    faccid = body.get("faccid") or {}
    return string_list(faccid.get("accid")) if isinstance(faccid, dict) else []
