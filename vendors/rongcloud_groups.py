"""RongCloud's groups and friends, as a part of RongCloudClient
(vendors/rongcloud.py): groups the app names, created and joined in calls of
at most 1000 members; friends added directly; and both read back.

RongCloud keeps no group record beyond its members: a group nobody is in
does not exist, and /group/user/query.json answers it with no users. The
friend calls belong to the vendor's profile hosting service (信息托管);
without it the vendor answers 1009.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from .vocabulary import Group, Operation, Result, VendorRules
from .client import R, T, Batch, CallFailed, chunks, invalid, same_for_all
from .rongcloud_rules import (FRIEND_PAGE, MAX_GROUP_CALL_MEMBERS, MAX_GROUP_MEMBERS, id_problem,
                              problems)


class RongCloudGroups:
    """Groups and friends. RongCloudClient provides `_post` (a signed form
    call), `_one_call_each`, `each` and `rules`."""

    _post: Callable[..., Awaitable[tuple[Result, dict[str, Any]]]]
    _one_call_each: Callable[..., Awaitable[list[Result]]]
    rules: VendorRules
    if TYPE_CHECKING:
        async def each(self, items: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]: ...

    async def create_group(self, group: Group) -> Result:
        """RongCloud groups are the app's: the app picks the id, and there is no
        owner at the vendor (the owner is simply a member). Creating an existing
        group adds the members again and answers 200, so a repeat is `ok`."""
        members = list(dict.fromkeys([group.owner, *group.members]))
        problem = problems(
            id_problem("group_id", group.group_id), id_problem("owner", group.owner),
            None if group.name else "name: required (RongCloud shows it in push notifications)",
            *(id_problem("members", m) for m in members[1:]),
            f"members: {len(members)}, at most {MAX_GROUP_MEMBERS} per group"
            if len(members) > MAX_GROUP_MEMBERS else None)
        if problem:
            return invalid(problem)
        first, *rest = chunks(members, MAX_GROUP_CALL_MEMBERS)
        form = [("userId", m) for m in first] + [("groupId", group.group_id),
                                                 ("groupName", group.name)]
        result, _ = await self._post("create_group", "/group/create.json", form)
        for more in rest:  # the rest join in further calls (all idempotent)
            if not result.succeeded:
                break
            result = await self._join(group.group_id, more)
        return replace(result, data={"group_id": group.group_id}) if result.succeeded else result

    async def _join(self, group_id: str, members: Sequence[str]) -> Result:
        # No groupName: join would rename the group with it.
        form = [("userId", m) for m in members] + [("groupId", group_id)]
        result, _ = await self._post("add_members", "/group/join.json", form)
        return result

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        problem = id_problem("group_id", group_id)
        if problem:
            return same_for_all(invalid(problem), len(members))
        batch = Batch(members, lambda member: id_problem("members", member))

        async def join(part: Sequence[int]) -> Result:
            return await self._join(group_id, [members[i] for i in part])

        parts = chunks(batch.valid, self.rules.batch_size[Operation.ADD_MEMBERS])
        for part, result in zip(parts, await self.each(parts, join), strict=True):
            batch.put(part, result)
        return batch.done()

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """/friend/add.json with optType=2 adds directly, without the other's
        approval (server-sdk-go FriendAdd). Needs the vendor's profile hosting
        service; without it the vendor answers 1009 (rejected)."""
        def problem(friend: str) -> str | None:
            itself = f"friend_ids: {friend!r} is the owner itself" if owner == friend else None
            return problems(id_problem("owner", owner), id_problem("friend_ids", friend), itself)

        async def befriend(friend: str) -> Result:
            form = [("userId", owner), ("targetId", friend), ("optType", "2")]
            result, _ = await self._post("import_friends", "/friend/add.json", form)
            return result

        return await self._one_call_each(friend_ids, problem, befriend)

    # -- reading back --------------------------------------------------------------------

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """/group/user/query.json: every member in one reply; none means no group."""
        if id_problem("group_id", group_id):
            return None  # such an id cannot name a group
        result, body = await self._post(Operation.GET_MEMBERS.value, "/group/user/query.json",
                                        [("groupId", group_id)])
        if not result.succeeded:
            raise CallFailed(result)
        users = [u.get("id") for u in body.get("users") or [] if isinstance(u, dict)]
        return list(dict.fromkeys(str(u) for u in users if u)) or None

    async def get_friends(self, user_id: str) -> list[str]:
        """/friend/get.json, 50 a page, following `pageToken` until the vendor
        gives none. Raises CallFailed (1009 without profile hosting)."""
        if problem := id_problem("user_id", user_id):
            raise CallFailed(invalid(problem))
        friends: list[str] = []
        token = ""
        while True:
            form = [("userId", user_id), ("size", str(FRIEND_PAGE))]
            if token:
                form.append(("pageToken", token))
            result, body = await self._post(Operation.GET_FRIENDS.value, "/friend/get.json", form)
            if not result.succeeded:
                raise CallFailed(result)
            page = [f.get("userId") for f in body.get("friendList") or [] if isinstance(f, dict)]
            friends += [str(f) for f in page if f]
            token = str(body.get("pageToken") or "")
            if not token or not page:
                return list(dict.fromkeys(friends))
