"""NetEase Yunxin (网易云信) IM server API, v1 (`/nimserver/*.action`).

Every call is a form-encoded POST whose values are all strings, signed with
four headers: AppKey, Nonce, CurTime (UTC seconds) and CheckSum, the lower-case
hex SHA1 of AppSecret + Nonce + CurTime. Replies come with HTTP 200 and a
body `code`; codes are "open" (414 is both "bad parameter", "bad signature"
and "already registered"), so each endpoint's reply is read with its `desc`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncGenerator, Generator, Literal, Mapping, Sequence
from urllib.parse import urlencode

import httpx

from .vocabulary import FieldRule, Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import Batch, CallFailed, Codes, Reply, VendorClient, chunks
from . import netease_feed
from .feeds import Delivery, FeedMessage
from .netease_forms import (ACCID_RULE, MEMBERS_MAX_COUNT, PROFILE_EXTRAS, as_form, create_members,
                            failed_accids, json_list, member_slices, message_form, message_problem,
                            profile_form, profile_from, string_list)

BASE_URLS = {
    "cn": "https://api.netease.im/nimserver",  # China data centre
    "sg": "https://api-sg.netease.im/nimserver",  # overseas data centre
}
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=utf-8"
TEAM_SIZE = 200  # an advanced team's default member limit, owner included
TEXT_BODY_MAX = 5000  # msg/send*: the `body` JSON text, in characters
BROADCAST_BODY_MAX = 4096

# After an over-limit reply (416) the vendor blocks the app for a while.
BLOCKED_FOR: dict[str, float] = {Operation.REGISTER.value: 10.0, Operation.SEND.value: 60.0}
# The `desc` words of a 414 that mean the signature headers were refused.
AUTH_DESC_WORDS = ("checksum", "appkey", "curtime", "nonce")
# Replies that mean "it is already there" on one endpoint only.
EXISTS = {(Operation.ADD_MEMBERS.value, "809"), (Operation.IMPORT_FRIENDS.value, "417")}


def checksum(secret: str, nonce: str, curtime: str) -> str:
    """The CheckSum header: lower-case hex SHA1 of AppSecret + Nonce + CurTime."""
    return hashlib.sha1((secret + nonce + curtime).encode("utf-8")).hexdigest()


class CheckSumAuth(httpx.Auth):
    """Signs each request as it goes out: a fresh Nonce and CurTime every time."""

    def __init__(self, app_key: str, app_secret: str):
        self.app_key = app_key
        self.app_secret = app_secret

    def sign(self, request: httpx.Request) -> httpx.Request:
        nonce = secrets.token_hex(16)  # 32 characters; the vendor allows up to 128
        curtime = str(int(time.time()))
        request.headers.update({"AppKey": self.app_key, "Nonce": nonce, "CurTime": curtime,
                                "CheckSum": checksum(self.app_secret, nonce, curtime)})
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self.sign(request)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # The same one step; httpx's default would drive auth_flow's
        # generator from an async one on every call.
        yield self.sign(request)


@dataclass(frozen=True)
class NeteaseConfig:
    app_key: str
    app_secret: str = field(repr=False)
    region: Literal["cn", "sg"] = "cn"
    base_url: str | None = None  # overrides the region's host (e.g. a sandbox)
    team_invite_msg: str = "welcome"  # team/create and team/add require one (≤ 150 bytes)
    broadcast_offline: bool = True  # keep broadcasts for users who are offline
    concurrency: int = 8  # one-item calls in flight per method call

    @property
    def url(self) -> str:
        return (self.base_url or BASE_URLS[self.region]).rstrip("/")


class NeteaseClient(VendorClient):
    register_secrets = frozenset({"token"})
    vendor = "netease"
    config: NeteaseConfig
    capabilities = frozenset({
        Operation.REGISTER, Operation.UPDATE_PROFILE, Operation.GET_PROFILES,
        Operation.ISSUE_TOKEN, Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST,
        Operation.CREATE_GROUP, Operation.ADD_MEMBERS, Operation.IMPORT_FRIENDS,
        Operation.GET_MEMBERS, Operation.GET_FRIENDS,
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
            Operation.GET_MEMBERS: 1, Operation.GET_FRIENDS: 1,
        },
        # Documented: account creation 100 calls/s; batch send 120 calls/min.
        # The rest are undocumented, so conservative.
        rates={
            Operation.REGISTER: 100, Operation.SEND: 2, Operation.UPDATE_PROFILE: 20,
            Operation.GET_PROFILES: 20, Operation.ISSUE_TOKEN: 20, Operation.SEND_GROUP: 10,
            Operation.BROADCAST: 0.1, Operation.CREATE_GROUP: 5, Operation.ADD_MEMBERS: 5,
            Operation.IMPORT_FRIENDS: 20, Operation.GET_MEMBERS: 20, Operation.GET_FRIENDS: 20,
        },
        id_form=str.lower,
        # An advanced team (高级群) holds 200 people by default, owner included
        # (NetEase's create-team reference: the member limit defaults to 200;
        # the app raises it in the console). Over it: code 801.
        group_size=TEAM_SIZE,
        # A send's fromAccid / from; broadcastMsg's `from` is optional.
        needs={Operation.SEND: ("sender",), Operation.SEND_GROUP: ("sender",)},
        split_calls={Operation.ADD_MEMBERS: lambda ids: len(member_slices(ids))},
        adds_in_create=lambda owner, ids: max(0, len(member_slices(create_members(owner, ids))) - 1),
    )
    feeds = True  # message copy (消息抄送): vendors/netease_feed.py
    recalls = True  # msg/recall.action
    # 408 timeout, 500 internal error, 501 database error, 503 busy; 416 frequency control.
    codes = Codes(ok=frozenset({200}), rate_limited=frozenset({416}),
                  retryable=frozenset({408, 500, 501, 503}))

    # -- signing, the call path and reading replies --------------------------------------

    def auth(self) -> httpx.Auth:
        return CheckSumAuth(self.config.app_key, self.config.app_secret)

    async def _post(self, op: Operation, path: str, form: Mapping[str, Any],
                    expect: Sequence[str] = ()) -> tuple[Result, dict[str, Any]]:
        """POST one signed form; every value goes out as a string."""
        return await self.call(op, "POST", f"{self.config.url}/{path}", expect=expect,
                               headers={"Content-Type": FORM_CONTENT_TYPE},
                               content=urlencode(as_form(form)))

    def classify(self, key: str, reply: Reply) -> Result:
        """The base's reading, then what NetEase's open codes mean per endpoint."""
        result = super().classify(key, reply)
        if result.outcome is Outcome.OK:  # none of the readings below is of an OK code
            return result
        code, desc = result.code, result.message.lower()
        if reply.status >= 500 and result.outcome is Outcome.REJECTED:
            return replace(result, outcome=Outcome.RETRYABLE)  # a gateway's code, not the API's
        if code == "416":
            return replace(result, retry_after=result.retry_after or BLOCKED_FOR.get(key))
        if code == "414" and any(word in desc for word in AUTH_DESC_WORDS):
            return replace(result, outcome=Outcome.AUTH)
        if (key, code) in EXISTS or (code == "414" and key == Operation.REGISTER.value
                                     and "already register" in desc):
            return replace(result, outcome=Outcome.EXISTS)
        return result

    def _profile_problem(self, profile: Profile) -> str | None:
        return "; ".join(self.rules.check_profile(profile)) or None

    # -- accounts ------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        async def register(profile: Profile) -> Result:
            accid = profile.user_id.lower()  # the vendor lower-cases accids itself
            result, body = await self._post(Operation.REGISTER, "user/create.action",
                                            {"accid": accid, **profile_form(profile)},
                                            expect=("info",))
            info = body.get("info") or {}
            data = {"user_id": str(info.get("accid") or accid)}
            if info.get("token"):
                data["token"] = str(info["token"])
            return replace(result, data=data)

        return await self.each_valid(profiles, self._profile_problem, register)

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """user/updateUinfo.action with the fields that are set; empty ones stay as they are."""
        async def update(profile: Profile) -> Result:
            accid = profile.user_id.lower()
            result, _ = await self._post(Operation.UPDATE_PROFILE, "user/updateUinfo.action",
                                         {"accid": accid, **profile_form(profile)})
            return replace(result, data={"user_id": accid})

        return await self.each_valid(profiles, self._profile_problem, update)

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Unknown or malformed ids read back as None. A failed call raises CallFailed."""
        wanted = [u.lower() for u in user_ids if not ACCID_RULE.check("user_id", u)]
        found: dict[str, Profile] = {}
        for batch in chunks(wanted, self.rules.batch_size[Operation.GET_PROFILES]):
            result, body = await self._post(Operation.GET_PROFILES, "user/getUinfos.action",
                                            {"accids": json_list(batch)})
            if not result.succeeded:
                raise CallFailed(result)
            for info in body.get("uinfos") or []:
                profile = profile_from(info)
                found[profile.user_id] = profile
        return [found.get(u.lower()) for u in user_ids]

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        async def refresh(user_id: str) -> Result:
            accid = user_id.lower()
            result, body = await self._post(Operation.ISSUE_TOKEN, "user/refreshToken.action",
                                            {"accid": accid}, expect=("info.token",))
            data = {"user_id": accid}
            if result.outcome is Outcome.OK:  # `expect` saw the token; NetEase tokens do not expire
                data["token"] = str(body["info"]["token"])
            return replace(result, data=data)

        return await self.each_valid(user_ids, lambda u: ACCID_RULE.check("user_id", u), refresh)

    # -- messages ------------------------------------------------------------------------

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        """msg/sendBatchMsg.action, 500 recipients a call. NetEase takes no
        deduplication key, so `dedup_key` is not used."""
        refused = ACCID_RULE.check("fromAccid", sender) or message_problem(message, TEXT_BODY_MAX)
        batch = Batch(recipients, lambda to: refused or ACCID_RULE.check("toAccids", to))
        kind, body = message_form(message)
        for indexes in chunks(batch.valid, self.rules.batch_size[Operation.SEND]):
            accids = [recipients[i].lower() for i in indexes]
            result, reply = await self._post(Operation.SEND, "msg/sendBatchMsg.action", {
                "fromAccid": sender.lower(), "toAccids": json_list(accids),
                "type": kind, "body": body})
            unregistered = set(string_list(reply.get("unregister"))) if result.succeeded else set()
            batch.put(indexes, [
                Result(Outcome.REJECTED, "unregister",
                       f"toAccids: {accid!r} is not a registered account")
                if accid in unregistered else result for accid in accids])
        return batch.done()

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        refused = ACCID_RULE.check("from", sender) or message_problem(message, TEXT_BODY_MAX)
        kind, body = message_form(message)

        async def send_one(tid: str) -> Result:
            result, reply = await self._post(Operation.SEND_GROUP, "msg/sendMsg.action", {
                "from": sender.lower(), "ope": 1, "to": tid, "type": kind, "body": body},
                expect=("data.msgid",))
            msgid = (reply.get("data") or {}).get("msgid")
            data = {"group_id": tid, **({"msg_id": str(msgid)} if msgid else {})}
            return replace(result, data=data)

        return await self.each_valid(group_ids, lambda tid: refused, send_one)

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
        form = {"body": body, "isOffline": self.config.broadcast_offline,
                "from": sender.lower() or None}
        result, reply = await self._post(Operation.BROADCAST, "msg/broadcastMsg.action", form)
        broadcast_id = (reply.get("msg") or {}).get("broadcastId")
        return replace(result, data={"msg_id": str(broadcast_id)} if broadcast_id else {})

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """team/create.action with the first slice of members that fits the
        1024-byte `members` field, then team/add.action for the other slices.
        The vendor picks the group id (tid): Result.data["group_id"]. When the
        group was made but some slices could not be added, the result is still
        ok (the group exists: creating it again would make a second one) and
        data["members_not_added"] lists who is missing, for add_members."""
        problem = next(filter(None, (
            FieldRule(max_len=64, required=True).check("tname", group.name),
            ACCID_RULE.check("owner", group.owner),
            *(ACCID_RULE.check("members", m) for m in group.members))), None)
        if problem:
            return Result(Outcome.REJECTED, "invalid", problem)
        owner = group.owner.lower()
        first, *rest = member_slices(create_members(owner, group.members)) or [[]]
        result, body = await self._post(Operation.CREATE_GROUP, "team/create.action", {
            "tname": group.name, "owner": owner, "members": json_list(first),
            "msg": self.config.team_invite_msg, "magree": 0, "joinmode": 0}, expect=("tid",))
        if result.outcome is not Outcome.OK:
            return result
        tid = str(body["tid"])
        missing = failed_accids(body)
        for members_slice in rest:
            added = await self._add_slice(tid, owner, members_slice)
            missing += [m for m, r in zip(members_slice, added, strict=True) if not r.succeeded]
        message = f"{len(missing)} members not added; add them with add_members" if missing else ""
        return Result(Outcome.OK, result.code, message,
                      data={"group_id": tid, "members_not_added": missing})

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        refused = ACCID_RULE.check("owner", owner)
        batch = Batch(members, lambda m: refused or ACCID_RULE.check("members", m))
        accids = [members[i].lower() for i in batch.valid]
        done = 0
        for members_slice in member_slices(accids):
            added = await self._add_slice(group_id, owner.lower(), members_slice)
            batch.put(batch.valid[done:done + len(added)], added)
            done += len(added)
        return batch.done()

    async def _add_slice(self, tid: str, owner: str, members: list[str]) -> list[Result]:
        result, body = await self._post(Operation.ADD_MEMBERS, "team/add.action", {
            "tid": tid, "owner": owner, "members": json_list(members),
            "magree": 0, "msg": self.config.team_invite_msg})
        result = replace(result, data={"group_id": tid})
        refused = set(failed_accids(body)) if result.succeeded else set()
        reason = str((body.get("faccid") or {}).get("msg") or "refused by the vendor")
        return [Result(Outcome.REJECTED, "faccid", f"members: {m!r}: {reason}")
                if m in refused else result for m in members]

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """friend/add.action type=1 (added directly, no request), one call per friend."""
        refused = ACCID_RULE.check("accid", owner)

        async def befriend(friend: str) -> Result:
            result, _ = await self._post(Operation.IMPORT_FRIENDS, "friend/add.action", {
                "accid": owner.lower(), "faccid": friend.lower(), "type": 1})
            return replace(result, data={"user_id": friend.lower()})

        return await self.each_valid(
            friend_ids, lambda f: refused or ACCID_RULE.check("faccid", f), befriend)

    # -- reading back --------------------------------------------------------------------

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """team/query.action with ope=1. The reply names the owner and the
        admins apart from `members`, so all three are joined. A tid is a
        number the vendor assigned: anything else, or an unknown one, is None."""
        if not (group_id.isascii() and group_id.isdigit()):
            return None
        result, body = await self._post(Operation.GET_MEMBERS, "team/query.action",
                                        {"tids": json_list([group_id]), "ope": 1})
        if not result.succeeded:
            raise CallFailed(result)
        for info in body.get("tinfos") or []:
            if isinstance(info, dict) and str(info.get("tid")) == group_id:
                people = [info.get("owner"), *string_list(info.get("admins")),
                          *string_list(info.get("members"))]
                return list(dict.fromkeys(str(p) for p in people if p))
        return None

    async def find_groups(self, owner: str, name: str) -> list[str] | None:
        """team/joinTeams.action lists the teams `owner` is in: those it owns
        named exactly `name`."""
        if ACCID_RULE.check("accid", owner):
            return []  # no such account could own a team
        result, body = await self._post(Operation.GET_MEMBERS, "team/joinTeams.action",
                                        {"accid": owner.lower()})
        if not result.succeeded:
            raise CallFailed(result)
        return [str(t["tid"]) for t in body.get("infos") or [] if isinstance(t, dict)
                and t.get("tid") and str(t.get("owner", "")).lower() == owner.lower()
                and t.get("tname") == name]

    async def get_friends(self, user_id: str) -> list[str]:
        """friend/get.action from updatetime 0 (every friend). Raises CallFailed."""
        problem = ACCID_RULE.check("accid", user_id)
        if problem:
            raise CallFailed(Result(Outcome.REJECTED, "invalid", problem))
        result, body = await self._post(Operation.GET_FRIENDS, "friend/get.action",
                                        {"accid": user_id.lower(), "updatetime": 0})
        if not result.succeeded:
            raise CallFailed(result)
        friends = [f.get("faccid") for f in body.get("friends") or [] if isinstance(f, dict)]
        return list(dict.fromkeys(str(f) for f in friends if f))

    # -- the bridge: the message copy, relaying and recalling ---------------------------

    @classmethod
    def read_feed(cls, config: NeteaseConfig, delivery: Delivery, now: float) -> list[FeedMessage]:
        """One message copy, verified (CheckSum over the body's MD5) and parsed."""
        netease_feed.verify(config.app_key, config.app_secret, delivery, now)
        return netease_feed.parse(delivery.body)

    async def relay(self, message: FeedMessage, *, dedup_key: str) -> Result:
        """msg/sendMsg.action as the original sender, with option route=false
        (not copied back to the feed) and ext = MARK. NetEase takes no
        deduplication key; a cut-off call comes back maybe_delivered."""
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        encoded = netease_feed.relay_body(message)
        if encoded is None:
            return Result(Outcome.REJECTED, "unsupported",
                          f"NetEase cannot carry a {message.kind!r} message")
        kind, body = encoded
        problem = (ACCID_RULE.check("from", message.sender)
                   or (None if message.group else ACCID_RULE.check("to", message.to))
                   or FieldRule(max_len=TEXT_BODY_MAX).check("body", body))
        if problem:
            return Result(Outcome.REJECTED, "invalid", problem)
        form = {"from": message.sender.lower(), "ope": 1 if message.group else 0,
                "to": message.to if message.group else message.to.lower(),
                "type": kind, "body": body, "option": netease_feed.RELAY_OPTION,
                "ext": netease_feed.MARK}
        result, reply = await self.call(op, "POST", f"{self.config.url}/msg/sendMsg.action",
                                        repeat_safe=False, expect=("data.msgid",),
                                        headers={"Content-Type": FORM_CONTENT_TYPE},
                                        content=urlencode(as_form(form)))
        data = reply.get("data") or {}
        if result.outcome is not Outcome.OK:
            return result
        found: dict[str, Any] = {"msg_id": str(data["msgid"])}
        if str(data.get("timetag", "")).isdigit():
            found["sent_at_ms"] = int(data["timetag"])
        return replace(result, data=found)

    async def recall(self, message: FeedMessage, target_msg_id: str) -> Result:
        """msg/recall.action: type 7 one-to-one, 8 team; `timetag` is the
        relayed message's send time, read from message.sent_at_ms (the
        engine passes the relay's data["sent_at_ms"] there). ignoreTime=1:
        the relay's lag must not push it past the vendor's recall window."""
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        form = {"deleteMsgid": target_msg_id, "timetag": message.sent_at_ms,
                "type": 8 if message.group else 7, "from": message.sender.lower(),
                "to": message.to if message.group else message.to.lower(), "ignoreTime": "1"}
        result, _ = await self.call(op, "POST", f"{self.config.url}/msg/recall.action",
                                    repeat_safe=True, headers={"Content-Type": FORM_CONTENT_TYPE},
                                    content=urlencode(as_form(form)))
        return replace(result, data={"msg_id": target_msg_id}) if result.succeeded else result
