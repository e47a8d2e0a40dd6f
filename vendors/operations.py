"""The operation table: how a job runs each vendor operation on its items.

For every `Operation` a job can be made of: the client method, how an item's
stored payload (and the job's params) become that method's arguments and how
its results map back to the items, whether the operation is idempotent at
the vendor (a send is not: one interrupted mid-call may have been delivered)
and how a batch's deduplication key is made where the vendor takes one.

Producers encode payloads with `encode_*`; workers look the operation up and
call `run` without naming any operation themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Sequence

from .vocabulary import Group, Message, Operation, Outcome, Profile, Result

if TYPE_CHECKING:
    from .client import VendorClient


@dataclass(frozen=True)
class WorkItem:
    """One item as a worker hands it to the table: its key (a user id, a
    recipient, a group id) and its stored payload."""

    seq: int
    key: str
    payload: Mapping[str, Any]


Runner = Callable[["VendorClient", Sequence[WorkItem], Mapping[str, Any], str],
                  Awaitable[list[Result]]]


@dataclass(frozen=True)
class Lookup:
    """How to find at the vendor what a call cut off before its answer made."""

    noun: str  # what the call makes ("group"), for the words of a result
    field: str  # the Result.data field naming it
    # The ids of what matches the item (None where the vendor has no read for it).
    find: Callable[["VendorClient", WorkItem], Awaitable[list[str] | None]]
    # The item's Result once its one match is known (what the call would have answered).
    settle: Callable[["VendorClient", WorkItem, str], Awaitable[Result]]


@dataclass(frozen=True)
class Step:
    operation: Operation
    method: str  # the VendorClient method that does it
    idempotent: bool  # repeating a call that may have arrived does no harm
    run: Runner  # (client, items, job params, dedup key) -> one Result per item
    unsure: str = "it may have reached the vendor"  # what a call cut off may have done
    lookup: Lookup | None = None  # how to look instead of guessing, after a cut-off call
    # One call per item whatever the vendor's batch size (which then bounds
    # what one item carries, e.g. a group's first members), for estimates.
    per_item: bool = False


# -- payloads ---------------------------------------------------------------------------------

def encode_profile(name: str, avatar: str, extra: Mapping[str, str]) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name, "avatar": avatar}
    if extra:
        payload["extra"] = dict(extra)
    return payload


def decode_profile(item: WorkItem) -> Profile:
    p = item.payload
    return Profile(item.key, p.get("name", ""), p.get("avatar", ""), p.get("extra", {}))


def encode_message(message: Message) -> dict[str, Any]:
    """A message as job params carry it."""
    return {"text": message.text} if message.custom is None else {"custom": dict(message.custom)}


def encode_group(group: Group, **extra: str) -> dict[str, Any]:
    """A group item's payload; its key is the group id. `members` is the
    slice the create call takes (a migration run adds the rest as members)."""
    return {"name": group.name, "owner": group.owner, "members": list(group.members), **extra}


def encode_member(group_id: str, owner: str, member: str) -> dict[str, Any]:
    """An add_members item: one member of one group."""
    return {"group_id": group_id, "owner": owner, "member": member}


def encode_pair(user_id: str, friend_id: str) -> dict[str, Any]:
    """An import_friends item: one friendship."""
    return {"user_id": user_id, "friend_id": friend_id}


# Payload fields that hold a user's or a group's id. In a migration run the
# worker translates them through the run's id map before a step runs: a
# scalar field must be found (else the item is skipped), a list keeps the
# ids found (a group is still made without a member whose account failed).
ID_FIELDS: dict[str, str] = {"user_id": "user", "friend_id": "user", "owner": "user",
                             "member": "user", "members": "user", "friends": "user",
                             "group_id": "group"}


def bind(item: WorkItem, target_ids: Mapping[str, Mapping[str, str]]) -> WorkItem | tuple[str, str]:
    """The item with its ids as the target knows them (`target_ids`: kind ->
    source id -> target id), or the (kind, id) that has none there (its
    account or group did not make it)."""
    payload = dict(item.payload)
    for name, kind in ID_FIELDS.items():
        value = payload.get(name)
        if value is None:
            continue
        ids = target_ids.get(kind, {})
        if isinstance(value, list):
            payload[name] = [ids[v] for v in value if v in ids]
        elif isinstance(value, str):
            if value not in ids:
                return kind, value
            payload[name] = ids[value]
    return WorkItem(item.seq, item.key, payload)


def references(payloads: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Every source id the payloads name, by kind."""
    refs: dict[str, set[str]] = {}
    for payload in payloads:
        for name, kind in ID_FIELDS.items():
            value = payload.get(name)
            if isinstance(value, list):
                refs.setdefault(kind, set()).update(value)
            elif isinstance(value, str):
                refs.setdefault(kind, set()).add(value)
    return refs


def dedup_key(scope: str, items: Sequence[WorkItem]) -> str:
    """The same items of the same job always give the same key, so a vendor
    that deduplicates drops a repeated call instead of delivering it twice."""
    seqs = ",".join(str(item.seq) for item in items)
    return hashlib.sha256(f"{scope}:{seqs}".encode()).hexdigest()[:32]


def _all_of(results: Sequence[Result]) -> Result:
    """One item that stands for many vendor results (a slice of members, an
    owner's friends): the first that did not succeed, else the first."""
    return next((r for r in results if not r.succeeded), results[0]) if results else Result(Outcome.OK)


# -- runners ----------------------------------------------------------------------------------

async def _register(client, items, params, key):
    return await client.register_users([decode_profile(i) for i in items])


async def _update(client, items, params, key):
    return await client.update_profiles([decode_profile(i) for i in items])


async def _issue(client, items, params, key):
    # A run's token items name the account in the payload, translated to the target's id.
    return await client.issue_tokens([i.payload.get("user_id", i.key) for i in items])


async def _verify(client: VendorClient, items: Sequence[WorkItem], params: Mapping[str, Any],
                  key: str) -> list[Result]:
    """An item is `ok` when the target holds what it was given: an account
    with its profile, a group with its members, a user's friends. Anything
    else is `rejected` with what was expected and what was found."""
    from .client import CallFailed

    users = [i for i in items if i.payload.get("check", "profile") == "profile"]
    results: dict[int, Result] = {}
    found: Sequence[Profile | CallFailed | None]
    try:
        found = await client.get_profiles([i.payload.get("user_id", i.key) for i in users])
    except CallFailed as failed:
        found = [failed] * len(users)
    for item, profile in zip(users, found, strict=True):
        results[item.seq] = _profile_check(item, profile)
    async def relation(item: WorkItem) -> Result:
        try:
            return await _relation_check(client, item)
        except CallFailed as failed:
            return failed.result

    # At once, within the client's concurrency: the limiter spaces the calls.
    others = [i for i in items if i.seq not in results]
    results.update(zip((i.seq for i in others), await client.each(others, relation), strict=True))
    return [results[i.seq] for i in items]


def _profile_check(item: WorkItem, profile: Any) -> Result:
    from .client import CallFailed

    if isinstance(profile, CallFailed):
        return profile.result
    user_id = item.payload.get("user_id", item.key)
    if profile is None:
        return Result(Outcome.REJECTED, "missing", f"{user_id!r} is not at the target")
    differs = [f"{name} is {getattr(profile, name)!r} at the target, {item.payload[name]!r} expected"
               for name in ("name", "avatar") if item.payload.get(name)
               and getattr(profile, name) != item.payload[name]]
    if differs:
        return Result(Outcome.REJECTED, "differs", "; ".join(differs))
    return Result(Outcome.OK, "found", data={"user_id": profile.user_id})


async def _relation_check(client, item: WorkItem) -> Result:
    """A group's members or a user's friends, as a set: what is missing."""
    p = item.payload
    if p["check"] == "members":
        there = await client.get_members(p["group_id"], p["owner"])
        if there is None:
            return Result(Outcome.REJECTED, "missing", f"group {p['group_id']!r} is not at the target")
        want, what = set(p["members"]) | {p["owner"]}, "members"
    else:
        there, want, what = await client.get_friends(p["user_id"]), set(p["friends"]), "friends"
    missing = sorted(want - set(there))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return Result(Outcome.REJECTED, "differs",
                      f"{len(missing)} of {len(want)} {what} missing at the target: {shown}")
    return Result(Outcome.OK, "found", data={what: len(want)})


async def _send(client, items, params, key):
    return await client.send(params["sender"], [i.key for i in items],
                             Message(**params["message"]), dedup_key=key)


async def _send_group(client, items, params, key):
    return await client.send_group(params["sender"], [i.key for i in items],
                                   Message(**params["message"]), dedup_key=key)


async def _broadcast(client, items, params, key):
    return [await client.broadcast(params.get("sender", ""), Message(**params["message"]),
                                   dedup_key=dedup_key(key, [item])) for item in items]


async def _create_group(client, items, params, key):
    async def one(item: WorkItem) -> Result:
        p = item.payload
        return await client.create_group(Group(item.key, p["name"], p["owner"], p.get("members", ())))
    return await client.each(items, one)


async def _find_group(client, item: WorkItem) -> list[str] | None:
    return await client.find_groups(item.payload["owner"], item.payload["name"])


async def _settle_group(client, item: WorkItem, group_id: str) -> Result:
    """A group the cut-off create made: the members it was to be made with
    that it lacks (the create's later slices) are added."""
    from .client import CallFailed

    p, same = item.payload, client.rules.id_key
    try:
        there = await client.get_members(group_id, p["owner"])
    except CallFailed as failed:
        return failed.result
    if there is None:  # listed a moment ago: the vendor's read lags
        return Result(Outcome.RETRYABLE, "lagging", f"group {group_id} was listed but is not found")
    present = {same(m) for m in there}
    missing = [m for m in p.get("members", ()) if same(m) not in present]
    added = await client.add_members(group_id, p["owner"], missing) if missing else []
    not_added = [m for m, r in zip(missing, added, strict=True) if not r.succeeded]
    return Result(Outcome.OK, "found", f"made by the cut-off create; {len(missing) - len(not_added)} "
                                       f"members added, {len(not_added)} not",
                  data={"group_id": group_id, "members_not_added": not_added})


def _runs(items: Sequence[WorkItem], field: str) -> list[list[WorkItem]]:
    """Consecutive items sharing a payload field (a group's members, an
    owner's friends): one vendor call each."""
    out: list[list[WorkItem]] = []
    for item in items:
        if out and out[-1][0].payload[field] == item.payload[field]:
            out[-1].append(item)
        else:
            out.append([item])
    return out


async def _add_members(client, items, params, key):
    async def group(part: list[WorkItem]) -> list[Result]:
        p = part[0].payload
        return await client.add_members(p["group_id"], p["owner"], [i.payload["member"] for i in part])

    return [r for part in await client.each(_runs(items, "group_id"), group) for r in part]


async def _import_friends(client, items, params, key):
    """One call per owner's run of pairs. Where the vendor keeps a roster
    per user (its rules' `friends_one_way`), the other side is written too."""
    async def owner(part: list[WorkItem]) -> list[Result]:
        return await client.import_friends(part[0].payload["user_id"],
                                           [i.payload["friend_id"] for i in part])

    async def other_side(item: WorkItem) -> list[Result]:
        return await client.import_friends(item.payload["friend_id"], [item.payload["user_id"]])

    flat = [r for part in await client.each(_runs(items, "user_id"), owner) for r in part]
    if client.rules.friends_one_way:
        back = await client.each(items, other_side)
        flat = [a if not a.succeeded else _all_of([a, *b]) for a, b in zip(flat, back, strict=True)]
    return flat


STEPS: dict[Operation, Step] = {s.operation: s for s in (
    Step(Operation.REGISTER, "register_users", True, _register),
    Step(Operation.UPDATE_PROFILE, "update_profiles", True, _update),
    Step(Operation.ISSUE_TOKEN, "issue_tokens", True, _issue),
    Step(Operation.GET_PROFILES, "get_profiles", True, _verify),
    Step(Operation.SEND, "send", False, _send, "the message may have been delivered"),
    Step(Operation.SEND_GROUP, "send_group", False, _send_group, "the message may have been delivered"),
    Step(Operation.BROADCAST, "broadcast", False, _broadcast, "the broadcast may have gone out",
         per_item=True),
    # The vendor may assign the group's id (NetEase, Maxim): a repeat makes a
    # second group. Vendors where the app picks the id say so in repeat_safe_ops.
    Step(Operation.CREATE_GROUP, "create_group", False, _create_group, "the group may have been created",
         Lookup("group", "group_id", _find_group, _settle_group), per_item=True),
    Step(Operation.ADD_MEMBERS, "add_members", True, _add_members),
    Step(Operation.IMPORT_FRIENDS, "import_friends", True, _import_friends),
)}


def step(operation: Operation) -> Step:
    try:
        return STEPS[operation]
    except KeyError:
        raise ValueError(f"{operation} is not an operation a job can run") from None


def idempotent(key: str) -> bool:
    """Whether a call under rate-limit key `key` may be repeated (keys that
    name no job operation, such as "auth", are reads or token fetches)."""
    try:
        found = STEPS.get(Operation(key))
    except ValueError:
        return True
    return found is None or found.idempotent
