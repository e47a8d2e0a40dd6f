"""RongCloud (融云) IM Server API client.

Every call is a form-encoded POST signed with four headers (App-Key, Nonce,
Timestamp, Signature = sha1(secret + nonce + timestamp)); the reply is JSON
whose `code` 200 means success. The vendor asks callers to switch to a backup
host on failure, so calls go through a HostPool.

Facts come from RongCloud's published Server API guide and status-code table
and its own server SDKs (Go, Java, Python). Groups and friends are in
rongcloud_groups.py, the id rule and per-call counts in rongcloud_rules.py.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlencode

import httpx

from .vocabulary import CAP_CODE, FieldRule, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import (Batch, CallFailed, Codes, Reply, VendorClient, chunks, invalid,
                     same_for_all)
from . import rongcloud_feed
from .feeds import Delivery, FeedMessage
from .hosts import HostPool
from .rongcloud_groups import RongCloudGroups
from .rongcloud_rules import (BROADCAST_CAPS, ID_RULE, MAX_CONTENT_BYTES, MAX_GROUP_CALL_MEMBERS, MAX_GROUP_MEMBERS,
                              MAX_GROUP_TARGETS, id_problem, problems)

DEFAULT_HOSTS = ("https://api.rong-api.com", "https://api-b.rong-api.com")
TEXT_OBJECT_NAME = "RC:TxtMsg"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Publish endpoints: path, target field, the target's name in our messages,
# and its field in the reply's messageUIDs.
PUBLISH = {
    Operation.SEND: ("/message/private/publish.json", "toUserId", "recipient", "userId"),
    Operation.SEND_GROUP: ("/message/group/publish.json", "toGroupId", "group_id", "groupId"),
}
USER_CAP_MESSAGE = ("the development app key has reached its registered-user limit (100): raise "
                    "the test-user limit in the RongCloud console or use the production app key")
# Rejections whose vendor message does not say what to do about them.
ADVICE = {
    2007: USER_CAP_MESSAGE,
    1009: "service not enabled for this app key: enable it in the RongCloud console",
}


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
    concurrency: int = 32  # per-item calls in flight; httpx's own pool degrades above ~40
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


class RongCloudClient(RongCloudGroups, VendorClient):
    register_secrets = frozenset({"token"})  # getToken registers and issues in one
    vendor = "rongcloud"
    capabilities = frozenset({
        Operation.REGISTER, Operation.UPDATE_PROFILE, Operation.GET_PROFILES,
        Operation.ISSUE_TOKEN, Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST,
        Operation.CREATE_GROUP, Operation.ADD_MEMBERS, Operation.IMPORT_FRIENDS,
        Operation.GET_MEMBERS, Operation.GET_FRIENDS,
    })
    feeds = True  # full message routing (全量消息路由): vendors/rongcloud_feed.py
    recalls = True  # /message/recall.json
    codes = Codes(ok=frozenset({200}), retryable=frozenset({1000, 1050}),
                  auth=frozenset({1001, 1004, 1006, 1007}), rate_limited=frozenset({1008}))
    # The app picks the group id, and creating an existing group answers 200.
    repeat_safe_ops = frozenset({Operation.CREATE_GROUP})
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
            Operation.GET_MEMBERS: 1, Operation.GET_FRIENDS: 1,  # one group / user a call
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
            # No per-second figure is documented; the caps below hold the hour and day.
            Operation.BROADCAST: 1.0,
            Operation.CREATE_GROUP: 100.0,
            Operation.ADD_MEMBERS: 100.0,
            Operation.IMPORT_FRIENDS: 100.0,  # /friend/add.json
            Operation.GET_MEMBERS: 100.0,  # /group/user/query.json
            Operation.GET_FRIENDS: 100.0,  # /friend/get.json
        },
        # fromUserId on every publish, the broadcast's too.
        needs={op: ("sender",) for op in (Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST)},
        group_size=MAX_GROUP_MEMBERS,  # 3000 (rongcloud_rules.py says where from)
        # The create carries 1000 userIds, the owner among them; the rest
        # join (rongcloud_groups.py's create_group).
        adds_in_create=lambda owner, ids: len(chunks(list(dict.fromkeys([owner, *ids])),
                                                     MAX_GROUP_CALL_MEMBERS)) - 1,
        caps={Operation.BROADCAST: BROADCAST_CAPS},
    )

    def __init__(self, config: RongCloudConfig, http: httpx.AsyncClient, *,
                 throttle=None, timeout: float = 10.0):
        super().__init__(config, http, throttle=throttle, timeout=timeout)
        self.hosts = HostPool(config.hosts, cooldown=config.host_cooldown, clock=config.host_clock)
        self._signer = _Signer(config)

    # -- the call path: sign, fail over, classify ----------------------------------------

    def auth(self) -> httpx.Auth:
        return self._signer

    def classify(self, key: str, reply: Reply) -> Result:
        result = super().classify(key, reply)
        code = self.reply_code(reply.body)
        if reply.status == 429 and code is not None:
            result = replace(result, code=str(code))  # the vendor pairs its 1008 with HTTP 429
        if result.outcome is Outcome.REJECTED and reply.status >= 500:
            # The server failed, whatever code it put in the reply.
            result = replace(result, outcome=Outcome.RETRYABLE)
        if code in ADVICE:
            result = replace(result, message=f"{ADVICE[code]} (vendor: {result.message})")
        return result

    async def _post(self, key: str, path: str, form: list[tuple[str, str]], *, weight: int = 1,
                    expect: Sequence[str] = ()) -> tuple[Result, dict[str, Any]]:
        return await self.call(key, "POST", path, weight=weight, expect=expect,
                               content=urlencode(form), headers=FORM)

    async def _request(self, key: str, method: str, url: str, **kwargs: Any) -> Reply:
        """`url` is a path, sent to the current host. A host that gives no reply
        or a 5xx is marked failed, and the call is made once more on the next
        host where that is safe: the call may be repeated, or it surely never
        arrived."""
        safe = self.repeat_safe(key)
        tried: list[str] = []
        while True:
            host = self.hosts.current()
            tried.append(host)
            try:
                reply = await super()._request(key, method, host + url, **kwargs)
            except CallFailed as failed:
                self.hosts.failed(host)
                if self._may_repeat(tried, safe or not failed.result.maybe_delivered):
                    continue
                raise
            if reply.status < 500:
                self.hosts.succeeded(host)
                return reply
            self.hosts.failed(host)
            if not self._may_repeat(tried, safe):
                return reply

    def _may_repeat(self, tried: list[str], safe: bool) -> bool:
        return safe and len(tried) < 2 and self.hosts.current() not in tried

    async def _one_call_each(self, items: Sequence[Any], problem: Callable[[Any], str | None],
                             work: Callable[[Any], Any]) -> list[Result]:
        """One call per item; the items a rule refuses are answered without one."""
        batch = Batch(items, problem)
        batch.put(batch.valid, await self.each([items[i] for i in batch.valid], work))
        return batch.done()

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        def problem(profile: Profile) -> str | None:
            return problems(*self.rules.check_profile(profile), None if profile.name else
                            "name: required by RongCloud's getToken (shown in push notifications)")

        # Registering again answers just like the first time (a new token), so a
        # repeat is reported `ok`: the reply does not say the account existed.
        return await self._one_call_each(profiles, problem, self._get_token)

    async def _get_token(self, profile: Profile) -> Result:
        """getToken stores the name and portrait it is given, as they are."""
        form = [("userId", profile.user_id), ("name", profile.name)]
        if profile.avatar:
            form.append(("portraitUri", profile.avatar))
        result, body = await self._post("register", "/user/getToken.json", form, expect=("token",))
        if result.outcome is not Outcome.OK:
            return result
        return replace(result, data={"user_id": str(body.get("userId") or profile.user_id),
                                     "token": str(body["token"])})

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        def problem(profile: Profile) -> str | None:
            found = self.rules.check_profile(profile)
            if not found and not (profile.name or profile.avatar):
                found.append("name, avatar: nothing to update")
            return problems(*found)

        return await self._one_call_each(profiles, problem, self._update)

    async def _update(self, profile: Profile) -> Result:
        form = [("userId", profile.user_id)]
        if profile.name:  # an absent field is left as it is
            form.append(("name", profile.name))
        if profile.avatar:
            form.append(("portraitUri", profile.avatar))
        result, _ = await self._post("update_profile", "/user/refresh.json", form)
        return replace(result, data={"user_id": profile.user_id}) if result.succeeded else result

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """Raises CallFailed with the vendor's outcome when a read fails."""
        profiles = []
        for user_id, (result, body) in zip(user_ids, await self.each(user_ids, self._user_info), strict=True):
            if not result.succeeded:
                raise CallFailed(result)
            profiles.append(self._profile_from(user_id, body))
        return profiles

    async def _user_info(self, user_id: str) -> tuple[Result, dict[str, Any]]:
        if id_problem("user_id", user_id):
            return Result(Outcome.OK, "invalid"), {}  # such an id cannot exist
        return await self._post("get_profiles", "/user/info.json", [("userId", user_id)])

    @staticmethod
    def _profile_from(user_id: str, body: dict[str, Any]) -> Profile | None:
        # getToken requires a name, so a registered user always has one;
        # an unknown id comes back without name or creation time.
        if not body.get("userName") and not body.get("createTime"):
            return None
        return Profile(user_id, name=str(body.get("userName") or ""),
                       avatar=str(body.get("userPortrait") or ""))

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        return await self._one_call_each(user_ids, lambda u: id_problem("user_id", u), self._issue)

    async def _issue(self, user_id: str) -> Result:
        """getToken needs the name and overwrites the stored name and portrait
        with what it is given, so the profile is read first and sent back as is."""
        result, body = await self._user_info(user_id)
        if not result.succeeded:
            return result
        profile = self._profile_from(user_id, body)
        if profile is None:
            return Result(Outcome.REJECTED, "unknown_user",
                          f"user_id: {user_id!r} is not registered at RongCloud; register it first")
        return await self._get_token(profile)

    # -- messages ------------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[str, str, str | None]:
        """objectName, content, and the reason it cannot be sent (or None)."""
        payload: Mapping[str, Any] | None
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

    async def _publish(self, op: Operation, sender: str, targets: Sequence[str],
                       message: Message) -> list[Result]:
        """One publish call per batch of targets; each target gets its call's
        outcome and its own message id from the reply."""
        path, target_field, target_name, uid_field = PUBLISH[op]
        object_name, content, problem = self._encode(message)
        problem = problem or id_problem("sender", sender)
        if problem:
            return same_for_all(invalid(problem), len(targets))
        batch = Batch(targets, lambda target: id_problem(target_name, target))

        async def publish(part: Sequence[int]) -> list[Result]:
            form = [("fromUserId", sender)]
            form += [(target_field, targets[i]) for i in part]
            form += [("objectName", object_name), ("content", content)]
            result, body = await self._post(op.value, path, form, weight=len(part))
            ids = {str(e.get(uid_field)): str(e.get("messageUID"))
                   for e in body.get("messageUIDs") or [] if isinstance(e, dict)}
            return [replace(result, data={"msg_id": ids[targets[i]]}) if targets[i] in ids
                    else result for i in part]

        parts = chunks(batch.valid, self.rules.batch_size[op])
        for part, results in zip(parts, await self.each(parts, publish), strict=True):
            batch.put(part, results)
        return batch.done()

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        # RongCloud's publish takes no deduplication key: a send whose outcome is
        # unknown (maybe_delivered) must not be repeated blindly.
        return await self._publish(Operation.SEND, sender, recipients, message)

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        return await self._publish(Operation.SEND_GROUP, sender, group_ids, message)

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        object_name, content, problem = self._encode(message)
        problem = problem or id_problem("sender", sender)
        if problem:
            return invalid(problem)
        form = [("fromUserId", sender), ("objectName", object_name), ("content", content)]
        result, body = await self._post("broadcast", "/message/broadcast.json", form)
        if result.outcome is Outcome.RATE_LIMITED and result.code != CAP_CODE:
            return replace(result, message=f"{result.message} (RongCloud also answers 1008 when "
                                           f"the broadcast service is not enabled for the app key)")
        if result.succeeded and body.get("id"):
            return replace(result, data={"msg_id": str(body["id"])})
        return result

    # -- the bridge: message routing, relaying and recalling ----------------------------

    @classmethod
    def read_feed(cls, config: RongCloudConfig, delivery: Delivery,
                  now: float) -> list[FeedMessage]:
        """One routed message, verified (the query's signature) and parsed."""
        rongcloud_feed.verify(config.app_key, config.app_secret, delivery, now)
        return rongcloud_feed.parse(delivery.body)

    async def relay(self, message: FeedMessage, *, dedup_key: str) -> Result:
        """One publish as the original sender. Server API messages are not
        routed back by default; built-in types carry MARK in `extra` for apps
        that route them. The publish reply names the messageUID but no send
        time: data["sent_at_ms"] is our clock just before the call (what
        recall's sentTime gets)."""
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        path, target_field, target_name, uid_field = PUBLISH[op]
        encoded = rongcloud_feed.relay_content(message, self.config.custom_object_name)
        if encoded is None:
            return invalid(f"RongCloud cannot carry a {message.kind!r} message")
        object_name, payload = encoded
        content = json.dumps(payload, ensure_ascii=False)
        problem = problems(id_problem("sender", message.sender), id_problem(target_name, message.to),
                           None if len(content.encode()) <= MAX_CONTENT_BYTES else
                           f"content: over {MAX_CONTENT_BYTES} bytes")
        if problem:
            return invalid(problem)
        form = [("fromUserId", message.sender), (target_field, message.to),
                ("objectName", object_name), ("content", content)]
        sent_at = int(time.time() * 1000)
        result, body = await self.call(op, "POST", path, repeat_safe=False, content=urlencode(form),
                                       headers=FORM)
        if result.outcome is not Outcome.OK:
            return result
        ids = [str(e.get("messageUID")) for e in body.get("messageUIDs") or []
               if isinstance(e, dict) and str(e.get(uid_field)) == message.to and e.get("messageUID")]
        data: dict[str, Any] = {"sent_at_ms": sent_at}
        if ids:
            data["msg_id"] = ids[0]
        return replace(result, data=data)

    async def recall(self, message: FeedMessage, target_msg_id: str) -> Result:
        """/message/recall.json: conversationType 1 one-to-one, 3 group;
        sentTime from message.sent_at_ms (the engine passes the relay's
        data["sent_at_ms"] there)."""
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        form = [("conversationType", "3" if message.group else "1"),
                ("fromUserId", message.sender), ("targetId", message.to),
                ("messageUID", target_msg_id), ("sentTime", str(message.sent_at_ms))]
        result, _ = await self.call(op, "POST", "/message/recall.json", repeat_safe=True,
                                    content=urlencode(form), headers=FORM)
        return replace(result, data={"msg_id": target_msg_id}) if result.succeeded else result
