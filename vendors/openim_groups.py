"""OpenIM v3 as a migration source of groups: the app's groups listed with
`/group/get_groups` and each group's members paged through
`/group/get_group_member_list`, a page of groups at a time, resumably.

Facts from the server's source (openimsdk/open-im-server v3 main, and
openimsdk/protocol for the JSON names):
- `/group/get_groups` (router.go; the rpc's GetGroups in group.go) takes
  `{pagination: {pageNumber, showNumber}, groupName?, groupID?}`; the
  protocol's `GetGroupsReq.Check` refuses a missing pagination or a
  pageNumber below 1 (ArgsError). Any valid token may call it (the rpc
  checks no admin); we call it with the admin token like everything else.
- The reply `data` is `{total, groups: [CMSGroup]}`, a CMSGroup being
  `{groupInfo: GroupInfo, groupOwnerUserID, groupOwnerUserName}` (protocol
  group.pb.go; filled by convert.Db2PbCMSGroup), and GroupInfo carrying
  `groupID, groupName, faceURL, introduction, ownerUserID, memberCount, ...`
  (protocol sdkws.pb.go).
- The storage's search (mgo/group.go `Search`) leaves dismissed groups out
  and sorts the newest first; tools' FindPage skips (pageNumber-1) ×
  showNumber. So a group created during the listing pushes the older ones
  one place back: one of them is read a second time (the planner keeps the
  first), none is missed. A group dismissed meanwhile can make one be missed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from .client import CallFailed
from .openim import MAX_IDS_PER_CALL, data_of, listed
from .paging import NoSuchList, offset_pages, read_all
from .vocabulary import Group, Operation, Result, VendorRules

GROUP_MISSING = ("1004", "1201")  # RecordNotFound, GroupIDNotFound
GROUPS_PER_PAGE = 100  # each listed group then costs its own member reads: keep pages modest


class OpenIMV3Groups:
    """Mixed into OpenIMV3Client (vendors/openim_v3.py): needs its `_post` and `rules`."""

    rules: VendorRules
    if TYPE_CHECKING:
        async def _post(self, key: str | Operation, path: str, body: dict[str, Any], *,
                        admin: bool = True, expect: Sequence[str] = ()) -> tuple[Result, dict[str, Any]]: ...

    async def list_group_pages(self, cursor: str | None = None, page_size: int = GROUPS_PER_PAGE
                               ) -> AsyncIterator[tuple[list[Group], str | None]]:
        """Each page's groups with every member but the owner; a group
        dismissed between the listing and its member read is left out.
        Raises CallFailed, or ValueError for a cursor no listing gave."""
        size = max(1, min(page_size, self.rules.batch_size[Operation.LIST_GROUPS]))
        async for entries, after in offset_pages(self._group_page, cursor, size):
            groups = []
            for entry in entries:
                group = await self._listed_group(entry)
                if group is not None:
                    groups.append(group)
            yield groups, after

    async def _group_page(self, number: int, size: int) -> tuple[list[dict[str, Any]], bool]:
        result, body = await self._post(Operation.LIST_GROUPS, "/group/get_groups",
                                        {"pagination": {"pageNumber": number, "showNumber": size}})
        return listing_page(result, body, "groups", number, size)

    async def _listed_group(self, entry: dict[str, Any]) -> Group | None:
        found = entry.get("groupInfo")
        info = found if isinstance(found, dict) else {}
        group_id = str(info.get("groupID") or "")
        if not group_id:
            return None
        owner = str(entry.get("groupOwnerUserID") or info.get("ownerUserID") or "")
        try:
            members = await self._member_ids(group_id)
        except NoSuchList:
            return None
        return Group(group_id, str(info.get("groupName") or ""), owner,
                     [m for m in dict.fromkeys(members) if m != owner],
                     avatar=str(info.get("faceURL") or ""), intro=str(info.get("introduction") or ""))

    async def _member_ids(self, group_id: str) -> list[str]:
        """Every member id of the group, 1000 a page. Raises NoSuchList or CallFailed."""
        async def page(number: int, size: int) -> tuple[list[str], bool]:
            result, body = await self._post(Operation.GET_MEMBERS, "/group/get_group_member_list", {
                "groupID": group_id, "pagination": {"pageNumber": number, "showNumber": size}})
            if result.code in GROUP_MISSING:
                raise NoSuchList(group_id)
            return page_of(result, body, "members", lambda m: m.get("userID"), number, size)

        return await read_all(page, MAX_IDS_PER_CALL)


def listing_page(result: Result, body: dict[str, Any], key: str, number: int, size: int,
                 kind: type = dict) -> tuple[list[Any], bool]:
    """The entries (of type `kind`) on one page of a v3 listing ({total,
    <key>: [...]}) and whether it is the last."""
    if not result.succeeded:
        raise CallFailed(result)
    data = data_of(body)
    entries = [e for e in listed(data, key) if isinstance(e, kind)]
    total = data.get("total")
    return entries, len(entries) < size or (isinstance(total, int) and number * size >= total)


def page_of(result: Result, body: dict[str, Any], key: str, id_of: Any, number: int,
            size: int) -> tuple[list[str], bool]:
    """The ids on one page of a v3 listing and whether it is the last."""
    entries, last = listing_page(result, body, key, number, size)
    return [str(i) for i in map(id_of, entries) if i], last
