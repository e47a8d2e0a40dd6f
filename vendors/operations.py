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
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

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
class Step:
    operation: Operation
    method: str  # the VendorClient method that does it
    idempotent: bool  # repeating a call that may have arrived does no harm
    run: Runner  # (client, items, job params, dedup key) -> one Result per item


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
    return {"text": message.text} if message.text is not None else {"custom": dict(message.custom)}


def encode_group(group: Group) -> dict[str, Any]:
    """A group item's payload; its key is the group id."""
    return {"name": group.name, "owner": group.owner, "members": list(group.members)}


def encode_members(group_id: str, owner: str, members: Sequence[str]) -> dict[str, Any]:
    """An add_members item: one slice of one group's members."""
    return {"group_id": group_id, "owner": owner, "members": list(members)}


def encode_friends(owner: str, friend_ids: Sequence[str]) -> dict[str, Any]:
    """An import_friends item: one owner's friends (its key is the owner)."""
    return {"friends": list(friend_ids)}


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
    return await client.issue_tokens([i.key for i in items])


async def _verify(client, items, params, key):
    """An item is `ok` when the target has the account with the profile it was given."""
    from .client import CallFailed

    try:
        found = await client.get_profiles([i.key for i in items])
    except CallFailed as failed:
        return [failed.result] * len(items)
    results = []
    for item, profile in zip(items, found):
        if profile is None:
            results.append(Result(Outcome.REJECTED, "missing", f"{item.key!r} is not at the target"))
            continue
        want = item.payload.get("name")
        if want and profile.name != want:
            results.append(Result(Outcome.REJECTED, "differs",
                                  f"name is {profile.name!r} at the target, {want!r} in the input"))
        else:
            results.append(Result(Outcome.OK, "found", data={"user_id": profile.user_id}))
    return results


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
    return [await one(item) for item in items]


async def _add_members(client, items, params, key):
    results = []
    for item in items:
        p = item.payload
        results.append(_all_of(await client.add_members(p["group_id"], p["owner"], p["members"])))
    return results


async def _import_friends(client, items, params, key):
    return [_all_of(await client.import_friends(item.key, item.payload["friends"])) for item in items]


STEPS: dict[Operation, Step] = {s.operation: s for s in (
    Step(Operation.REGISTER, "register_users", True, _register),
    Step(Operation.UPDATE_PROFILE, "update_profiles", True, _update),
    Step(Operation.ISSUE_TOKEN, "issue_tokens", True, _issue),
    Step(Operation.GET_PROFILES, "get_profiles", True, _verify),
    Step(Operation.SEND, "send", False, _send),
    Step(Operation.SEND_GROUP, "send_group", False, _send_group),
    Step(Operation.BROADCAST, "broadcast", False, _broadcast),
    # The vendor may assign the group's id (NetEase, Maxim): a repeat makes a
    # second group. Vendors where the app picks the id say so in repeat_safe_ops.
    Step(Operation.CREATE_GROUP, "create_group", False, _create_group),
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
