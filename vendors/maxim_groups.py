"""Maxim's groups and friends, as a part of MaximClient (vendors/maxim.py):
creating groups and inviting members as the owner, adding friends directly,
and reading members and friends back.

Friends are read with `GET /roster/list?cursor&limit`, acting as the user.
The vendor also names `GET /user/rosters` (its quick-start); both answer the
user's friend ids, but only /roster/list is in the vendor's API spec and
takes a page size, so a user with thousands of friends is read in bounded
replies rather than one reply of unknown size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .vocabulary import Group, Operation, Outcome, Result, VendorRules
from .client import Batch, CallFailed, invalid, same_for_all
from .maxim_wire import acting_as, checked_id, is_id, items_by, not_an_id, vendor_id
from .paging import NoSuchList, read_all

READ_PAGE = 1000  # limit of member_list and roster/list (member_list's documented default)
GROUP_MISSING = "20001"


class MaximGroups:
    """Groups and friends. MaximClient provides `call`, `rules`,
    `item_result` and `_by_batch` (a list operation split into batches)."""

    call: Callable[..., Awaitable[tuple[Result, dict[str, Any]]]]
    item_result: Callable[[Mapping[str, Any] | None], Result]
    _by_batch: Callable[..., Awaitable[list[Result]]]
    rules: VendorRules

    async def create_group(self, group: Group) -> Result:
        """POST /group/create as the owner with the first slice of members,
        then /group/invite for the rest. Maxim assigns the group id
        (data["group_id"]); the app's `group.group_id` cannot be kept. Not
        idempotent: a non-success Result that has data["group_id"] means the
        group exists, so finish it with add_members rather than create again."""
        if problem := not_an_id("user_id: owner", group.owner):
            return invalid(problem)
        if not group.name:
            return invalid("name: required")
        others = [m for m in dict.fromkeys(group.members) if m != group.owner]
        if problem := next(filter(None, (not_an_id("user_list", m) for m in others)), None):
            return invalid(problem)
        members = [checked_id(m) for m in others]
        first = self.rules.batch_size[Operation.ADD_MEMBERS]
        payload = {"name": group.name, "description": "", "type": 0, "user_list": members[:first]}
        call, body = await self.call(Operation.CREATE_GROUP, "POST", "/group/create",
                                     headers=acting_as(user_id=vendor_id(group.owner)), json=payload,
                                     expect=("data.group_id",))
        if not call.succeeded:
            return call
        group_id = str(body["data"]["group_id"])
        rest = await self.add_members(group_id, group.owner, others[first:])
        if failed := [r for r in rest if not r.succeeded]:
            return replace(failed[0], data={"group_id": group_id}, message=(
                f"group {group_id} created, but {len(failed)} of {len(members)} members "
                f"were not added: {failed[0].message}"))
        return Result(Outcome.OK, "200", data={"group_id": group_id})

    async def add_members(self, group_id: str, owner: str, members: Sequence[str]) -> list[Result]:
        """POST /group/invite as the owner; per-user results."""
        if problem := not_an_id("group_id", group_id) or not_an_id("owner", owner):
            return same_for_all(invalid(problem), len(members))
        gid, as_owner = vendor_id(group_id), acting_as(user_id=vendor_id(owner))

        async def call(ids: list[int]) -> list[Result]:
            result, body = await self.call(Operation.ADD_MEMBERS, "POST", "/group/invite",
                                           headers=as_owner, json={"group_id": gid, "user_list": ids})
            if not result.succeeded:
                return same_for_all(result, len(ids))
            items = items_by(body, "user_id")
            return [self.item_result(items.get(uid)) for uid in ids]

        return await self._by_batch(Operation.ADD_MEMBERS, members, "user_list", call)

    async def import_friends(self, owner: str, friend_ids: Sequence[str]) -> list[Result]:
        """POST /user/add_roster acting as `owner`: adds friends directly."""
        if problem := not_an_id("user_id: owner", owner):
            return same_for_all(invalid(problem), len(friend_ids))
        as_owner = acting_as(user_id=vendor_id(owner))

        async def call(ids: list[int]) -> Result:
            result, _ = await self.call(Operation.IMPORT_FRIENDS, "POST", "/user/add_roster",
                                        headers=as_owner, json={"list": ids})
            return result

        batch = Batch(friend_ids, lambda f: "list: cannot befriend oneself" if f == owner else None)
        batch.put(batch.valid, await self._by_batch(Operation.IMPORT_FRIENDS,
                                                    [friend_ids[i] for i in batch.valid], "list", call))
        return batch.done()

    # -- reading back --------------------------------------------------------------------

    async def get_members(self, group_id: str, owner: str) -> list[str] | None:
        """GET /group/member_list, 1000 a page, acting as the owner (as the
        other group calls do). An unknown group (20001) is None."""
        gid = vendor_id(group_id)
        if gid is None:
            return None
        as_owner = acting_as(user_id=vendor_id(owner)) if vendor_id(owner) else {}

        async def page(number: int, size: int) -> tuple[list[str], bool]:
            call, body = await self.call(Operation.GET_MEMBERS, "GET", "/group/member_list",
                                         headers=as_owner, params={
                                             "group_id": gid, "cursor": (number - 1) * size, "limit": size})
            if call.code == GROUP_MISSING:
                raise NoSuchList(group_id)
            return _ids_on_page(call, body, size)

        try:
            members = await read_all(page, READ_PAGE)
        except NoSuchList:
            return None
        return list(dict.fromkeys(members)) or None

    async def get_friends(self, user_id: str) -> list[str]:
        """GET /roster/list acting as the user, 1000 a page. Raises CallFailed."""
        if problem := not_an_id("user_id", user_id):
            raise CallFailed(invalid(problem))
        as_user = acting_as(user_id=vendor_id(user_id))

        async def page(number: int, size: int) -> tuple[list[str], bool]:
            call, body = await self.call(Operation.GET_FRIENDS, "GET", "/roster/list", headers=as_user,
                                         params={"cursor": (number - 1) * size, "limit": size})
            return _ids_on_page(call, body, size)

        return list(dict.fromkeys(await read_all(page, READ_PAGE)))


def _ids_on_page(call: Result, body: dict[str, Any], size: int) -> tuple[list[str], bool]:
    """The ids on one page (`data`: ids, or objects with a user_id) and whether it is the last."""
    if not call.succeeded:
        raise CallFailed(call)
    data = body.get("data")
    entries = data if isinstance(data, list) else []
    ids = [e.get("user_id") if isinstance(e, dict) else e for e in entries]
    return [str(i) for i in ids if is_id(i)], len(entries) < size
