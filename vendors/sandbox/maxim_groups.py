"""The Maxim sandbox's groups and rosters, as a part of MaximSandbox
(vendors/sandbox/maxim.py): groups made and joined as their owner, friends
added directly, and both read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from .common import Call, Form, Sandbox
from .maxim_params import Refused, as_id, id_list, text, window

if TYPE_CHECKING:
    from .maxim import User

PAGE = 1000  # member_list's documented default limit, ours for roster/list too


@dataclass
class ChatGroup:
    group_id: int
    name: str
    owner: int
    description: str = ""
    type: int = 0
    members: set[int] = field(default_factory=set)

    def __getitem__(self, name: str) -> Any:  # the base's read-backs say group["members"]
        return getattr(self, name)


class MaximGroups(Sandbox):
    """Besides the base's, MaximSandbox provides these:"""

    _group_ids: Iterator[int]
    if TYPE_CHECKING:
        def _acting_user(self, call: Call) -> User: ...
        def _user(self, uid: int, name: str) -> User: ...

    def create_group(self, body: dict[str, Any], call: Call) -> Any:
        owner = self._acting_user(call)
        name = text(body, "name", required=True)
        group_type = body.get("type", 0)
        if group_type not in (0, 2):
            raise Refused(10002, "type: must be 0 (private) or 2 (chatroom)")
        members = id_list(body, "user_list") if body.get("user_list") else []
        for uid in members:
            self._user(uid, "user_list")
        group = ChatGroup(next(self._group_ids), name, owner.user_id,
                          text(body, "description") or "", group_type, {owner.user_id, *members})
        self.groups[group.group_id] = group
        return {"group_id": group.group_id, "name": name, "owner_id": owner.user_id,
                "description": group.description, "type": group_type, "status": 0,
                "created_at": int(self.clock() * 1000), "member_invite": True}

    def _group(self, raw: Any) -> ChatGroup:
        gid = as_id(raw)
        if gid is None:
            raise Refused(10002, "group_id: required")
        if gid not in self.groups:
            raise Refused(20001, f"group_id: group {gid} does not exist")
        return self.groups[gid]

    def invite(self, body: dict[str, Any], call: Call) -> Any:
        acting = self._acting_user(call)
        group = self._group(body.get("group_id"))
        if acting.user_id not in group.members:
            raise Refused(20011, f"user_id: {acting.user_id} is not a member of group {group.group_id}")
        out = []
        for uid in id_list(body, "user_list"):
            if uid not in self.users:
                out.append({"user_id": uid, "result": "fail",
                            "reason": f"10000: user {uid} does not exist"})
            elif uid in group.members:
                self.duplicates["add_members"] += 1
                out.append({"user_id": uid, "result": "fail",
                            "reason": "20017: user is already a group member"})
            else:
                group.members.add(uid)
                out.append({"user_id": uid, "result": "success", "reason": None})
        return out

    def member_list(self, query: Form, _: Call) -> Any:
        group = self._group(query.get("group_id"))
        start, limit = window(query, PAGE)
        return [{"user_id": uid, "display_name": self.users[uid].nick_name if uid in self.users else ""}
                for uid in sorted(group.members)[start:start + limit]]

    def add_roster(self, body: dict[str, Any], call: Call) -> Any:
        owner = self._acting_user(call).user_id
        friends = id_list(body, "list")
        if owner in friends:
            raise Refused(10002, "list: cannot add oneself as a friend")
        for uid in friends:
            self._user(uid, "list")
        roster = self.store.friends.get(owner, set())
        already = [uid for uid in friends if uid in roster]
        self.duplicates["import_friends"] += len(already)
        if len(set(already)) == len(set(friends)):
            raise Refused(10005, "list: already in the friend list")
        for uid in friends:  # a friendship is mutual
            self.store.befriend(owner, uid)
        return True

    def roster_list(self, query: Form, call: Call) -> Any:
        owner = self._acting_user(call).user_id
        start, limit = window(query, PAGE)
        return sorted(self.store.friends.get(owner, ()))[start:start + limit]

    def user_rosters(self, query: Form, call: Call) -> Any:
        """The quick-start's roster read: every friend id at once."""
        return sorted(self.store.friends.get(self._acting_user(call).user_id, ()))
