"""OpenIM sandbox: the server API of one self-hosted deployment, v3, v2 or v1.

This module holds what both API versions share: the deployment's settings,
its tokens, users, groups, friendships and message delivery, and the
read-backs. The endpoints of each version live in `openim_v3`, `openim_v2`
and `openim_v1`; `OpenIMSandbox(api_version=...)` builds the one asked for
(the versions share paths with different bodies, so a sandbox speaks one).

Where the real server answers oddly, so does the sandbox (a duplicate-key
500 when inviting a member twice, an HTTP 500 for an existing user in v2,
the refused token echoed in v2's message), so the client is tested against
what it will meet.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from ..vocabulary import Operation, Profile
from ..openim import ADMIN_PLATFORM_ID, API_VERSIONS, CUSTOM, TEXT, OpenIMClient, OpenIMConfig
from .common import Refusal, Sandbox

ADMIN_TOKEN_GRACE = 300.0  # a new admin token leaves older ones this long (v3 main)
Fail = Refusal  # an error reply: the vendor's code, message, and HTTP status (v2)


@dataclass
class Token:
    user_id: str
    platform: int
    expires_at: float


def legal_user_id(user_id: str) -> bool:
    """protocol datautil.IsLegalUserID: unicode letters (L*), decimal digits (Nd), '_'."""
    return all(ch == "_" or ch.isalpha() or ch.isdecimal() for ch in user_id)


def repeated(ids: list[str]) -> bool:
    return len(set(ids)) != len(ids)


def page(items: list[Any], pagination: Any) -> list[Any]:
    """One page of `items` as the server's pagination reads it (showNumber 0: all)."""
    if not isinstance(pagination, dict):
        raise Fail(1001, "ArgsError: pagination is empty")
    number, show = pagination.get("pageNumber"), pagination.get("showNumber") or 0
    if not isinstance(number, int) or number < 1:
        raise Fail(1001, "ArgsError: pagination.pageNumber is invalid")
    return items[(number - 1) * show:number * show] if show > 0 else items


class OpenIMSandbox(Sandbox):
    vendor = "openim"
    client_class = OpenIMClient
    api_version = "v3"

    def __new__(cls, *, api_version: str = "v3", **kwargs: Any) -> "OpenIMSandbox":
        if cls is OpenIMSandbox:
            from .openim_v1 import OpenIMv1Sandbox
            from .openim_v2 import OpenIMv2Sandbox
            from .openim_v3 import OpenIMv3Sandbox
            cls = {"v3": OpenIMv3Sandbox, "v2": OpenIMv2Sandbox, "v1": OpenIMv1Sandbox}.get(api_version, cls)
        return super().__new__(cls)

    def __init__(self, *, api_version: str = "v3", secret: str = "openIM123",
                 admin_user_id: str = "imAdmin", token_ttl: float = 90 * 86400,
                 friend_verify: bool = False, **kwargs: Any):
        if api_version not in API_VERSIONS or api_version != self.api_version:
            raise ValueError(f"api_version: one of {', '.join(API_VERSIONS)}")
        self.v3 = api_version == "v3"
        self.secret = secret
        self.admin_user_id = admin_user_id
        self.token_ttl = token_ttl  # the server's tokenPolicy.expire (90 days)
        self.friend_verify = friend_verify  # the server's friendVerify: only friends may message
        self.tokens: dict[str, Token] = {}
        self.operation_ids: list[str] = []  # as received, to check they are fresh
        super().__init__(**kwargs)
        self._add_user({"userID": admin_user_id, "nickname": "superAdmin"})  # the server creates its admins

    def client_config(self, base_url: str, secret: str) -> OpenIMConfig:
        return OpenIMConfig(secret=secret, base_url=base_url, admin_user_id=self.admin_user_id,
                            api_version=self.api_version)

    # -- tokens --------------------------------------------------------------------------

    def _issue(self, user_id: str, platform: int) -> tuple[str, Token]:
        now = self.clock()
        if platform == ADMIN_PLATFORM_ID:
            for old in self.tokens.values():  # older admin tokens keep only a grace period
                if old.user_id == user_id and old.platform == platform:
                    old.expires_at = min(old.expires_at, now + ADMIN_TOKEN_GRACE)
        token = Token(user_id, platform, now + self.token_ttl)
        value = "sbx." + secrets.token_urlsafe(24)
        self.tokens[value] = token
        return value, token

    def _parse_token(self, value: str) -> tuple[Token | None, int, str]:
        """The token, or None with the v3 code and v2 message saying why."""
        token = self.tokens.get(value)
        if token is None:
            return None, 1503, "that's not even a token"
        if self.clock() >= token.expires_at:
            return None, 1501, "token is timed out, please log in again"
        return token, 0, ""

    def token_owner(self, value: str) -> tuple[str, int] | None:
        """(user id, platform) of a live token: lets tests check issued tokens."""
        token, _, _ = self._parse_token(value)
        return (token.user_id, token.platform) if token else None

    def _is_admin(self, who: str | None) -> bool:
        return who == self.admin_user_id

    # -- state shared by both versions ---------------------------------------------------

    def _add_user(self, user: dict[str, Any]) -> None:
        fields = {"nickname": "", "faceURL": "", "ex": "", "gender": 0, "phoneNumber": "", "birth": 0, "email": ""}
        fields.update({k: v for k, v in user.items() if k in fields})
        self.users[user["userID"]] = {"userID": user["userID"], **fields, "createTime": int(self.clock() * 1000)}

    def _befriend(self, owner: str, friend: str) -> bool:
        """Make the pair friends both ways; False when they already were."""
        if not self.store.befriend(owner, friend):
            self.duplicates[Operation.IMPORT_FRIENDS.value] += 1
            return False
        return True

    def _deliver(self, sender: str, session: str, target: str, content: dict[str, Any]) -> dict[str, Any]:
        """Deliver one message the way the msg service verifies it (verify.go)."""
        if session == "single":
            if not self._is_admin(sender):
                if sender not in self.users:
                    raise Fail(1004, "RecordNotFoundError: sender not found")
                if self.friend_verify and target not in self.store.friends.get(sender, ()):
                    raise Fail(1303, "NotPeersFriendError")
            receivers = [target]
        else:
            group = self.groups.get(target)
            if group is None:
                raise Fail(1004, "RecordNotFoundError: group not found")
            if not self._is_admin(sender) and sender not in group["members"]:
                raise Fail(1203, "NotInGroupYetError")
            receivers = [m for m in group["members"] if m != sender]
        item = {"from": sender, "session": session, **content}
        if session == "group":
            item["group_id"] = target
        for receiver in receivers:
            self.store.deliver(receiver, dict(item))
        return {"serverMsgID": uuid.uuid4().hex, "clientMsgID": uuid.uuid4().hex,
                "sendTime": int(self.clock() * 1000)}

    def _content(self, content_type: Any, content: Any, text_key: str) -> dict[str, Any]:
        """Decode the content as the API does: text or custom; empty when a required key is missing."""
        if not isinstance(content, dict):
            return {}
        if content_type == TEXT:
            text = content.get(text_key)
            return {"text": str(text)} if text else {}
        if content_type == CUSTOM:
            data = content.get("data")
            if not data:
                return {}
            try:
                return {"custom": json.loads(data)}
            except (TypeError, ValueError):
                return {"custom": data}
        raise Fail(1001, "ArgsError: unsupported content type", None if self.v3 else 400)

    def _all_user_ids(self) -> list[str]:
        return list(self.users)

    # -- read-back -----------------------------------------------------------------------

    def profile(self, user_id: str, user: dict[str, Any]) -> Profile:
        keys = ("ex",) if self.v3 else ("ex", "gender", "phoneNumber", "birth", "email")
        extra = {k: str(user[k]) for k in keys if user[k] not in ("", 0)}
        return Profile(user_id=user_id, name=user["nickname"], avatar=user["faceURL"], extra=extra)
