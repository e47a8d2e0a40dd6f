"""An in-memory Maxim (Lanying IM) server API.

Business errors come back as HTTP 200 with `{code, data, message}`, as the
vendor documents. Choices of ours where the vendor documents nothing:
- over the rate limit: HTTP 429, body code 429 and `Retry-After: 1`;
- internal error: HTTP 500 with a Spring-style error body;
- batch items fail with a `reason` of the form "<code>: <text>", and a
  batch-registered username that exists gets no user_id back (the client
  must look it up);
- a send to a missing user or group rejects the whole call (nothing sent);
- `transaction_id` repeats are dropped for `dedup_seconds`;
- token `expire` is in epoch milliseconds, 7 days ahead;
- ids are int64 counters starting at realistic values.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Profile
from ..maxim import EXTRA_FIELDS, MAX_PAGE_SIZE, MAX_TARGETS, MaximClient, MaximConfig
from .common import Sandbox

USERNAME = re.compile(r"(?!(?i:maxim|mta))(?![0-9]+$)[A-Za-z0-9_]+")
TOKEN_DAYS = 7


@dataclass
class User:
    user_id: int
    username: str
    password: str = field(repr=False)
    nick_name: str = ""
    avatar: str = ""
    description: str = ""
    public_info: str = ""
    private_info: str = ""


@dataclass
class ChatGroup:
    group_id: int
    name: str
    owner: int
    description: str = ""
    type: int = 0
    members: set[int] = field(default_factory=set)


class Refused(Exception):
    """A business error: answered as HTTP 200 with this code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def reply(data: Any = True, code: int = 200, message: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data, **extra})


def as_id(value: Any) -> int | None:
    """An int64 id as Jackson would read it (a number or a numeric string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2 ** 63 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return as_id(int(value))
    return None


def text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise Refused(10002, f"{name}: required")
        return None
    if not isinstance(value, str):
        raise Refused(10002, f"{name}: must be a string")
    return value


def id_list(body: dict[str, Any], name: str) -> list[int]:
    values = body.get(name)
    if not isinstance(values, list) or not values:
        raise Refused(10002, f"{name}: a non-empty list of ids is required")
    ids = [as_id(v) for v in values]
    if None in ids:
        raise Refused(10002, f"{name}: {values[ids.index(None)]!r} is not an id")
    return ids  # type: ignore[return-value]


def username_problem(username: Any) -> str | None:
    if not isinstance(username, str) or not username:
        return "username: required"
    if not USERNAME.fullmatch(username):
        return (f"username: {username[:80]!r} is not allowed (letters, digits and _, "
                "not all digits, not starting with maxim or mta)")
    return None


class MaximSandbox(Sandbox):
    vendor = "maxim"
    client_class = MaximClient

    def __init__(self, *, app_id: str = "demo-app", access_token: str = "demo-admin-token",
                 dedup_seconds: float = 300.0, **kwargs: Any):
        self.app_id = app_id
        self.access_token = access_token
        self.admin_token_expired = False  # then admin calls answer 402, as an expired token does
        self.dedup_seconds = dedup_seconds
        self.users: dict[int, User] = {}
        self.by_username: dict[str, int] = {}
        self.tokens: dict[str, tuple[int, int]] = {}  # token -> (user_id, expire ms)
        self.groups: dict[int, ChatGroup] = {}
        self.rosters: dict[int, set[int]] = {}
        self.inboxes: dict[int, list[dict[str, Any]]] = {}
        self.transactions: dict[int, float] = {}  # transaction_id -> when executed
        self._user_ids = itertools.count(2199040544800, 16)
        self._group_ids = itertools.count(2306414607700, 16)
        self._msg_ids = itertools.count(1_000_000)
        super().__init__(**kwargs)

    def routes(self) -> list[Route]:
        return [
            Route("/user/register/v2", self.register_one, methods=["POST"]),
            Route("/user/register/batch", self.register_batch, methods=["POST"]),
            Route("/roster/name", self.find_by_name, methods=["GET"]),
            Route("/user/profile", self.read_profile, methods=["GET"]),
            Route("/user/profile/batch", self.profile_batch, methods=["POST", "PUT"]),
            Route("/user/avatar/batch", self.avatar_batch, methods=["POST", "PUT"]),
            Route("/user/change_password_admin", self.change_password, methods=["POST"]),
            Route("/token/id", self.token_by_id, methods=["POST"]),
            Route("/user/list", self.list_users, methods=["GET"]),
            Route("/message/send", self.send, methods=["POST", "PUT"]),
            Route("/message/broadcast", self.broadcast, methods=["POST"]),
            Route("/group/create", self.create_group, methods=["POST"]),
            Route("/group/invite", self.invite, methods=["POST"]),
            Route("/user/add_roster", self.add_roster, methods=["POST"]),
        ]

    def config(self, base_url: str, *, wrong_secret: bool = False) -> MaximConfig:
        token = "not-" + self.access_token if wrong_secret else self.access_token
        return MaximConfig(app_id=self.app_id, access_token=token, api_endpoint=base_url)

    def server_error(self) -> Response:
        return JSONResponse({"status": 500, "error": "Internal Server Error", "path": ""},
                            status_code=500)

    def rate_limited(self, op: str) -> Response:
        return JSONResponse({"code": 429, "message": f"too many {op} calls", "data": None},
                            status_code=429, headers={"Retry-After": "1"})

    # -- the request pipeline ------------------------------------------------------------

    async def _handle(self, request: Request, op: str, act, *, admin: bool = True) -> Response:
        """Auth, then admit, then act; a Refused becomes the vendor's reply."""
        refused = self._auth(request, admin=admin)
        if refused is not None:
            return refused
        stop = await self.admit(op)
        if stop is not None:
            return stop
        try:
            return await act()
        except Refused as err:
            return reply(None, err.code, err.message)

    def _auth(self, request: Request, *, admin: bool) -> Response | None:
        if request.headers.get("app_id") != self.app_id:
            return reply(None, 40000, "app_id: missing or does not exist")
        if not admin:
            return None
        token = request.headers.get("access-token")
        if not token:
            return reply(None, 10003, "access-token: missing in header")
        if token != self.access_token:
            return reply(None, 10008, "access-token: invalid")
        if self.admin_token_expired:
            return reply(None, 402, "access-token: expired")
        return None

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise Refused(10002, "body: not JSON") from None
        if not isinstance(body, dict):
            raise Refused(10002, "body: a JSON object is required")
        return body

    def _acting_user(self, request: Request) -> User:
        """The user named by the `user_id` header (admin acting as a user)."""
        raw = request.headers.get("user_id")
        if raw is None:
            raise Refused(10002, "user_id: header required")
        uid = as_id(raw)
        if uid is None:
            raise Refused(10002, f"user_id: {raw[:80]!r} is not an id")
        return self._user(uid, "user_id")

    def _user(self, uid: int, name: str) -> User:
        if uid not in self.users:
            raise Refused(10000, f"{name}: user {uid} does not exist")
        return self.users[uid]

    # -- users ---------------------------------------------------------------------------

    def _register(self, username: Any, password: Any) -> tuple[int, str] | User:
        """A new User, or (code, reason) when it cannot be made."""
        problem = username_problem(username)
        if problem:
            return 10002, problem
        if not isinstance(password, str) or not password:
            return 10002, "password: required"
        if username.lower() in self.by_username:
            self.duplicates["register"] += 1
            return 10004, "user already exists"
        user = User(next(self._user_ids), username, password)
        self.users[user.user_id] = user
        self.by_username[username.lower()] = user.user_id
        return user

    async def register_one(self, request: Request) -> Response:
        async def act():
            body = await self._body(request)
            made = self._register(body.get("username"), body.get("password"))
            if isinstance(made, tuple):
                raise Refused(*made)
            return reply({"user_id": made.user_id, "auth_mode": 0, "group_confirm": False})
        return await self._handle(request, "register", act, admin=False)

    async def register_batch(self, request: Request) -> Response:
        async def act():
            items = (await self._body(request)).get("list")
            if not isinstance(items, list) or not items:
                raise Refused(10002, "list: required")
            out = []
            for item in items:
                item = item if isinstance(item, dict) else {}
                made = self._register(item.get("username"), item.get("password"))
                if isinstance(made, tuple):
                    out.append({"user_id": None, "username": item.get("username"), "success": False,
                                "reason": f"{made[0]}: {made[1]}"})
                else:
                    out.append({"user_id": made.user_id, "username": made.username, "success": True,
                                "reason": None})
            return reply(out)
        return await self._handle(request, "register", act)

    async def find_by_name(self, request: Request) -> Response:
        async def act():
            name = request.query_params.get("username", "")
            uid = self.by_username.get(name.lower())
            if uid is None:
                raise Refused(10000, f"username: user {name[:80]!r} does not exist")
            user = self.users[uid]
            return reply({"user_id": uid, "username": user.username, "nick_name": user.nick_name,
                          "avatar": user.avatar, "relation": 2})
        return await self._handle(request, "get_profiles", act)

    async def read_profile(self, request: Request) -> Response:
        async def act():
            user = self._acting_user(request)
            return reply({"user_id": user.user_id, "username": user.username,
                          "nick_name": user.nick_name, "avatar": user.avatar,
                          "description": user.description, "public_info": user.public_info,
                          "private_info": user.private_info, "mobile": "", "email": ""})
        return await self._handle(request, "get_profiles", act)

    async def _batch_update(self, request: Request, update) -> Response:
        """Shared by /user/profile/batch and /user/avatar/batch: per-item results."""
        async def act():
            items = (await self._body(request)).get("list")
            if not isinstance(items, list) or not items:
                raise Refused(10002, "list: required")
            out = []
            for item in items:
                item = item if isinstance(item, dict) else {}
                uid = as_id(item.get("user_id"))
                try:
                    if uid is None:
                        raise Refused(10002, "user_id: required")
                    update(self._user(uid, "user_id"), item)
                    out.append({"user_id": uid, "success": True, "reason": None})
                except Refused as err:
                    out.append({"user_id": uid, "success": False,
                                "reason": f"{err.code}: {err.message}"})
            return reply(out)
        return await self._handle(request, "update_profile", act)

    async def profile_batch(self, request: Request) -> Response:
        def update(user: User, item: dict[str, Any]) -> None:
            values = {name: text(item, name) for name in ("nick_name", *EXTRA_FIELDS)}
            for name, value in values.items():
                if value is not None:
                    setattr(user, name, value)
        return await self._batch_update(request, update)

    async def avatar_batch(self, request: Request) -> Response:
        def update(user: User, item: dict[str, Any]) -> None:
            user.avatar = text(item, "avatar", required=True)
        return await self._batch_update(request, update)

    async def change_password(self, request: Request) -> Response:
        async def act():
            user = self._acting_user(request)
            user.password = text(await self._body(request), "password", required=True)
            return reply(True)
        return await self._handle(request, "issue_token", act)

    async def token_by_id(self, request: Request) -> Response:
        async def act():
            body = await self._body(request)
            uid = as_id(body.get("user_id"))
            if uid is None:
                raise Refused(10002, "user_id: required")
            user = self._user(uid, "user_id")
            if text(body, "password", required=True) != user.password:
                raise Refused(10002, "password: does not match")
            token = secrets.token_urlsafe(32)
            expire = int((self.clock() + TOKEN_DAYS * 86400) * 1000)
            self.tokens[token] = (uid, expire)
            return reply({"token": token, "user_id": uid, "expire": expire})
        return await self._handle(request, "issue_token", act, admin=False)

    async def list_users(self, request: Request) -> Response:
        async def act():
            page_num = self._int_param(request, "page_num", 1)
            page_size = self._int_param(request, "page_size", 50)
            if page_num < 1:
                raise Refused(10002, "page_num: must be greater than 0")
            if not 1 <= page_size <= MAX_PAGE_SIZE:
                raise Refused(10002, f"page_size: must be 1 to {MAX_PAGE_SIZE}")
            ids = sorted(self.users)[(page_num - 1) * page_size:page_num * page_size]
            return reply([{"user_id": uid, "username": self.users[uid].username, "status": 0}
                          for uid in ids])
        return await self._handle(request, "list_users", act)

    @staticmethod
    def _int_param(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise Refused(10002, f"{name}: {raw[:20]!r} is not a number") from None

    # -- messages ------------------------------------------------------------------------

    def _deliver(self, to: int, sender: int | None, content_type: int, content: str,
                 group: int | None = None) -> None:
        entry: dict[str, Any] = {"from": str(sender) if sender else "", "msg_id": next(self._msg_ids)}
        if content_type == 6:  # COMMAND: the client's custom JSON object
            try:
                entry["custom"] = json.loads(content)
            except ValueError:
                entry["text"] = content
        else:
            entry["text"] = content
        if group is not None:
            entry["group"] = str(group)
        self.inboxes.setdefault(to, []).append(entry)

    @staticmethod
    def _content(body: dict[str, Any]) -> tuple[int, str]:
        content_type = body.get("content_type")
        if not isinstance(content_type, int) or isinstance(content_type, bool) \
                or not 0 <= content_type <= 12:
            raise Refused(10002, "content_type: must be 0 to 12")
        return content_type, text(body, "content", required=True)

    async def send(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except Refused as err:
            body, bad_body = {}, err
        else:
            bad_body = None
        op = "send_group" if body.get("type") == 2 else "send"

        async def act():
            if bad_body:
                raise bad_body
            target_type = body.get("type")
            if target_type not in (1, 2):
                raise Refused(10002, "type: must be 1 (users) or 2 (groups)")
            targets = id_list(body, "targets")
            if len(targets) > MAX_TARGETS:
                raise Refused(12005, f"targets: at most {MAX_TARGETS} per call")
            content_type, content = self._content(body)
            sender = body.get("from_user_id")
            sender = None if sender is None else as_id(sender)
            if body.get("from_user_id") is not None:
                if sender is None:
                    raise Refused(10002, "from_user_id: not an id")
                self._user(sender, "from_user_id")
            if target_type == 1:
                for uid in targets:
                    self._user(uid, "targets")
            else:
                for gid in targets:
                    if gid not in self.groups:
                        raise Refused(20001, f"targets: group {gid} does not exist")
                    if sender is not None and sender not in self.groups[gid].members:
                        raise Refused(20002, f"from_user_id: {sender} is not a member of group {gid}")
            if self._repeated(body.get("transaction_id")):
                self.duplicates[op] += 1
                return reply(True)
            msg_ids = []
            for target in targets:
                if target_type == 1:
                    self._deliver(target, sender, content_type, content)
                    msg_ids.append(self.inboxes[target][-1]["msg_id"])
                else:
                    for member in sorted(self.groups[target].members - {sender}):
                        self._deliver(member, sender, content_type, content, group=target)
            return reply(True, msg_ids=msg_ids if len(targets) == 1 and msg_ids else None)
        return await self._handle(request, op, act)

    def _repeated(self, raw: Any) -> bool:
        """Whether this transaction_id was executed within the dedup window
        (recording it when it was not)."""
        if raw is None:
            return False
        tid = as_id(raw)
        if tid is None:
            raise Refused(10002, "transaction_id: not an int64")
        now = self.clock()
        seen = self.transactions.get(tid)
        if seen is not None and now - seen < self.dedup_seconds:
            return True
        self.transactions[tid] = now
        return False

    async def broadcast(self, request: Request) -> Response:
        async def act():
            body = await self._body(request)
            if body.get("type") != 1:
                raise Refused(10002, "type: must be 1")
            content_type, content = self._content(body)
            sender = self._acting_user(request).user_id if "user_id" in request.headers else None
            receivers = [uid for uid in sorted(self.users) if uid != sender]
            for uid in receivers:
                self._deliver(uid, sender, content_type, content)
            return reply({"send_num": len(receivers), "success": True})
        return await self._handle(request, "broadcast", act)

    # -- groups and friends --------------------------------------------------------------

    async def create_group(self, request: Request) -> Response:
        async def act():
            owner = self._acting_user(request)
            body = await self._body(request)
            name = text(body, "name", required=True)
            group_type = body.get("type", 0)
            if group_type not in (0, 2):
                raise Refused(10002, "type: must be 0 (private) or 2 (chatroom)")
            members = id_list(body, "user_list") if body.get("user_list") else []
            for uid in members:
                self._user(uid, "user_list")
            group = ChatGroup(next(self._group_ids), name, owner.user_id,
                              text(body, "description") or "", group_type,
                              {owner.user_id, *members})
            self.groups[group.group_id] = group
            return reply({"group_id": group.group_id, "name": name, "owner_id": owner.user_id,
                          "description": group.description, "type": group_type, "status": 0,
                          "created_at": int(self.clock() * 1000), "member_invite": True})
        return await self._handle(request, "create_group", act)

    async def invite(self, request: Request) -> Response:
        async def act():
            acting = self._acting_user(request)
            body = await self._body(request)
            gid = as_id(body.get("group_id"))
            if gid is None:
                raise Refused(10002, "group_id: required")
            group = self.groups.get(gid)
            if group is None:
                raise Refused(20001, f"group_id: group {gid} does not exist")
            if acting.user_id not in group.members:
                raise Refused(20011, f"user_id: {acting.user_id} is not a member of group {gid}")
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
            return reply(out)
        return await self._handle(request, "add_members", act)

    async def add_roster(self, request: Request) -> Response:
        async def act():
            owner = self._acting_user(request).user_id
            friends = id_list(await self._body(request), "list")
            if owner in friends:
                raise Refused(10002, "list: cannot add oneself as a friend")
            for uid in friends:
                self._user(uid, "list")
            roster = self.rosters.setdefault(owner, set())
            already = [uid for uid in friends if uid in roster]
            self.duplicates["import_friends"] += len(already)
            if len(set(already)) == len(set(friends)):
                raise Refused(10005, "list: already in the friend list")
            for uid in friends:  # a friendship is mutual
                roster.add(uid)
                self.rosters.setdefault(uid, set()).add(owner)
            return reply(True)
        return await self._handle(request, "import_friends", act)

    # -- read-back for tests -------------------------------------------------------------

    def user_id_of(self, username: str) -> str | None:
        uid = self.by_username.get(username.lower())
        return None if uid is None else str(uid)

    def stored_profile(self, user_id: str) -> Profile | None:
        user = self.users.get(as_id(user_id) or 0)
        if user is None:
            return None
        return Profile(str(user.user_id), user.nick_name, user.avatar,
                       {k: getattr(user, k) for k in EXTRA_FIELDS if getattr(user, k)})

    def password_of(self, user_id: str) -> str | None:
        user = self.users.get(as_id(user_id) or 0)
        return None if user is None else user.password

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        return list(self.inboxes.get(as_id(user_id) or 0, []))

    def group_members(self, group_id: str) -> set[str] | None:
        group = self.groups.get(as_id(group_id) or 0)
        return None if group is None else {str(uid) for uid in group.members}

    def friends(self, user_id: str) -> set[str]:
        return {str(uid) for uid in self.rosters.get(as_id(user_id) or 0, set())}
