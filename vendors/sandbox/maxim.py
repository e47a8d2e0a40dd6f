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
- ids are int64 counters starting at realistic values;
- `GET /group/member_list` answers `[{user_id, display_name}]`, and
  `GET /roster/list` and `GET /user/rosters` a list of ids; `cursor` is an
  offset, `limit` at least 1 (default 1000); /user/rosters takes no paging.
Groups and friends are in maxim_groups.py, parameter reading in maxim_params.py.
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

from ..vocabulary import Profile
from ..maxim import EXTRA_FIELDS, MAX_PAGE_SIZE, MAX_TARGETS, MaximClient, MaximConfig
from .common import Call, Endpoint, Form, Refusal, Sandbox
from .maxim_feed import MEDIA, MaximFeed, media_of
from .maxim_groups import ChatGroup as ChatGroup, MaximGroups  # ChatGroup: importable from here too
from .maxim_params import Refused, as_id, id_list, int_param, text

USERNAME = re.compile(r"(?!(?i:maxim|mta))(?![0-9]+$)[A-Za-z0-9_]+")
TOKEN_DAYS = 7
APP_ONLY = {"/user/register/v2", "/token/id"}  # called with the app_id header alone


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


def reply(data: Any = True, code: int = 200, message: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data, **extra})


def username_problem(username: Any) -> str | None:
    if not isinstance(username, str) or not username:
        return "username: required"
    if not USERNAME.fullmatch(username):
        return (f"username: {username[:80]!r} is not allowed (letters, digits and _, "
                "not all digits, not starting with maxim or mta)")
    return None


class MaximSandbox(MaximFeed, MaximGroups, Sandbox):
    vendor = "maxim"
    client_class = MaximClient
    secret_attr = "access_token"

    def __init__(self, *, app_id: str = "demo-app", access_token: str = "demo-admin-token",
                 dedup_seconds: float = 300.0, **kwargs: Any):
        self.app_id = app_id
        self.access_token = access_token
        self.admin_token_expired = False  # then admin calls answer 402, as an expired token does
        self.dedup_seconds = dedup_seconds
        self.by_username: dict[str, int] = {}
        self.tokens: dict[str, tuple[int, int]] = {}  # token -> (user_id, expire ms)
        self.transactions: dict[int, float] = {}  # transaction_id -> when executed
        self._user_ids = itertools.count(2199040544800, 16)
        self._group_ids = itertools.count(2306414607700, 16)
        self._msg_ids = itertools.count(1_000_000)
        self.init_maxim_feed()  # the message subscription: maxim_feed.py
        super().__init__(**kwargs)

    def routes(self) -> list[Any]:
        return super().routes() + self.feed_routes()

    @property
    def rosters(self) -> dict[int, set[int]]:
        return self.store.friends

    def endpoints(self) -> list[Endpoint]:
        both = ("POST", "PUT")
        return [
            Endpoint("/user/register/v2", "register", self.register_one, "json"),
            Endpoint("/user/register/batch", "register", self.register_batch, "json"),
            Endpoint("/roster/name", "get_profiles", self.find_by_name, methods=("GET",)),
            Endpoint("/user/profile", "get_profiles", self.read_profile, methods=("GET",)),
            Endpoint("/user/profile/batch", "update_profile", self.profile_batch, "json", both),
            Endpoint("/user/avatar/batch", "update_profile", self.avatar_batch, "json", both),
            Endpoint("/user/change_password_admin", "issue_token", self.change_password, "json"),
            Endpoint("/token/id", "issue_token", self.token_by_id, "json"),
            Endpoint("/user/list", "list_users", self.list_users, methods=("GET",)),
            Endpoint("/message/send", self._send_op, self.send, "json", both),
            Endpoint("/message/broadcast", "broadcast", self.broadcast, "json"),
            Endpoint("/group/create", "create_group", self.create_group, "json"),
            Endpoint("/group/invite", "add_members", self.invite, "json"),
            Endpoint("/group/member_list", "get_members", self.member_list, methods=("GET",)),
            Endpoint("/user/add_roster", "import_friends", self.add_roster, "json"),
            Endpoint("/roster/list", "get_friends", self.roster_list, methods=("GET",)),
            Endpoint("/user/rosters", "get_friends", self.user_rosters, methods=("GET",)),
        ] + self.feed_endpoints()

    def client_config(self, base_url: str, secret: str) -> MaximConfig:
        return MaximConfig(app_id=self.app_id, access_token=secret, api_endpoint=base_url,
                           feed_signature=self.feed_signature)

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"code": code, "message": message, "data": None}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"code": 200, "message": None, "data": data}

    def unreadable(self, raw: bytes) -> Refusal:
        return Refusal(10002, "body: a JSON object is required")

    def server_error(self) -> Response:
        return JSONResponse({"status": 500, "error": "Internal Server Error", "path": ""},
                            status_code=500)

    def rate_limited(self, op: str) -> Response:
        return self.refuse(Refusal(429, f"too many {op} calls", 429, headers={"Retry-After": "1"}))

    def authenticate(self, request: Request) -> None:
        if request.headers.get("app_id") != self.app_id:
            raise Refusal(40000, "app_id: missing or does not exist")
        if request.url.path in APP_ONLY:
            return
        token = request.headers.get("access-token")
        if not token:
            raise Refusal(10003, "access-token: missing in header")
        if token != self.access_token:
            raise Refusal(10008, "access-token: invalid")
        if self.admin_token_expired:
            raise Refusal(402, "access-token: expired")

    def _acting_user(self, call: Call) -> User:
        """The user named by the `user_id` header (admin acting as a user)."""
        raw = call.headers.get("user_id")
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

    def register_one(self, body: dict[str, Any], _: Call) -> Any:
        made = self._register(body.get("username"), body.get("password"))
        if isinstance(made, tuple):
            raise Refused(*made)
        return {"user_id": made.user_id, "auth_mode": 0, "group_confirm": False}

    def register_batch(self, body: dict[str, Any], _: Call) -> Any:
        out = []
        for item in self._items(body):
            made = self._register(item.get("username"), item.get("password"))
            if isinstance(made, tuple):
                out.append({"user_id": None, "username": item.get("username"), "success": False,
                            "reason": f"{made[0]}: {made[1]}"})
            else:
                out.append({"user_id": made.user_id, "username": made.username, "success": True,
                            "reason": None})
        return out

    @staticmethod
    def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
        items = body.get("list")
        if not isinstance(items, list) or not items:
            raise Refused(10002, "list: required")
        return [item if isinstance(item, dict) else {} for item in items]

    def find_by_name(self, query: Form, _: Call) -> Any:
        name = query.get("username", "")
        uid = self.by_username.get(name.lower())
        if uid is None:
            raise Refused(10000, f"username: user {name[:80]!r} does not exist")
        user = self.users[uid]
        return {"user_id": uid, "username": user.username, "nick_name": user.nick_name,
                "avatar": user.avatar, "relation": 2}

    def read_profile(self, query: Form, call: Call) -> Any:
        user = self._acting_user(call)
        return {"user_id": user.user_id, "username": user.username,
                "nick_name": user.nick_name, "avatar": user.avatar,
                "description": user.description, "public_info": user.public_info,
                "private_info": user.private_info, "mobile": "", "email": ""}

    def _batch_update(self, body: dict[str, Any], update) -> Any:
        """Shared by /user/profile/batch and /user/avatar/batch: per-item results."""
        out: list[dict[str, Any]] = []
        for item in self._items(body):
            uid = as_id(item.get("user_id"))
            try:
                if uid is None:
                    raise Refused(10002, "user_id: required")
                update(self._user(uid, "user_id"), item)
                out.append({"user_id": uid, "success": True, "reason": None})
            except Refused as err:
                out.append({"user_id": uid, "success": False,
                            "reason": f"{err.code}: {err.message}"})
        return out

    def profile_batch(self, body: dict[str, Any], _: Call) -> Any:
        def update(user: User, item: dict[str, Any]) -> None:
            values = {name: text(item, name) for name in ("nick_name", *EXTRA_FIELDS)}
            for name, value in values.items():
                if value is not None:
                    setattr(user, name, value)
        return self._batch_update(body, update)

    def avatar_batch(self, body: dict[str, Any], _: Call) -> Any:
        def update(user: User, item: dict[str, Any]) -> None:
            user.avatar = text(item, "avatar", required=True)
        return self._batch_update(body, update)

    def change_password(self, body: dict[str, Any], call: Call) -> Any:
        self._acting_user(call).password = text(body, "password", required=True)
        return True

    def token_by_id(self, body: dict[str, Any], _: Call) -> Any:
        uid = as_id(body.get("user_id"))
        if uid is None:
            raise Refused(10002, "user_id: required")
        user = self._user(uid, "user_id")
        if text(body, "password", required=True) != user.password:
            raise Refused(10002, "password: does not match")
        token = secrets.token_urlsafe(32)
        expire = int((self.clock() + TOKEN_DAYS * 86400) * 1000)
        self.tokens[token] = (uid, expire)
        return {"token": token, "user_id": uid, "expire": expire}

    def list_users(self, query: Form, _: Call) -> Any:
        page_num = int_param(query, "page_num", 1)
        page_size = int_param(query, "page_size", 50)
        if page_num < 1:
            raise Refused(10002, "page_num: must be greater than 0")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise Refused(10002, f"page_size: must be 1 to {MAX_PAGE_SIZE}")
        ids = sorted(self.users)[(page_num - 1) * page_size:page_num * page_size]
        return [{"user_id": uid, "username": self.users[uid].username, "status": 0} for uid in ids]

    # -- messages ------------------------------------------------------------------------

    def _deliver(self, to: int, sender: int | None, content_type: int, content: str,
                 group: int | None = None, msg_id: int | None = None) -> int:
        entry: dict[str, Any] = {"from": str(sender) if sender else "",
                                 "msg_id": next(self._msg_ids) if msg_id is None else msg_id}
        if content_type == 6:  # COMMAND: the client's custom JSON object
            try:
                entry["custom"] = json.loads(content)
            except ValueError:
                entry["text"] = content
        else:
            entry["text"] = content
        if group is not None:
            entry["group"] = str(group)
        return self.store.deliver(to, entry)["msg_id"]

    @staticmethod
    def _content(body: dict[str, Any]) -> tuple[int, str]:
        content_type = body.get("content_type")
        if not isinstance(content_type, int) or isinstance(content_type, bool) \
                or not 0 <= content_type <= 12:
            raise Refused(10002, "content_type: must be 0 to 12")
        return content_type, text(body, "content", required=True)

    @staticmethod
    def _send_op(body: dict[str, Any]) -> str:
        return "send_group" if body.get("type") == 2 else "send"

    def send(self, body: dict[str, Any], call: Call) -> Any:
        target_type = body.get("type")
        if target_type not in (1, 2):
            raise Refused(10002, "type: must be 1 (users) or 2 (groups)")
        targets = id_list(body, "targets")
        if len(targets) > MAX_TARGETS:
            raise Refused(12005, f"targets: at most {MAX_TARGETS} per call")
        content_type, content = self._content(body)
        if content_type in MEDIA and media_of(body.get("attachment")) is None:
            raise Refused(10002, "attachment: a JSON string with a url is required for media")
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
            self.duplicates[call.op] += 1
            return reply(True)
        # One msg_id a target (a group's members share it), posted to the subscription.
        msg_ids = [self._message(sender, target_type, target, content_type, content,
                                 body.get("attachment"), body.get("ext")) for target in targets]
        return reply(True, msg_ids=msg_ids if len(targets) == 1 else None)

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

    def broadcast(self, body: dict[str, Any], call: Call) -> Any:
        if body.get("type") != 1:
            raise Refused(10002, "type: must be 1")
        content_type, content = self._content(body)
        sender = self._acting_user(call).user_id if "user_id" in call.headers else None
        receivers = [uid for uid in sorted(self.users) if uid != sender]
        for uid in receivers:
            self._deliver(uid, sender, content_type, content)
        return {"send_num": len(receivers), "success": True}

    # -- read-back for tests -------------------------------------------------------------

    def key(self, user_id: str) -> int:
        return as_id(user_id) or 0

    def user_id_of(self, username: str) -> str | None:
        uid = self.by_username.get(username.lower())
        return None if uid is None else str(uid)

    def profile(self, user_id: str, user: User) -> Profile:
        return Profile(str(user.user_id), user.nick_name, user.avatar,
                       {k: getattr(user, k) for k in EXTRA_FIELDS if getattr(user, k)})

    def password_of(self, user_id: str) -> str | None:
        user = self.users.get(self.key(user_id))
        return None if user is None else user.password
