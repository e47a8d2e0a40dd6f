"""Maxim (美信拓扑; its API is documented as Lanying IM / 蓝莺IM 服务端API).

Maxim has no request signature: every admin call carries the app's `app_id`
and an admin `access-token` made in the vendor's console (no API mints or
refreshes one). A `user_id` header makes an admin call act as that user
(friends, group create and invite as the owner).

Maxim assigns its own numeric (int64) user and group ids. `register_users`
takes the app's ids as usernames and returns Maxim's id in
`Result.data["user_id"]`; every other operation takes Maxim's ids.

User tokens need the user's password (`POST /token/id`). The client keeps no
passwords, so registering generates one per user and returns it, and
`issue_tokens` sets a fresh password first and returns it with the token:
issuing a token therefore invalidates the user's previous password.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Mapping, Sequence

import httpx

from .base import FieldRule, Group, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import CallFailed, Reply, Throttle, VendorClient, chunks, same_for_all

MAX_TARGETS = 500  # message targets per call (the vendor's 12005 cap on push lists)
MAX_PAGE_SIZE = 200  # GET /user/list
EXTRA_FIELDS = ("description", "public_info", "private_info")  # settable by /user/profile/batch
CONTENT_TEXT = 0
CONTENT_COMMAND = 6  # "custom" content: our JSON object, serialised in `content`

# Body codes (HTTP 200 carries business errors). Anything else is `rejected`.
AUTH_CODES = {
    402,  # token expired; an admin token cannot be refreshed by API, so no retry
    10003,  # access-token header missing
    10008,  # access-token invalid
    10010,  # no permission: the token lacks admin rights
    30021, 30022,  # licence invalid / expired
    40000,  # app_id missing or unknown
}
EXISTS_CODES = {10004, 10005, 20017}  # user exists, already a friend, already a member
RETRYABLE_CODES = {10009, 20000, 20006}  # storage error, database error, group in repair mode
RATE_CODES = {429}  # our sandbox's choice: the vendor documents no rate limits

_VENDOR_ID = re.compile(r"[0-9]{1,19}")
_CODE_IN_REASON = re.compile(r"\s*(\d{3,5})\b")


@dataclass(frozen=True)
class MaximConfig:
    app_id: str
    access_token: str = field(repr=False)  # admin token from the console
    api_endpoint: str = "https://api.maximtop.com"  # per app, shown in the console
    # Overrides of MaximClient.rules.batch_size, by Operation; sends stay ≤ 500.
    batch_sizes: Mapping[Operation, int] = field(default_factory=dict)
    concurrency: int = 8  # calls in flight for per-user operations (profiles, tokens)


def admin_headers(config: MaximConfig, *, user_id: int | None = None,
                  group_id: int | None = None) -> dict[str, str]:
    """The auth headers of one call; `user_id` acts as that user, `group_id`
    as that group's admin (both only with an admin token)."""
    headers = {"app_id": config.app_id, "access-token": config.access_token}
    if user_id is not None:
        headers["user_id"] = str(user_id)
    if group_id is not None:
        headers["group_id"] = str(group_id)
    return headers


def transaction_id(dedup_key: str, target_type: int, targets: Sequence[int]) -> int:
    """The vendor's dedup id for one call: a positive int64 that is the same
    whenever the same batch is sent again under the same key."""
    seed = f"{dedup_key}|{target_type}|{','.join(map(str, targets))}".encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") >> 1 or 1


def new_password() -> str:
    return secrets.token_urlsafe(18)


def vendor_id(value: str) -> int | None:
    """Maxim's numeric id, or None when `value` cannot be one."""
    if _VENDOR_ID.fullmatch(value) and 0 < int(value) < 2 ** 63:
        return int(value)
    return None


def classify(reply: Reply) -> Result:
    """One reply's call-level outcome."""
    code = reply.body.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    message = str(reply.body.get("message") or reply.body.get("error") or "")
    if reply.status == 429 or code in RATE_CODES:
        return Result(Outcome.RATE_LIMITED, str(code or "http 429"), message or "over the rate limit",
                      retry_after=reply.retry_after())
    if reply.status >= 500:
        return Result(Outcome.RETRYABLE, f"http {reply.status}", message)
    if reply.status in (401, 403):
        return Result(Outcome.AUTH, f"http {reply.status}", message)
    if reply.status != 200:
        return Result(Outcome.REJECTED, f"http {reply.status}", message)
    if not isinstance(code, int):
        return Result(Outcome.RETRYABLE, "no code", "the reply carried no code")
    return _by_code(code, message)


def _by_code(code: int, message: str) -> Result:
    if code == 200:
        return Result(Outcome.OK, "200", message)
    if code in AUTH_CODES:
        outcome = Outcome.AUTH
    elif code in EXISTS_CODES:
        outcome = Outcome.EXISTS
    elif code in RETRYABLE_CODES:
        outcome = Outcome.RETRYABLE
    elif code in RATE_CODES:
        outcome = Outcome.RATE_LIMITED
    else:
        outcome = Outcome.REJECTED
    return Result(outcome, str(code), message)


def item_result(success: Any, reason: Any) -> Result:
    """One item of a batch reply ({success, reason} or {result, reason}).
    Reasons are free text; a leading code is used when there is one."""
    if success is True or success == "success":
        return Result(Outcome.OK, "200")
    reason = str(reason or "failed")
    found = _CODE_IN_REASON.match(reason)
    if found:
        return _by_code(int(found.group(1)), reason)
    if "already" in reason.lower() or "exist" in reason.lower():
        return Result(Outcome.EXISTS, "exists", reason)
    return Result(Outcome.REJECTED, "failed", reason)


def invalid(message: str) -> Result:
    return Result(Outcome.REJECTED, "invalid", message)


def message_fields(message: Message) -> dict[str, Any]:
    if message.text is not None:
        return {"content": message.text, "content_type": CONTENT_TEXT}
    return {"content": json.dumps(message.custom, ensure_ascii=False), "content_type": CONTENT_COMMAND}


def profile_fields(profile: Profile) -> dict[str, str]:
    """What /user/profile/batch sets for a profile (the avatar goes separately)."""
    fields = {"nick_name": profile.name} if profile.name else {}
    fields.update({k: v for k, v in profile.extra.items() if v})
    return fields


def expires_at(expire: Any) -> int | None:
    """The token's expiry in epoch seconds (Maxim's `expire` looks like
    milliseconds, as its other timestamps are; seconds are accepted too)."""
    if not isinstance(expire, int) or expire <= 0:
        return None
    return expire // 1000 if expire > 10 ** 11 else expire


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2 ** 63


def _failed_first(current: Result, new: Result) -> Result:
    return new if current.succeeded and not new.succeeded else current


class MaximClient(VendorClient):
    vendor = "maxim"
    capabilities = frozenset(Operation)
    deduplicates_sends = True  # /message/send takes transaction_id (broadcast does not)
    rules = VendorRules(
        fields={
            # The register username; later operations take Maxim's numeric ids.
            "user_id": FieldRule(
                required=True, pattern=r"(?!(?i:maxim|mta))(?![0-9]+$)[A-Za-z0-9_]+",
                pattern_hint="letters, digits and _, not all digits, "
                             "not starting with maxim or mta"),
            "name": FieldRule(),  # nick_name: no documented limit
            "avatar": FieldRule(),
            **{name: FieldRule() for name in EXTRA_FIELDS},
        },
        # No documented maxima except 500 message targets; batch sizes are settings.
        batch_size={
            Operation.REGISTER: 100, Operation.UPDATE_PROFILE: 100, Operation.GET_PROFILES: 1,
            Operation.ISSUE_TOKEN: 1, Operation.SEND: MAX_TARGETS, Operation.SEND_GROUP: MAX_TARGETS,
            Operation.BROADCAST: 1, Operation.CREATE_GROUP: 1, Operation.ADD_MEMBERS: 100,
            Operation.IMPORT_FRIENDS: 100, Operation.LIST_USERS: MAX_PAGE_SIZE,
        },
        # No documented rate limits: conservative calls/s, meant to be overridden.
        rates={
            Operation.REGISTER: 5, Operation.UPDATE_PROFILE: 5, Operation.GET_PROFILES: 20,
            Operation.ISSUE_TOKEN: 10, Operation.SEND: 5, Operation.SEND_GROUP: 5,
            Operation.BROADCAST: 1, Operation.CREATE_GROUP: 5, Operation.ADD_MEMBERS: 5,
            Operation.IMPORT_FRIENDS: 10, Operation.LIST_USERS: 5,
        },
    )

    def __init__(self, config: MaximConfig, http: httpx.AsyncClient, *,
                 throttle: Throttle | None = None, timeout: float = 10.0):
        super().__init__(config, http, throttle=throttle, timeout=timeout)
        self.config = config
        self.base_url = config.api_endpoint.rstrip("/")
        sizes = {**self.rules.batch_size, **{Operation(k): v for k, v in config.batch_sizes.items()}}
        for op in (Operation.SEND, Operation.SEND_GROUP):
            sizes[op] = min(sizes[op], MAX_TARGETS)
        self.batch_size = {op: max(1, size) for op, size in sizes.items()}

    # -- one call ------------------------------------------------------------------------

    async def _call(self, key: Operation, method: str, path: str, *, as_user: int | None = None,
                    **kwargs: Any) -> tuple[Result, Any]:
        """The call's outcome and the reply's `data`."""
        headers = admin_headers(self.config, user_id=as_user)
        try:
            reply = await self._request(str(key), method, self.base_url + path, headers=headers,
                                        **kwargs)
        except CallFailed as failed:
            return failed.result, None
        return classify(reply), reply.body.get("data")

    async def _each(self, items: Sequence[Any], work) -> list[Any]:
        """`work(item)` for every item, a few in flight at a time."""
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(item: Any) -> Any:
            async with gate:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        """Register with /user/register/batch and a generated password per
        user, then set the profiles. An existing username is `exists` with
        its user_id (looked up when the reply leaves it out) and no password."""
        results: list[Result | None] = [None] * len(profiles)
        valid = []
        for i, profile in enumerate(profiles):
            errors = self.rules.check_profile(profile)
            if errors:
                results[i] = invalid("; ".join(errors))
            else:
                valid.append(i)
        for batch in chunks(valid, self.batch_size[Operation.REGISTER]):
            registered = await self._register_batch([profiles[i] for i in batch])
            for i, result in zip(batch, registered):
                results[i] = result
        return results  # type: ignore[return-value]

    async def _register_batch(self, profiles: Sequence[Profile]) -> list[Result]:
        passwords = [new_password() for _ in profiles]
        body = {"list": [{"username": p.user_id, "password": pw} for p, pw in zip(profiles, passwords)]}
        call, data = await self._call(Operation.REGISTER, "POST", "/user/register/batch", json=body)
        if not call.succeeded:
            return same_for_all(call, len(profiles))
        items = {str(item.get("username", "")).lower(): item
                 for item in (data if isinstance(data, list) else []) if isinstance(item, dict)}
        results = []
        for profile, password in zip(profiles, passwords):
            item = items.get(profile.user_id.lower())
            if item is None:
                results.append(Result(Outcome.RETRYABLE, "missing", "the reply left this user out"))
                continue
            result = item_result(item.get("success"), item.get("reason"))
            user_id = item.get("user_id")
            if result.outcome is Outcome.OK and not _is_id(user_id):
                # Created, but we cannot tell its id: a retry finds it as `exists`.
                result = Result(Outcome.RETRYABLE, "no user_id", "the reply carried no user_id")
            elif result.outcome is Outcome.OK:
                result = Result(Outcome.OK, "200", data={"user_id": str(user_id), "password": password})
            elif result.outcome is Outcome.EXISTS:
                result = await self._existing(profile.user_id, user_id, result)
            results.append(result)
        return await self._with_profiles(profiles, results)

    async def _existing(self, username: str, user_id: Any, result: Result) -> Result:
        """An `exists` result carrying the account's user_id (its password is
        not known: issue_tokens sets a new one)."""
        if not _is_id(user_id):
            found, data = await self._call(Operation.GET_PROFILES, "GET", "/roster/name",
                                           params={"username": username})
            user_id = data.get("user_id") if isinstance(data, dict) else None
            if not found.succeeded or not _is_id(user_id):
                return Result(found.outcome if not found.succeeded else Outcome.RETRYABLE, found.code,
                              f"user exists, but looking up its user_id failed: {found.message}",
                              retry_after=found.retry_after)
        return Result(Outcome.EXISTS, result.code, result.message, data={"user_id": str(user_id)})

    async def _with_profiles(self, profiles: Sequence[Profile], results: list[Result]) -> list[Result]:
        """Set the profiles of the accounts that are there (new or existing,
        so a re-run completes a profile an earlier run could not set)."""
        there = [k for k, r in enumerate(results) if r.succeeded]
        written = await self._write_profiles([(int(results[k].data["user_id"]), profiles[k])
                                              for k in there])
        for k, profile_result in zip(there, written):
            if not profile_result.succeeded:
                account = results[k]
                results[k] = Result(
                    profile_result.outcome, profile_result.code,
                    f"account {account.data['user_id']} is there, but its profile was not set: "
                    f"{profile_result.message}",
                    data=account.data, retry_after=profile_result.retry_after)
        return results

    async def _write_profiles(self, entries: Sequence[tuple[int, Profile]]) -> list[Result]:
        """/user/profile/batch and /user/avatar/batch for (user_id, profile)
        pairs; one Result per pair, the first failure kept."""
        out = [Result(Outcome.OK, "200")] * len(entries)
        size = self.batch_size[Operation.UPDATE_PROFILE]
        fields = [(k, {"user_id": uid, **profile_fields(p)})
                  for k, (uid, p) in enumerate(entries) if profile_fields(p)]
        avatars = [(k, {"user_id": uid, "avatar": p.avatar})
                   for k, (uid, p) in enumerate(entries) if p.avatar]
        for path, rows in (("/user/profile/batch", fields), ("/user/avatar/batch", avatars)):
            for batch in chunks(rows, size):
                call, data = await self._call(Operation.UPDATE_PROFILE, "POST", path,
                                              json={"list": [row for _, row in batch]})
                items = {item.get("user_id"): item
                         for item in (data if isinstance(data, list) else []) if isinstance(item, dict)}
                for k, row in batch:
                    if not call.succeeded:
                        result = call
                    elif (item := items.get(row["user_id"])) is None:
                        result = Result(Outcome.RETRYABLE, "missing", "the reply left this user out")
                    else:
                        result = item_result(item.get("success"), item.get("reason"))
                    out[k] = _failed_first(out[k], result)
        return out

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """Profiles keyed by Maxim's user_id: nickname and extras, then avatar."""
        results: list[Result | None] = [None] * len(profiles)
        entries, where = [], []
        for i, profile in enumerate(profiles):
            uid = vendor_id(profile.user_id)
            errors = [e for e in self.rules.check_profile(profile) if not e.startswith("user_id:")]
            if uid is None:
                errors.insert(0, f"user_id: {profile.user_id[:80]!r} is not a Maxim user id (digits)")
            if errors:
                results[i] = invalid("; ".join(errors))
            else:
                entries.append((uid, profile))
                where.append(i)
        for i, result in zip(where, await self._write_profiles(entries)):
            results[i] = Result(result.outcome, result.code, result.message,
                                data={"user_id": profiles[i].user_id}, retry_after=result.retry_after)
        return results  # type: ignore[return-value]

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """GET /user/profile acting as each user. Unknown ids are None; any
        other failure raises CallFailed with its Result."""
        return await self._each(user_ids, self._get_profile)

    async def _get_profile(self, user_id: str) -> Profile | None:
        uid = vendor_id(user_id)
        if uid is None:
            return None
        call, data = await self._call(Operation.GET_PROFILES, "GET", "/user/profile", as_user=uid)
        if call.code == "10000":
            return None
        if not call.succeeded or not isinstance(data, dict):
            raise CallFailed(call if not call.succeeded else
                             Result(Outcome.RETRYABLE, "no data", "the reply carried no profile"))
        return Profile(user_id=str(data.get("user_id", uid)), name=data.get("nick_name") or "",
                       avatar=data.get("avatar") or "",
                       extra={k: data[k] for k in EXTRA_FIELDS if data.get(k)})

    async def issue_tokens(self, user_ids: Sequence[str]) -> list[Result]:
        """A token needs the password, which the client does not keep: set a
        new one (/user/change_password_admin), then log in with it (/token/id).
        data: token, expires_at, and the new password."""
        return await self._each(user_ids, self._issue_token)

    async def _issue_token(self, user_id: str) -> Result:
        uid = vendor_id(user_id)
        if uid is None:
            return invalid(f"user_id: {user_id[:80]!r} is not a Maxim user id (digits)")
        password = new_password()
        changed, _ = await self._call(Operation.ISSUE_TOKEN, "POST", "/user/change_password_admin",
                                      as_user=uid, json={"password": password})
        if not changed.succeeded:
            return changed
        call, data = await self._call(Operation.ISSUE_TOKEN, "POST", "/token/id",
                                      json={"user_id": uid, "password": password})
        if not call.succeeded:
            return call
        if not isinstance(data, dict) or not data.get("token"):
            return Result(Outcome.RETRYABLE, "no token", "the reply carried no token")
        out = {"user_id": user_id, "token": data["token"], "password": password}
        if (expiry := expires_at(data.get("expire"))) is not None:
            out["expires_at"] = expiry
        return Result(Outcome.OK, "200", data=out)

    async def list_users(self, page_size: int = MAX_PAGE_SIZE) -> AsyncIterator[str]:
        """Every user_id of the app (GET /user/list, ≤ 200 a page)."""
        page_size = min(max(1, page_size), MAX_PAGE_SIZE)
        page_num = 1
        while True:
            call, data = await self._call(Operation.LIST_USERS, "GET", "/user/list",
                                          params={"page_num": page_num, "page_size": page_size})
            if not call.succeeded:
                raise CallFailed(call)
            page = data if isinstance(data, list) else []
            for item in page:
                yield str(item["user_id"])
            if len(page) < page_size:
                return
            page_num += 1

    # -- messages ------------------------------------------------------------------------

    async def send(self, sender: str, recipients: Sequence[str], message: Message, *,
                   dedup_key: str | None = None) -> list[Result]:
        return await self._send(1, Operation.SEND, sender, recipients, message, dedup_key)

    async def send_group(self, sender: str, group_ids: Sequence[str], message: Message, *,
                         dedup_key: str | None = None) -> list[Result]:
        return await self._send(2, Operation.SEND_GROUP, sender, group_ids, message, dedup_key)

    async def _send(self, target_type: int, op: Operation, sender: str, targets: Sequence[str],
                    message: Message, dedup_key: str | None) -> list[Result]:
        """POST /message/send in batches of ≤ 500 targets; with a dedup_key
        each batch carries a transaction_id, so the vendor drops a repeat."""
        from_id = vendor_id(sender)
        if from_id is None:
            return same_for_all(invalid(f"from_user_id: {sender[:80]!r} is not a Maxim user id"),
                                len(targets))
        content = message_fields(message)

        async def call(batch: Sequence[int]) -> Result:
            body = {"targets": list(batch), "type": target_type, "from_user_id": from_id, **content}
            if dedup_key is not None:
                body["transaction_id"] = transaction_id(dedup_key, target_type, batch)
            result, _ = await self._call(op, "POST", "/message/send", json=body)
            return result

        return await self._by_batch(op, targets, "targets", call)

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        """POST /message/broadcast to every user, acting as `sender`. The
        endpoint takes no transaction_id, so `dedup_key` cannot be honoured: a
        broadcast whose reply was lost is `maybe_delivered`."""
        from_id = vendor_id(sender)
        if from_id is None:
            return invalid(f"user_id: {sender[:80]!r} is not a Maxim user id")
        call, data = await self._call(Operation.BROADCAST, "POST", "/message/broadcast",
                                      as_user=from_id, json={"type": 1, **message_fields(message)})
        if call.succeeded and isinstance(data, dict):
            return Result(call.outcome, call.code, call.message, data={"send_num": data.get("send_num")})
        return call

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, group: Group) -> Result:
        """POST /group/create as the owner with the first slice of members,
        then /group/invite for the rest. Maxim assigns the group id
        (data["group_id"]); the app's `group.group_id` cannot be kept. Not
        idempotent: a non-success Result that has data["group_id"] means the
        group exists, so finish it with add_members rather than create again."""
        owner = vendor_id(group.owner)
        if owner is None:
            return invalid(f"user_id: owner {group.owner[:80]!r} is not a Maxim user id")
        if not group.name:
            return invalid("name: required")
        members, bad = self._ids([m for m in dict.fromkeys(group.members) if m != group.owner])
        if bad:
            return invalid(f"user_list: {bad[0][:80]!r} is not a Maxim user id")
        first = self.batch_size[Operation.ADD_MEMBERS]
        body = {"name": group.name, "description": "", "type": 0, "user_list": members[:first]}
        call, data = await self._call(Operation.CREATE_GROUP, "POST", "/group/create",
                                      as_user=owner, json=body)
        if not call.succeeded:
            return call
        if not isinstance(data, dict) or not data.get("group_id"):
            return Result(Outcome.RETRYABLE, "no group_id", "the reply carried no group_id",
                          maybe_delivered=True)
        group_id = str(data["group_id"])
        rest = await self.add_members(group_id, group.owner, [str(m) for m in members[first:]])
        failed = [r for r in rest if not r.succeeded]
        if failed:
            return Result(failed[0].outcome, failed[0].code,
                          f"group {group_id} created, but {len(failed)} of {len(members)} members "
                          f"were not added: {failed[0].message}",
                          data={"group_id": group_id}, retry_after=failed[0].retry_after)
        return Result(Outcome.OK, "200", data={"group_id": group_id})

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        """POST /group/invite as the owner; per-user results."""
        gid, owner_id = vendor_id(group_id), vendor_id(owner)
        if gid is None or owner_id is None:
            which = f"group_id {group_id[:80]!r}" if gid is None else f"owner {owner[:80]!r}"
            return same_for_all(invalid(f"{which} is not a Maxim id"), len(members))

        async def call(batch: Sequence[int]) -> list[Result]:
            result, data = await self._call(Operation.ADD_MEMBERS, "POST", "/group/invite",
                                            as_user=owner_id,
                                            json={"group_id": gid, "user_list": list(batch)})
            if not result.succeeded:
                return same_for_all(result, len(batch))
            items = {item.get("user_id"): item
                     for item in (data if isinstance(data, list) else []) if isinstance(item, dict)}
            return [item_result(items[uid].get("result"), items[uid].get("reason")) if uid in items
                    else Result(Outcome.RETRYABLE, "missing", "the reply left this user out")
                    for uid in batch]

        return await self._by_batch(Operation.ADD_MEMBERS, members, "user_list", call, per_item=True)

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """POST /user/add_roster acting as `owner`: adds friends directly."""
        owner_id = vendor_id(owner)
        if owner_id is None:
            return same_for_all(invalid(f"user_id: owner {owner[:80]!r} is not a Maxim user id"),
                                len(friend_ids))

        async def call(batch: Sequence[int]) -> Result:
            result, _ = await self._call(Operation.IMPORT_FRIENDS, "POST", "/user/add_roster",
                                         as_user=owner_id, json={"list": list(batch)})
            return result

        others = [i for i, f in enumerate(friend_ids) if f != owner]
        results = [invalid("list: cannot befriend oneself")] * len(friend_ids)
        done = await self._by_batch(Operation.IMPORT_FRIENDS, [friend_ids[i] for i in others],
                                    "list", call)
        for i, result in zip(others, done):
            results[i] = result
        return results

    # -- batching helpers ----------------------------------------------------------------

    @staticmethod
    def _ids(values: Iterable[str]) -> tuple[list[int], list[str]]:
        good, bad = [], []
        for value in values:
            uid = vendor_id(value)
            (bad.append(value) if uid is None else good.append(uid))
        return good, bad

    async def _by_batch(self, op: Operation, values: Sequence[str], field_name: str, call,
                        *, per_item: bool = False) -> list[Result]:
        """Split `values` (Maxim ids) into batches and run `call` on each.
        Ids that cannot be Maxim's are rejected without a call. When `call`
        gives one Result for the whole batch and that is `rejected`, each id
        is tried alone, so one bad id (e.g. a deleted user) does not sink the
        rest: a rejected call did nothing at the vendor."""
        results: list[Result | None] = [None] * len(values)
        valid: list[tuple[int, int]] = []
        for i, value in enumerate(values):
            uid = vendor_id(value)
            if uid is None:
                results[i] = invalid(f"{field_name}: {value[:80]!r} is not a Maxim id")
            else:
                valid.append((i, uid))
        for batch in chunks(valid, self.batch_size[op]):
            ids = [uid for _, uid in batch]
            if per_item:
                outcome = await call(ids)
            else:
                whole = await call(ids)
                if whole.outcome is Outcome.REJECTED and len(ids) > 1:
                    outcome = [await call([uid]) for uid in ids]
                else:
                    outcome = same_for_all(whole, len(ids))
            for (i, _), result in zip(batch, outcome):
                results[i] = result
        return results  # type: ignore[return-value]
