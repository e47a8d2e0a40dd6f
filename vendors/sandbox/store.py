"""The in-memory state every sandbox keeps: users (each vendor's own record
of an account), groups with members, friendships and delivered messages.

Records are `Record`s: dicts whose keys also read as attributes, so a test
can say `box.groups[gid]["name"]` or `box.groups[gid].owner` alike. Keys are
each vendor's own ids (strings, or int64 numbers at Maxim).
"""

from __future__ import annotations

from typing import Any, Hashable

# The key of a user or group: each vendor's own id type (str, or int at Maxim),
# so the store cannot name one type for all.
Key = Any


class Record(dict):
    """A dict whose keys read and write as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Store:
    def __init__(self) -> None:
        self.users: dict[Key, Any] = {}
        self.groups: dict[Key, Any] = {}  # Records, each with a "members" set or role dict (Maxim: ChatGroups)
        self.friends: dict[Key, set] = {}
        self.inboxes: dict[Key, list[dict[str, Any]]] = {}

    def befriend(self, a: Hashable, b: Hashable) -> bool:
        """Make a and b friends both ways; False when they already were."""
        known = b in self.friends.get(a, ())
        self.friends.setdefault(a, set()).add(b)
        self.friends.setdefault(b, set()).add(a)
        return not known

    def unfriend(self, a: Hashable, b: Hashable) -> None:
        self.friends.get(a, set()).discard(b)
        self.friends.get(b, set()).discard(a)

    def deliver(self, to: Hashable, message: dict[str, Any]) -> dict[str, Any]:
        self.inboxes.setdefault(to, []).append(message)
        return message

    def members(self, group_id: Hashable) -> Any:
        """The members of a group (a set, or a dict of roles), empty when unknown."""
        group = self.groups.get(group_id)
        return group["members"] if group else set()
