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

Users and messages are here; groups and friends (and which friend list is
read) in maxim_groups.py; ids and acting-as headers in maxim_wire.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence

import httpx

from .vocabulary import FieldRule, Message, Operation, Outcome, Profile, Result, VendorRules
from .client import Batch, CallFailed, Codes, Reply, VendorClient, chunks, invalid, same_for_all
from .feeds import mark_json
from .maxim_feed import read as read_subscription, relay_fields
from .maxim_groups import MaximGroups
from .maxim_wire import acting_as, checked_id, is_id as _is_id, items_by, not_an_id, vendor_id
from .paging import offset_pages

if TYPE_CHECKING:
    from .feeds import Delivery, FeedMessage

MAX_TARGETS = 500  # message targets per call (the vendor's 12005 cap on push lists)
MAX_PAGE_SIZE = 200  # GET /user/list
EXTRA_FIELDS = ("description", "public_info", "private_info")  # settable by /user/profile/batch
CONTENT_TEXT = 0
CONTENT_COMMAND = 6  # "custom" content: our JSON object, serialised in `content`
MISSING = Result(Outcome.RETRYABLE, "missing", "the reply left this user out")

SOURCE_IDS = ("username", "user_id")  # MaximConfig.source_id

_CODE_IN_REASON = re.compile(r"\s*(\d{3,5})\b")


@dataclass(frozen=True)
class MaximConfig:
    app_id: str
    access_token: str = field(repr=False)  # admin token from the console
    api_endpoint: str = "https://api.maximtop.com"  # per app, shown in the console
    # Overrides of MaximClient.rules.batch_size, by Operation; sends stay ≤ 500.
    batch_sizes: Mapping[Operation, int] = field(default_factory=dict)
    concurrency: int = 8  # calls in flight for per-user operations (profiles, tokens)
    # The value the message subscription sends in its `signature` header.
    feed_signature: str = field(default="", repr=False)
    # Which id a listed user (Maxim as a migration source) goes by: "username",
    # the app's own name for the user (what its users log in with), or
    # "user_id", Maxim's number. The other one is kept in the profile's extra.
    source_id: str = "username"

    def __post_init__(self) -> None:
        if self.source_id not in SOURCE_IDS:
            raise ValueError(f"source_id: one of {', '.join(SOURCE_IDS)}")


def admin_headers(config: MaximConfig) -> dict[str, str]:
    """The headers every call carries."""
    return {"app_id": config.app_id, "access-token": config.access_token}


class MaximAuth(httpx.Auth):
    """Maxim signs nothing: the app's admin headers go on every request."""

    def __init__(self, config: MaximConfig):
        self.headers = admin_headers(config)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.headers)
        yield request


def transaction_id(dedup_key: str, target_type: int, targets: Sequence[int]) -> int:
    """The vendor's dedup id for one call: a positive int64 that is the same
    whenever the same batch is sent again under the same key."""
    seed = f"{dedup_key}|{target_type}|{','.join(map(str, targets))}".encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") >> 1 or 1


def new_password() -> str:
    return secrets.token_urlsafe(18)


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


class MaximClient(MaximGroups, VendorClient):
    register_secrets = frozenset({"password"})  # the only way to a user token later
    vendor = "maxim"
    capabilities = frozenset(Operation) - {Operation.LIST_GROUPS}  # no documented listing of an app's groups
    deduplicates_sends = True  # /message/send takes transaction_id (broadcast does not)
    feeds = True  # the message subscription (maxim_feed.py)
    recalls = True  # POST /message/recall
    # Business errors come back as HTTP 200 with a body code; anything else is `rejected`.
    codes = Codes(
        ok=frozenset({200}),
        auth=frozenset({
            402,  # token expired; an admin token cannot be refreshed by API, so no retry
            10003,  # access-token header missing
            10008,  # access-token invalid
            10010,  # no permission: the token lacks admin rights
            30021, 30022,  # licence invalid / expired
            40000,  # app_id missing or unknown
        }),
        exists=frozenset({10004, 10005, 20017}),  # user exists, already a friend, already a member
        retryable=frozenset({10009, 20000, 20006}),  # storage error, database error, group in repair
        rate_limited=frozenset({429}),  # our sandbox's choice: the vendor documents no rate limits
    )
    rules = VendorRules(
        # Maxim documents /user/add_roster per user (the roster of the acting
        # user): both sides are written; a side already there is `exists`.
        friends_one_way=True,
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
            Operation.GET_MEMBERS: 1, Operation.GET_FRIENDS: 1,  # one group / user a call
        },
        calls_per_item={Operation.ISSUE_TOKEN: 2},  # change_password_admin, then /token/id
        # No documented rate limits: conservative calls/s, meant to be overridden.
        rates={
            Operation.REGISTER: 5, Operation.UPDATE_PROFILE: 5, Operation.GET_PROFILES: 20,
            Operation.ISSUE_TOKEN: 10, Operation.SEND: 5, Operation.SEND_GROUP: 5,
            Operation.BROADCAST: 1, Operation.CREATE_GROUP: 5, Operation.ADD_MEMBERS: 5,
            Operation.IMPORT_FRIENDS: 10, Operation.LIST_USERS: 5,
            Operation.GET_MEMBERS: 10, Operation.GET_FRIENDS: 10,
        },
        # The vendor's docs name group size limits only as refusals (codes
        # 20007-20010, docs/vendors.md) and give no default figure: None.
        group_size=None,
        # A send's from_user_id; a broadcast acts as a user (the user_id header).
        needs={op: ("sender",) for op in (Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST)},
    )

    @classmethod
    def rules_for(cls, config: MaximConfig) -> VendorRules:
        """The class's rules with the config's batch sizes; sends stay ≤ 500 targets."""
        sizes = {**cls.rules.batch_size,
                 **{Operation(op): max(1, int(n)) for op, n in config.batch_sizes.items()}}
        for op in (Operation.SEND, Operation.SEND_GROUP):
            sizes[op] = min(sizes[op], MAX_TARGETS)
        return replace(cls.rules, batch_size=sizes)

    def auth(self) -> httpx.Auth:
        return MaximAuth(self.config)

    def classify(self, key: str, reply: Reply) -> Result:
        # Maxim's business codes come with HTTP 200 (or its 429); a body code on
        # another status is a gateway's or the framework's: the status decides.
        if reply.status not in (200, 429) and "code" in reply.body:
            reply = replace(reply, body={k: v for k, v in reply.body.items() if k != "code"})
        return super().classify(key, reply)

    def item_result(self, item: Mapping[str, Any] | None) -> Result:
        """One item of a batch reply ({success, reason} or {result, reason}),
        None when the reply left it out. Reasons are free text; a leading
        code is used when there is one."""
        if item is None:
            return MISSING
        if (success := item.get("success", item.get("result"))) is True or success == "success":
            return Result(Outcome.OK, "200")
        reason = str(item.get("reason") or "failed")
        if found := _CODE_IN_REASON.match(reason):
            code = int(found.group(1))
            return Result(self.codes.outcome(code), str(code), reason)
        if "already" in reason.lower() or "exist" in reason.lower():
            return Result(Outcome.EXISTS, "exists", reason)
        return Result(Outcome.REJECTED, "failed", reason)

    async def call(self, key: str | Operation, method: str, url: str,
                   **kwargs: Any) -> tuple[Result, dict[str, Any]]:
        """The base's call, `url` a path under the app's api_endpoint."""
        return await super().call(key, method, self.config.api_endpoint.rstrip("/") + url, **kwargs)

    # -- users ---------------------------------------------------------------------------

    async def register_users(self, profiles: Sequence[Profile]) -> list[Result]:
        """Register with /user/register/batch and a generated password per
        user, then set the profiles. An existing username is `exists` with
        its user_id (looked up when the reply leaves it out) and no password."""
        batch = Batch(profiles, lambda p: "; ".join(self.rules.check_profile(p)))
        for part in chunks(batch.valid, self.rules.batch_size[Operation.REGISTER]):
            batch.put(part, await self._register_batch([profiles[i] for i in part]))
        return batch.done()

    async def _register_batch(self, profiles: Sequence[Profile]) -> list[Result]:
        passwords = [new_password() for _ in profiles]
        payload = {"list": [{"username": p.user_id, "password": pw}
                            for p, pw in zip(profiles, passwords, strict=True)]}
        call, body = await self.call(Operation.REGISTER, "POST", "/user/register/batch", json=payload)
        if not call.succeeded:
            return same_for_all(call, len(profiles))
        items = {str(name or "").lower(): item for name, item in items_by(body, "username").items()}
        results = []
        for profile, password in zip(profiles, passwords, strict=True):
            item = items.get(profile.user_id.lower())
            result = self.item_result(item)
            user_id = item and item.get("user_id")
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
            found, body = await self.call(Operation.GET_PROFILES, "GET", "/roster/name",
                                          params={"username": username})
            data = body.get("data")
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
        for k, written_k in zip(there, written, strict=True):
            if not written_k.succeeded:
                account = results[k].data
                results[k] = replace(written_k, data=account, message=(
                    f"account {account['user_id']} is there, but its profile was not set: "
                    f"{written_k.message}"))
        return results

    async def _write_profiles(self, entries: Sequence[tuple[int, Profile]]) -> list[Result]:
        """/user/profile/batch and /user/avatar/batch for (user_id, profile)
        pairs; one Result per pair, the first failure kept."""
        out = [Result(Outcome.OK, "200")] * len(entries)
        fields = [(k, {"user_id": uid, **profile_fields(p)})
                  for k, (uid, p) in enumerate(entries) if profile_fields(p)]
        avatars = [(k, {"user_id": uid, "avatar": p.avatar})
                   for k, (uid, p) in enumerate(entries) if p.avatar]
        for path, rows in (("/user/profile/batch", fields), ("/user/avatar/batch", avatars)):
            for part in chunks(rows, self.rules.batch_size[Operation.UPDATE_PROFILE]):
                call, body = await self.call(Operation.UPDATE_PROFILE, "POST", path,
                                             json={"list": [row for _, row in part]})
                items = items_by(body, "user_id")
                for k, row in part:
                    result = call if not call.succeeded else self.item_result(items.get(row["user_id"]))
                    if out[k].succeeded:  # the first failure is kept
                        out[k] = result
        return out

    async def update_profiles(self, profiles: Sequence[Profile]) -> list[Result]:
        """Profiles keyed by Maxim's user_id: nickname and extras, then avatar."""
        def problem(profile: Profile) -> str:
            errors = [e for e in self.rules.check_profile(profile) if not e.startswith("user_id:")]
            return "; ".join(filter(None, [not_an_id("user_id", profile.user_id), *errors]))

        batch = Batch(profiles, problem)
        written = await self._write_profiles([(checked_id(profiles[i].user_id), profiles[i])
                                              for i in batch.valid])
        batch.put(batch.valid, [replace(r, data={"user_id": profiles[i].user_id})
                                for i, r in zip(batch.valid, written, strict=True)])
        return batch.done()

    async def get_profiles(self, user_ids: Sequence[str]) -> list[Profile | None]:
        """GET /user/profile acting as each user. Unknown ids are None; any
        other failure raises CallFailed with its Result."""
        return await self.each(user_ids, self._get_profile)

    async def _get_profile(self, user_id: str) -> Profile | None:
        if (uid := vendor_id(user_id)) is None:
            return None
        call, body = await self.call(Operation.GET_PROFILES, "GET", "/user/profile",
                                     headers=acting_as(user_id=uid))
        if call.code == "10000":
            return None
        data = body.get("data")
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
        return await self.each(user_ids, self._issue_token)

    async def _issue_token(self, user_id: str) -> Result:
        if problem := not_an_id("user_id", user_id):
            return invalid(problem)
        uid, password = vendor_id(user_id), new_password()
        changed, _ = await self.call(Operation.ISSUE_TOKEN, "POST", "/user/change_password_admin",
                                     headers=acting_as(user_id=uid), json={"password": password})
        if not changed.succeeded:
            return changed
        call, body = await self.call(Operation.ISSUE_TOKEN, "POST", "/token/id",
                                     json={"user_id": uid, "password": password},
                                     expect=("data.token",))
        if not call.succeeded:
            return call
        out = {"user_id": user_id, "token": body["data"]["token"], "password": password}
        if (expiry := expires_at(body["data"].get("expire"))) is not None:
            out["expires_at"] = expiry
        return Result(Outcome.OK, "200", data=out)

    async def _user_page(self, number: int, size: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of GET /user/list (≤ 200): its entries ({user_id, username,
        status}), and whether it is the last."""
        call, body = await self.call(Operation.LIST_USERS, "GET", "/user/list",
                                     params={"page_num": number, "page_size": size})
        if not call.succeeded:
            raise CallFailed(call)
        data = body.get("data")
        page = data if isinstance(data, list) else []
        return [item for item in page if isinstance(item, dict) and _is_id(item.get("user_id"))], \
            len(page) < size

    async def list_users(self, page_size: int = MAX_PAGE_SIZE) -> AsyncIterator[str]:
        """Every user of the app (GET /user/list, ≤ 200 a page), by the
        config's `source_id`. Raises CallFailed."""
        async for entries, _ in offset_pages(self._user_page, None, min(max(1, page_size), MAX_PAGE_SIZE)):
            for entry in entries:
                yield self._listed_ids(entry)[0]

    async def list_user_pages(self, cursor: str | None = None, page_size: int = MAX_PAGE_SIZE
                              ) -> AsyncIterator[tuple[list[Profile], str | None]]:
        """Pages of GET /user/list (≤ 200) with each user's profile. Maxim has
        no bulk profile read, so a page costs one /user/profile call per user
        (`concurrency` at a time); a user deleted meanwhile is left out. Each
        profile goes by the config's `source_id` (the username by default:
        the app's identity), the other id in extra ("maxim_user_id" or
        "username"). Raises CallFailed."""
        size = min(max(1, page_size), MAX_PAGE_SIZE)
        async for entries, after in offset_pages(self._user_page, cursor, size):
            profiles = await self.each(entries, self._listed_profile)
            yield [p for p in profiles if p is not None], after

    def _listed_ids(self, entry: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """A listed user's id by `source_id`, and the other id as a profile extra."""
        uid, username = str(entry["user_id"]), str(entry.get("username") or "")
        if not username:  # /user/list documents it: without it a user has no app identity
            raise CallFailed(Result(Outcome.RETRYABLE, "incomplete",
                                    f"user {uid}: the listing carried no username"))
        if self.config.source_id == "user_id":
            return uid, {"username": username}
        return username, {"maxim_user_id": uid}

    async def _listed_profile(self, entry: Mapping[str, Any]) -> Profile | None:
        user_id, other = self._listed_ids(entry)
        profile = await self._get_profile(str(entry["user_id"]))
        return replace(profile, user_id=user_id, extra={**profile.extra, **other}) if profile else None

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
        if problem := not_an_id("from_user_id", sender):
            return same_for_all(invalid(problem), len(targets))
        content = {"type": target_type, "from_user_id": vendor_id(sender), **message_fields(message)}

        async def call(ids: list[int]) -> Result:
            body = {"targets": ids, **content}
            if dedup_key is not None:
                body["transaction_id"] = transaction_id(dedup_key, target_type, ids)
            # An unsure reply is maybe_delivered even with a transaction_id:
            # whether to repeat it is the engine's choice (repeat_safe).
            result, _ = await self.call(op, "POST", "/message/send", json=body, repeat_safe=False)
            return result

        return await self._by_batch(op, targets, "targets", call)

    async def broadcast(self, sender: str, message: Message, *,
                        dedup_key: str | None = None) -> Result:
        """POST /message/broadcast to every user, acting as `sender`. The
        endpoint takes no transaction_id, so `dedup_key` cannot be honoured: a
        broadcast whose reply was lost is `maybe_delivered`."""
        if problem := not_an_id("user_id", sender):
            return invalid(problem)
        call, body = await self.call(Operation.BROADCAST, "POST", "/message/broadcast",
                                     headers=acting_as(user_id=vendor_id(sender)),
                                     json={"type": 1, **message_fields(message)})
        if call.succeeded and isinstance(body.get("data"), dict):
            return replace(call, data={"send_num": body["data"].get("send_num")})
        return call

    async def _by_batch(self, op: Operation, values: Sequence[str], field_name: str,
                        call: Callable[[list[int]], Awaitable[Result | list[Result]]]) -> list[Result]:
        """Split `values` (Maxim ids) into batches and run `call` on each.
        Ids that cannot be Maxim's are rejected without a call. When `call`
        gives one Result for the whole batch and that is `rejected`, each id
        is tried alone, so one bad id (e.g. a deleted user) does not sink the
        rest: a rejected call did nothing at the vendor."""
        batch = Batch(values, lambda value: not_an_id(field_name, value))
        for part in chunks(batch.valid, self.rules.batch_size[op]):
            ids = [checked_id(values[i]) for i in part]
            outcome = await call(ids)
            if isinstance(outcome, Result) and outcome.outcome is Outcome.REJECTED and len(ids) > 1:
                alone = [await call([uid]) for uid in ids]  # a Result each (or a list of one)
                outcome = [one if isinstance(one, Result) else one[0] for one in alone]
            batch.put(part, outcome)
        return batch.done()

    # -- the bridge ------------------------------------------------------------------------

    @classmethod
    def read_feed(cls, config: MaximConfig, delivery: "Delivery", now: float) -> list["FeedMessage"]:
        return read_subscription(config, delivery, now)

    async def relay(self, message: "FeedMessage", *, dedup_key: str) -> Result:
        """POST /message/send from the sender to the one user or group, the
        mark in `ext`, and a transaction_id from dedup_key: the vendor drops
        a repeat, so a relay cut off mid-call can simply be made again.
        data["msg_id"]: msg_ids[0] (the vendor returns it for one target;
        None when it does not, e.g. for a repeat it dropped)."""
        fields = relay_fields(message.kind, message.text, message.custom)
        if isinstance(fields, str):
            return invalid(fields)
        problem = not_an_id("sender", message.sender) or not_an_id("to", message.to)
        if problem:
            return invalid(problem)
        target_type, target = (2 if message.group else 1), checked_id(message.to)
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        body = {"type": target_type, "targets": [target], "from_user_id": vendor_id(message.sender),
                "ext": mark_json(), "transaction_id": transaction_id(dedup_key, target_type, [target]),
                **fields}
        result, reply = await self.call(op, "POST", "/message/send", json=body)
        if not result.succeeded:
            return result
        ids = reply.get("msg_ids") if isinstance(reply.get("msg_ids"), list) else []
        msg_id = str(ids[0]) if ids and _is_id(ids[0]) else None
        return Result(Outcome.OK, result.code, "" if msg_id else "the reply carried no msg_ids",
                      data={"msg_id": msg_id, "conversation_id": message.to})

    async def recall(self, message: "FeedMessage", target_msg_id: str) -> Result:
        """POST /message/recall {conversation_id, msg_id} acting as the
        sender; the conversation is the peer user or the group."""
        problem = (not_an_id("sender", message.sender) or not_an_id("to", message.to)
                   or not_an_id("msg_id", target_msg_id or ""))
        if problem:
            return invalid(problem)
        op = Operation.SEND_GROUP if message.group else Operation.SEND
        result, _ = await self.call(op, "POST", "/message/recall", repeat_safe=True,
                                    headers=acting_as(user_id=vendor_id(message.sender)),
                                    json={"conversation_id": vendor_id(message.to),
                                          "msg_id": vendor_id(target_msg_id)})
        if result.code == "10010":
            # The admin token got this far, so "no permission" is about this
            # message (not the sender's, or too old), not a reason to stop the job.
            return replace(result, outcome=Outcome.REJECTED)
        return result
