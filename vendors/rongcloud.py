"""RongCloud (融云) IM Server API client.

Every call is a form-encoded POST signed with four headers (App-Key, Nonce,
Timestamp, Signature = sha1(secret + nonce + timestamp)); the reply is JSON
whose `code` 200 means success. The vendor asks callers to switch to a backup
host on failure, so calls go through a HostPool.

Facts come from vendors.md and RongCloud's own server SDKs (server-sdk-go:
sdk/rongcloud.go, sdk/user.go, sdk/friend.go; server-sdk-java: jsonsource).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import httpx

from .base import FieldRule, Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import CallFailed, Reply, VendorClient, chunks
from .hosts import HostPool

DEFAULT_HOSTS = ("https://api.rong-api.com", "https://api-b.rong-api.com")
TEXT_OBJECT_NAME = "RC:TxtMsg"
MAX_CONTENT_BYTES = 128 * 1024  # one message
MAX_PUBLISH_RECIPIENTS = 1000  # toUserId per private publish call
MAX_GROUP_TARGETS = 3  # toGroupId per group publish call
MAX_GROUP_CALL_MEMBERS = 1000  # userId per group create / join call
MAX_GROUP_MEMBERS = 3000  # per group

ID_PATTERN = r"[A-Za-z0-9_=+\-]+"
ID_HINT = "letters, digits and + = - _"
ID_RULE = FieldRule(max_len=64, unit="bytes", pattern=ID_PATTERN, pattern_hint=ID_HINT,
                    required=True)

USER_CAP_MESSAGE = ("the development app key has reached its registered-user limit (100): raise "
                    "the test-user limit in the RongCloud console or use the production app key")


def sign(secret: str, nonce: str, timestamp_ms: int | str) -> str:
    """The Signature header: lowercase hex SHA1 of secret + nonce + timestamp."""
    return hashlib.sha1(f"{secret}{nonce}{timestamp_ms}".encode()).hexdigest()


def new_nonce() -> str:
    """A random number of at most 18 digits (the guide's limit for Nonce)."""
    return str(secrets.randbelow(10 ** 18))


@dataclass(frozen=True)
class RongCloudConfig:
    app_key: str
    app_secret: str = field(repr=False)
    # Tried in order; the vendor documents several hosts per data centre.
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    host_cooldown: float = 30.0  # seconds before a failed host is tried again
    header_prefix: str = ""  # "RC-" for platforms that filter the plain header names
    custom_object_name: str = "IMS:Custom"  # objectName for Message.custom; the app registers it
    max_in_flight: int = 32  # httpx's own pool degrades above ~40 in flight
    host_clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("RongCloudConfig.hosts: at least one host is needed")
        if self.header_prefix not in ("", "RC-"):
            raise ValueError("RongCloudConfig.header_prefix: '' or 'RC-'")
        name = self.custom_object_name
        if not name or name.startswith("RC:") or len(name) > 32:
            raise ValueError("RongCloudConfig.custom_object_name: at most 32 characters, "
                             "not starting with 'RC:' (reserved for built-in types)")


class _Signer(httpx.Auth):
    """Signs at send time, after any throttle wait, so the timestamp is fresh
    and every attempt (a failover retry too) gets its own nonce."""

    def __init__(self, config: RongCloudConfig):
        self._config = config

    def auth_flow(self, request: httpx.Request):
        nonce, timestamp = new_nonce(), str(int(time.time() * 1000))
        prefix = self._config.header_prefix
        request.headers[f"{prefix}App-Key"] = self._config.app_key
        request.headers[f"{prefix}Nonce"] = nonce
        request.headers[f"{prefix}Timestamp"] = timestamp
        request.headers[f"{prefix}Signature"] = sign(self._config.app_secret, nonce, timestamp)
        yield request


def classify(reply: Reply) -> Result:
    """One RongCloud reply as an outcome, keeping the vendor's code and message."""
    body = reply.body
    message = str(body.get("errorMessage") or body.get("msg") or "")
    try:
        code: int | None = int(body.get("code"))
    except (TypeError, ValueError):
        code = None
    raw = str(code) if code is not None else f"http {reply.status}"
    if code == 200 and reply.status < 300:
        return Result(Outcome.OK, "200")
    if code == 1008 or reply.status == 429:
        return Result(Outcome.RATE_LIMITED, raw, message or "call rate exceeded",
                      retry_after=reply.retry_after())
    if code in (1001, 1004, 1006, 1007) or (code is None and reply.status == 401):
        return Result(Outcome.AUTH, raw, message or "app key or signature refused")
    if code in (1000, 1050) or reply.status >= 500:
        return Result(Outcome.RETRYABLE, raw, message or f"server error (http {reply.status})")
    if code == 2007:
        return Result(Outcome.REJECTED, raw, f"{USER_CAP_MESSAGE} (vendor: {message})")
    if code == 1009:
        return Result(Outcome.REJECTED, raw, f"service not enabled for this app key: enable it "
                                             f"in the RongCloud console (vendor: {message})")
    return Result(Outcome.REJECTED, raw, message or f"refused by RongCloud (http {reply.status})")


def invalid(problems: Sequence[str]) -> Result:
    return Result(Outcome.REJECTED, "invalid", "; ".join(problems))


def id_problem(name: str, value: str) -> str | None:
    return ID_RULE.check(name, value)


class RongCloudClient(VendorClient):
    vendor = "rongcloud"
    capabilities = frozenset({
        Operation.REGISTER, Operation.UPDATE_PROFILE, Operation.GET_PROFILES,
        Operation.ISSUE_TOKEN, Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST,
        Operation.CREATE_GROUP, Operation.ADD_MEMBERS, Operation.IMPORT_FRIENDS,
    })
    rules = VendorRules(
        fields={
            "user_id": ID_RULE,
            "name": FieldRule(max_len=128, unit="bytes"),
            "avatar": FieldRule(max_len=1024, unit="bytes"),
        },
        batch_size={
            Operation.REGISTER: 1, Operation.UPDATE_PROFILE: 1, Operation.GET_PROFILES: 1,
            Operation.ISSUE_TOKEN: 1,
            # The vendor takes 1000 recipients a call but counts each as a message
            # against 100 messages/s: a bigger call could never fit one second.
            Operation.SEND: 100,
            Operation.SEND_GROUP: MAX_GROUP_TARGETS,
            Operation.BROADCAST: 1,
            Operation.CREATE_GROUP: MAX_GROUP_CALL_MEMBERS,
            Operation.ADD_MEMBERS: MAX_GROUP_CALL_MEMBERS,
            Operation.IMPORT_FRIENDS: 1,
        },
        # The vendor's documented per-endpoint limits. SEND and SEND_GROUP are in
        # messages/s (a call's weight is its number of recipients or groups).
        rates={
            Operation.REGISTER: 200.0,  # /user/getToken.json
            Operation.UPDATE_PROFILE: 100.0,  # /user/refresh.json
            Operation.GET_PROFILES: 100.0,  # /user/info.json
            # Per token: one info.json and one getToken call, throttled under the
            # keys of those endpoints ("get_profiles", "register"), since the
            # vendor's quota is per endpoint, not per operation.
            Operation.ISSUE_TOKEN: 100.0,
            Operation.SEND: 100.0,  # 6000 messages/min
            Operation.SEND_GROUP: 20.0,
            Operation.BROADCAST: 2 / 3600,  # 2 an hour (and 3 a day)
            Operation.CREATE_GROUP: 100.0,
            Operation.ADD_MEMBERS: 100.0,
            Operation.IMPORT_FRIENDS: 100.0,  # /friend/add.json
        },
    )

    def __init__(self, config: RongCloudConfig, http: httpx.AsyncClient, *,
                 throttle=None, timeout: float = 10.0):
        super().__init__(config, http, throttle=throttle, timeout=timeout)
        self.config = config
        self.hosts = HostPool(config.hosts, cooldown=config.host_cooldown, clock=config.host_clock)
        self._signer = _Signer(config)
        self._in_flight = asyncio.Semaphore(config.max_in_flight)

    # -- the call path: sign, fail over, classify ----------------------------------------

    async def _post(self, key: str, url: str, form: list[tuple[str, str]], weight: int) -> Reply:
        async with self._in_flight:
            return await self._request(
                key, "POST", url, weight=weight, auth=self._signer, content=urlencode(form),
                headers={"Content-Type": "application/x-www-form-urlencoded"})

    async def _call(self, key: str, path: str, form: list[tuple[str, str]], *, weight: int = 1,
                    idempotent: bool = True) -> Reply:
        """POST to the current host. On a connection failure or a 5xx the host is
        marked failed and, where repeating is safe (an idempotent call, or one
        that surely never arrived), the call is made once more on the next host."""
        tried: list[str] = []
        while True:
            host = self.hosts.current()
            tried.append(host)
            try:
                reply = await self._post(key, host + path, form, weight)
            except CallFailed as failed:
                self.hosts.failed(host)
                if self._may_repeat(tried, idempotent or not failed.result.maybe_delivered):
                    continue
                raise
            if reply.status < 500:
                self.hosts.succeeded(host)
                return reply
            self.hosts.failed(host)
            if not self._may_repeat(tried, idempotent):
                return reply

    def _may_repeat(self, tried: list[str], safe: bool) -> bool:
        return safe and len(tried) < 2 and self.hosts.current() not in tried

    async def _outcome(self, key: str, path: str, form: list[tuple[str, str]], *,
                       weight: int = 1, idempotent: bool = True) -> tuple[Result, dict[str, Any]]:
        try:
            reply = await self._call(key, path, form, weight=weight, idempotent=idempotent)
        except CallFailed as failed:
            return failed.result, {}
        result = classify(reply)
        if result.outcome is Outcome.RETRYABLE and not idempotent:
            # An internal error or internal timeout may come after the message went out.
            result = replace(result, maybe_delivered=True)
        return result, reply.body

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        return list(await asyncio.gather(*(self._register(p) for p in profiles)))

    async def _register(self, profile: Profile) -> Result:
        problems = self.rules.check_profile(profile)
        if not profile.name:
            problems.append("name: required by RongCloud's getToken (shown in push notifications)")
        if problems:
            return invalid(problems)
        form = [("userId", profile.user_id), ("name", profile.name)]
        if profile.avatar:
            form.append(("portraitUri", profile.avatar))
        # Registering again answers just like the first time (a new token), so a
        # repeat is reported `ok`: the reply does not say the account existed.
        return await self._get_token(form)

    async def _get_token(self, form: list[tuple[str, str]]) -> Result:
        result, body = await self._outcome("register", "/user/getToken.json", form)
        if result.outcome is not Outcome.OK:
            return result
        return replace(result, data={"user_id": str(body.get("userId") or form[0][1]),
                                     "token": str(body.get("token", ""))})

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        return list(await asyncio.gather(*(self._update(p) for p in profiles)))

    async def _update(self, profile: Profile) -> Result:
        problems = self.rules.check_profile(profile)
        if not problems and not (profile.name or profile.avatar):
            problems.append("name, avatar: nothing to update")
        if problems:
            return invalid(problems)
        form = [("userId", profile.user_id)]
        if profile.name:  # an absent field is left as it is
            form.append(("name", profile.name))
        if profile.avatar:
            form.append(("portraitUri", profile.avatar))
        result, _ = await self._outcome("update_profile", "/user/refresh.json", form)
        return replace(result, data={"user_id": profile.user_id}) if result.succeeded else result

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Raises CallFailed with the vendor's outcome when a read fails."""
        looked_up = await asyncio.gather(*(self._user_info(u) for u in user_ids))
        profiles = []
        for user_id, (result, body) in zip(user_ids, looked_up):
            if not result.succeeded:
                raise CallFailed(result)
            profiles.append(self._profile_from(user_id, body))
        return profiles

    async def _user_info(self, user_id: str) -> tuple[Result, dict[str, Any]]:
        if id_problem("user_id", user_id):
            return Result(Outcome.OK, "invalid"), {}  # such an id cannot exist
        return await self._outcome("get_profiles", "/user/info.json", [("userId", user_id)])

    @staticmethod
    def _profile_from(user_id: str, body: dict[str, Any]) -> Profile | None:
        # getToken requires a name, so a registered user always has one;
        # an unknown id comes back without name or creation time.
        if not body.get("userName") and not body.get("createTime"):
            return None
        return Profile(user_id, name=str(body.get("userName") or ""),
                       avatar=str(body.get("userPortrait") or ""))

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        return list(await asyncio.gather(*(self._issue(u) for u in user_ids)))

    async def _issue(self, user_id: str) -> Result:
        """getToken needs the name and overwrites the stored name and portrait
        with what it is given, so the profile is read first and sent back as is."""
        problem = id_problem("user_id", user_id)
        if problem:
            return invalid([problem])
        result, body = await self._user_info(user_id)
        if not result.succeeded:
            return result
        profile = self._profile_from(user_id, body)
        if profile is None:
            return Result(Outcome.REJECTED, "unknown_user",
                          f"user_id: {user_id!r} is not registered at RongCloud; register it first")
        form = [("userId", user_id), ("name", profile.name)]
        if profile.avatar:
            form.append(("portraitUri", profile.avatar))
        return await self._get_token(form)

    # -- messages ------------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[str, str, str | None]:
        """objectName, content, and the reason it cannot be sent (or None)."""
        if message.text is not None:
            object_name, payload = TEXT_OBJECT_NAME, {"content": message.text}
        else:
            object_name, payload = self.config.custom_object_name, message.custom
        try:
            content = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            return object_name, "", f"content: not JSON ({exc})"
        size = len(content.encode())
        if size > MAX_CONTENT_BYTES:
            return object_name, content, (f"content: {size} bytes, at most {MAX_CONTENT_BYTES} "
                                          f"allowed per message")
        return object_name, content, None

    async def _publish_each(self, op: Operation, path: str, target_field: str, sender: str,
                            targets: Sequence[str], message: Message, target_name: str,
                            uid_field: str) -> list[Result]:
        """One publish call per batch of targets; each target gets its call's outcome."""
        object_name, content, problem = self._encode(message)
        problem = problem or id_problem("sender", sender)
        if problem:
            return [invalid([problem])] * len(targets)
        results: list[Result | None] = [None] * len(targets)
        valid = []
        for index, target in enumerate(targets):
            target_problem = id_problem(target_name, target)
            if target_problem:
                results[index] = invalid([target_problem])
            else:
                valid.append(index)

        async def publish(batch: Sequence[int]) -> None:
            form = [("fromUserId", sender)]
            form += [(target_field, targets[i]) for i in batch]
            form += [("objectName", object_name), ("content", content)]
            result, body = await self._outcome(op.value, path, form, weight=len(batch),
                                               idempotent=False)
            ids = {str(e.get(uid_field)): str(e.get("messageUID"))
                   for e in body.get("messageUIDs") or [] if isinstance(e, dict)}
            for i in batch:
                msg_id = ids.get(targets[i])
                results[i] = replace(result, data={"msg_id": msg_id}) if msg_id else result

        await asyncio.gather(*(publish(b) for b in chunks(valid, self.rules.batch_size[op])))
        return [r for r in results if r is not None]

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        # RongCloud's publish takes no deduplication key: a send whose outcome is
        # unknown (maybe_delivered) must not be repeated blindly.
        return await self._publish_each(Operation.SEND, "/message/private/publish.json",
                                        "toUserId", sender, recipients, message, "recipient",
                                        "userId")

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        return await self._publish_each(Operation.SEND_GROUP, "/message/group/publish.json",
                                        "toGroupId", sender, group_ids, message, "group_id",
                                        "groupId")

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        object_name, content, problem = self._encode(message)
        problem = problem or id_problem("sender", sender)
        if problem:
            return invalid([problem])
        form = [("fromUserId", sender), ("objectName", object_name), ("content", content)]
        result, body = await self._outcome("broadcast", "/message/broadcast.json", form,
                                           idempotent=False)
        if result.outcome is Outcome.RATE_LIMITED:
            return replace(result, message=f"{result.message} (RongCloud also answers 1008 when "
                                           f"the broadcast service is not enabled for the app key)")
        if result.succeeded and body.get("id"):
            return replace(result, data={"msg_id": str(body["id"])})
        return result

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """RongCloud groups are the app's: the app picks the id, and there is no
        owner at the vendor (the owner is simply a member). Creating an existing
        group adds the members again and answers 200, so a repeat is `ok`."""
        members = list(dict.fromkeys([group.owner, *group.members]))
        problems = [p for p in (id_problem("group_id", group.group_id),
                                id_problem("owner", group.owner)) if p]
        if not group.name:
            problems.append("name: required (RongCloud shows it in push notifications)")
        problems += [p for p in (id_problem("members", m) for m in members[1:]) if p]
        if len(members) > MAX_GROUP_MEMBERS:
            problems.append(f"members: {len(members)}, at most {MAX_GROUP_MEMBERS} per group")
        if problems:
            return invalid(problems)
        first, *rest = chunks(members, MAX_GROUP_CALL_MEMBERS)
        form = [("userId", m) for m in first] + [("groupId", group.group_id),
                                                 ("groupName", group.name)]
        result, _ = await self._outcome("create_group", "/group/create.json", form)
        for more in rest:  # the rest join in further calls (all idempotent)
            if not result.succeeded:
                break
            result, _ = await self._outcome("add_members", "/group/join.json",
                                            self._join_form(group.group_id, more))
        return replace(result, data={"group_id": group.group_id}) if result.succeeded else result

    @staticmethod
    def _join_form(group_id: str, members: Sequence[str]) -> list[tuple[str, str]]:
        # No groupName: join would rename the group with it.
        return [("userId", m) for m in members] + [("groupId", group_id)]

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        problem = id_problem("group_id", group_id)
        if problem:
            return [invalid([problem])] * len(members)
        results: list[Result | None] = [None] * len(members)
        valid = []
        for index, member in enumerate(members):
            member_problem = id_problem("members", member)
            if member_problem:
                results[index] = invalid([member_problem])
            else:
                valid.append(index)

        async def join(batch: Sequence[int]) -> None:
            result, _ = await self._outcome("add_members", "/group/join.json",
                                            self._join_form(group_id, [members[i] for i in batch]))
            for i in batch:
                results[i] = result

        await asyncio.gather(*(join(b) for b in chunks(valid, MAX_GROUP_CALL_MEMBERS)))
        return [r for r in results if r is not None]

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """/friend/add.json with optType=2 adds directly, without the other's
        approval (server-sdk-go FriendAdd). Needs the vendor's profile hosting
        service; without it the vendor answers 1009 (rejected)."""
        return list(await asyncio.gather(*(self._befriend(owner, f) for f in friend_ids)))

    async def _befriend(self, owner: str, friend: str) -> Result:
        problems = [p for p in (id_problem("owner", owner), id_problem("friend_ids", friend)) if p]
        if not problems and owner == friend:
            problems.append(f"friend_ids: {friend!r} is the owner itself")
        if problems:
            return invalid(problems)
        form = [("userId", owner), ("targetId", friend), ("optType", "2")]
        result, _ = await self._outcome("import_friends", "/friend/add.json", form)
        return result
