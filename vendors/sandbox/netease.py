"""An in-memory NetEase Yunxin IM server (v1 API under /nimserver).

Faithful where imshift depends on it: the CheckSum headers and the 5-minute
CurTime window, form fields that are all strings (booleans must read
"true"/"false", JSON must parse), the field limits, the open code 414 (bad
parameter, bad signature and "already register" alike), 416 over the limit,
and HTTP 200 on every business reply. JSON-string fields are read as the
vendor's Java server reads them: leniently, so single-quoted JSON (what a
Python tool sends when it writes `str(dict)`) is accepted; what is not JSON
at all is still refused.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import uuid
from typing import Any

from starlette.requests import Request

from ..vocabulary import Profile
from ..netease import TEAM_SIZE, NeteaseClient, NeteaseConfig, checksum
from .common import Call, Endpoint, Form, Refusal, Sandbox
from .netease_feed import NeteaseFeed
from .store import Record

CHECKSUM_WINDOW = 300  # seconds either side of the server clock
ACCID = re.compile(r"[A-Za-z0-9_@.\-]{1,32}")
PROFILE_LIMITS = {"name": 64, "icon": 1024, "sign": 256, "email": 64, "birth": 16,
                  "mobile": 32, "ex": 1024}
MESSAGE_TYPES = {"0", "1", "2", "3", "4", "6", "10", "100"}
VendorError = Refusal  # a refused call: the body code and desc the vendor answers with


class NeteaseSandbox(NeteaseFeed, Sandbox):
    vendor = "netease"
    client_class = NeteaseClient
    secret_attr = "app_secret"
    media_type = "application/json;charset=utf-8"
    SERVER_ERROR = Refusal(500, "server error")
    OVER_LIMIT = Refusal(416, "api frequency control")

    def __init__(self, *, app_key: str = "demo-app-key", app_secret: str = "demo-secret",
                 team_member_limit: int = TEAM_SIZE, **kwargs: Any):
        self.app_key = app_key
        self.app_secret = app_secret
        self.team_member_limit = team_member_limit  # the app's default, owner included
        self.friended_at: dict[tuple[str, str], int] = {}  # (accid, faccid) -> ms
        self._ids = itertools.count(6_000_000_001)
        self.init_netease_feed()  # the message copy (vendors/sandbox/netease_feed.py)
        super().__init__(**kwargs)

    @property
    def teams(self) -> dict[str, Record]:
        return self.store.groups

    # -- wiring ------------------------------------------------------------------------

    def routes(self) -> list:
        return super().routes() + self.feed_routes()

    def endpoints(self) -> list[Endpoint]:
        table = {
            "user/create.action": ("register", self.user_create),
            "user/updateUinfo.action": ("update_profile", self.user_update),
            "user/getUinfos.action": ("get_profiles", self.user_get),
            "user/refreshToken.action": ("issue_token", self.user_refresh_token),
            "msg/sendBatchMsg.action": ("send", self.msg_send_batch),
            "msg/sendMsg.action": ("send_group", self.msg_send),
            "msg/broadcastMsg.action": ("broadcast", self.msg_broadcast),
            "msg/recall.action": ("recall", self.msg_recall),
            "team/create.action": ("create_group", self.team_create),
            "team/add.action": ("add_members", self.team_add),
            "team/query.action": ("get_members", self.team_query),
            "team/joinTeams.action": ("get_groups", self.team_joined),
            "friend/add.action": ("import_friends", self.friend_add),
            "friend/get.action": ("get_friends", self.friend_get),
        }
        return [Endpoint(f"/nimserver/{path}", op, handler) for path, (op, handler) in table.items()]

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"code": code, "desc": message}

    def ok_body(self, data: Any) -> dict[str, Any]:
        return {"code": 200, **data}

    def authenticate(self, request: Request) -> None:
        headers = request.headers  # case-insensitive, as HTTP header names are
        values: dict[str, str] = {}
        for name in ("AppKey", "Nonce", "CurTime", "CheckSum"):
            value = headers.get(name)
            if not value:
                raise Refusal(414, f"{name} header is missing")
            values[name] = value
        if values["AppKey"] != self.app_key:
            raise Refusal(414, "appkey")
        if len(values["Nonce"]) > 128:
            raise Refusal(414, "Nonce is longer than 128 characters")
        if not values["CurTime"].isdigit():
            raise Refusal(414, "CurTime is not UTC seconds")
        if abs(self.clock() - int(values["CurTime"])) > CHECKSUM_WINDOW:
            raise Refusal(414, "CurTime is expired")
        expected = checksum(self.app_secret, values["Nonce"], values["CurTime"])
        if not hmac.compare_digest(values["CheckSum"].lower(), expected):
            raise Refusal(414, "checksum")

    def client_config(self, base_url: str, secret: str) -> NeteaseConfig:
        return NeteaseConfig(self.app_key, secret, base_url=base_url.rstrip("/") + "/nimserver")

    # -- accounts ----------------------------------------------------------------------

    def user_create(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accid = accid_param(form, "accid")
        profile = profile_params(form)
        token = text_param(form, "token", 128) or uuid.uuid4().hex
        text_param(form, "props", 1024)
        if accid in self.users:
            self.duplicates["register"] += 1
            raise Refusal(414, "already register")
        self.users[accid] = {"token": token, **profile}
        return {"info": {"token": token, "accid": accid, "name": profile.get("name", "")}}

    def user_update(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accid = self._known(form, "accid")
        self.users[accid].update(profile_params(form))
        return {}

    def user_get(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accids = list_param(form, "accids", max_items=200)
        uinfos = []
        for accid in dict.fromkeys(a.lower() for a in accids):
            user = self.users.get(accid)
            if user is not None:
                info: dict[str, Any] = {"accid": accid}
                info.update((k, v) for k, v in user.items() if k != "token")
                if "gender" in info:
                    info["gender"] = int(info["gender"])
                uinfos.append(info)
        return {"uinfos": uinfos}

    def user_refresh_token(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accid = self._known(form, "accid")
        token = uuid.uuid4().hex
        self.users[accid]["token"] = token
        return {"info": {"token": token, "accid": accid}}

    # -- messages ----------------------------------------------------------------------

    def msg_send_batch(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        sender = self._known(form, "fromAccid")
        return_msgid = boolean_param(form, "returnMsgid")
        targets = list_param(form, "toAccids", max_items=100 if return_msgid else 500)
        content = message_params(form, max_body=5000)
        route, ext = route_param(form), text_param(form, "ext", 1024)
        unregistered, msgids = [], {}
        for target in dict.fromkeys(t.lower() for t in targets):
            if target in self.users:
                msgids[target] = self.store_message(sender, target, False, content,
                                                    route=route, ext=ext)[0]
                for copy in self.copies(msgids[target]):
                    self.feed.push(copy)
            else:
                unregistered.append(target)
        answer: dict[str, Any] = {"unregister": json.dumps(unregistered)}
        if return_msgid:
            answer.update(msgids=msgids, timetag=self._now_ms())
        return answer

    def msg_send(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        sender = self._known(form, "from")
        ope = choice_param(form, "ope", ("0", "1"), required=True)
        to = text_param(form, "to", 128, required=True)
        content = message_params(form, max_body=5000)
        route, ext = route_param(form), text_param(form, "ext", 1024)
        if ope == "0":
            to = self._known(form, "to")
        elif sender not in self._team(to)["members"]:
            raise Refusal(804, f"from: {sender} is not a member of team {to}")
        msgid, timetag = self.store_message(sender, to, ope == "1", content, route=route, ext=ext)
        for copy in self.copies(msgid):  # copied unless option says route=false
            self.feed.push(copy)
        return {"data": {"msgid": msgid, "timetag": timetag, "antispam": False}}

    def msg_broadcast(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        body = text_param(form, "body", 4096, required=True)
        sender = self._known(form, "from") if form.get("from") else ""
        offline = boolean_param(form, "isOffline")
        ttl = int_param(form, "ttl", default=7 * 24)
        target_os = list_param(form, "targetOs", required=False)
        broadcast_id = next(self._ids)
        for accid in self.users:
            if accid != sender:
                self._deliver(accid, {"from": sender, "text": body, "broadcast_id": broadcast_id,
                                      "msgid": broadcast_id})
        created = self._now_ms()
        return {"msg": {"broadcastId": broadcast_id, "from": sender, "body": body,
                        "isOffline": offline, "createTime": created,
                        "expireTime": created + ttl * 3_600_000, "targetOs": target_os}}

    def _deliver(self, accid: str, message: dict[str, Any]) -> int:
        message.setdefault("msgid", next(self._ids))
        return self.store.deliver(accid, message)["msgid"]

    # -- teams and friends -------------------------------------------------------------

    def team_create(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        tname = text_param(form, "tname", 64, required=True)
        owner = self._known(form, "owner")
        members = self._members(form)
        text_param(form, "msg", 150, unit="bytes", required=True)
        agree = choice_param(form, "magree", ("0", "1"), required=True)
        choice_param(form, "joinmode", ("0", "1", "2"), required=True)
        limit = int_param(form, "teamMemberLimit", default=self.team_member_limit)
        joining = set(members) - {owner}
        if len(joining) + 1 > limit:
            raise Refusal(801, f"members: the team would have {len(joining) + 1} people, "
                                   f"at most {limit} allowed")
        tid = str(next(self._ids))
        self.teams[tid] = Record(tname=tname, owner=owner, limit=limit,
                                 members={owner} | (set() if agree == "1" else joining),
                                 invited=joining if agree == "1" else set())
        return {"tid": tid}

    def team_add(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        tid = text_param(form, "tid", 128, required=True)
        owner = self._known(form, "owner")
        members = self._members(form)
        text_param(form, "msg", 150, unit="bytes", required=True)
        agree = choice_param(form, "magree", ("0", "1"), required=True)
        team = self._team(tid)
        if team["owner"] != owner:
            raise Refusal(802, f"owner: {owner} is not the owner of team {tid}")
        present = set(members) & team["members"]
        self.duplicates["add_members"] += len(present)
        joining = set(members) - present
        if len(team["members"]) + len(joining) > team["limit"]:
            raise Refusal(801, f"members: the team would have "
                                   f"{len(team['members']) + len(joining)} people, "
                                   f"at most {team['limit']} allowed")
        team["invited" if agree == "1" else "members"] |= joining
        return {}

    def _members(self, form: Form) -> list[str]:
        members = list_param(form, "members", max_items=200, max_bytes=1024)
        members = [m.lower() for m in members]
        unknown = [m for m in members if m not in self.users]
        if unknown:
            raise Refusal(414, f"members: not registered: {', '.join(unknown[:10])}")
        return members

    def friend_add(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accid = self._known(form, "accid")
        faccid = self._known(form, "faccid")
        kind = choice_param(form, "type", ("1", "2", "3", "4"), required=True)
        text_param(form, "msg", 256)
        text_param(form, "serverex", 256)
        if kind != "1":
            raise Refusal(414, "type: only 1 (add directly) is simulated")
        if accid == faccid:
            raise Refusal(414, "faccid: cannot befriend oneself")
        if not self.store.befriend(accid, faccid):
            self.duplicates["import_friends"] += 1
            raise Refusal(417, "already friends")
        self.friended_at[accid, faccid] = self.friended_at[faccid, accid] = self._now_ms()
        return {}

    def friend_get(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        """Friends changed after `updatetime` (ms) or `createtime` (seconds, older clients)."""
        accid = self._known(form, "accid")
        if not form.get("updatetime") and not form.get("createtime"):
            raise Refusal(414, "updatetime is required")
        since = int_param(form, "updatetime", default=-1)
        if since < 0:
            since = int_param(form, "createtime", default=0) * 1000
        friends = [{"faccid": f, "createtime": self.friended_at.get((accid, f), 0),
                    "bidirection": True}
                   for f in sorted(self.store.friends.get(accid, ()))
                   if self.friended_at.get((accid, f), 0) >= since]
        return {"size": len(friends), "friends": friends}

    def team_query(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        """`tids` (a JSON array of ids), `ope` 1 = with the members."""
        try:
            tids = lenient_json(text_param(form, "tids", 4096, required=True))
        except ValueError:
            tids = None
        if not isinstance(tids, list) or not all(isinstance(t, (str, int)) for t in tids):
            raise Refusal(414, "tids is not a JSON array of team ids")
        with_members = choice_param(form, "ope", ("0", "1"), required=True) == "1"
        infos = []
        for tid in dict.fromkeys(str(t) for t in tids):
            team = self.teams.get(tid)
            if team is not None:
                info = self._team_info(tid, team)
                if with_members:
                    info.update(members=sorted(team["members"] - {team["owner"]}), admins=[])
                infos.append(info)
        return {"tinfos": infos}

    def team_joined(self, form: Form, _: Call | None = None) -> dict[str, Any]:
        accid = self._known(form, "accid")
        infos = [self._team_info(tid, team) for tid, team in self.teams.items()
                 if accid in team["members"]]
        return {"count": len(infos), "infos": infos}

    @staticmethod
    def _team_info(tid: str, team: Record) -> dict[str, Any]:
        return {"tid": int(tid), "tname": team["tname"], "owner": team["owner"],
                "size": len(team["members"]), "maxusers": team["limit"]}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lookups -----------------------------------------------------------------------

    def _known(self, form: Form, name: str) -> str:
        accid = accid_param(form, name)
        if accid not in self.users:
            raise Refusal(414, f"{name}: {accid} is not registered")
        return accid

    def _team(self, tid: str) -> dict[str, Any]:
        team = self.teams.get(tid)
        if team is None:
            raise Refusal(803, f"tid: team {tid} does not exist")
        return team

    # -- read-back for tests -----------------------------------------------------------

    def profile(self, user_id: str, record: dict[str, str]) -> Profile:
        extra = {k: v for k, v in record.items() if k not in ("token", "name", "icon")}
        return Profile(user_id, record.get("name", ""), record.get("icon", ""), extra)

    def token(self, user_id: str) -> str | None:
        user = self.users.get(user_id)
        return user["token"] if user else None


# -- replies and parameters ------------------------------------------------------------

STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'((?:\\.|[^\'\\])*)\'', re.S)
ESCAPE = re.compile(r'\\(.)|"', re.S)


def lenient_json(text: str) -> Any:
    """JSON as the vendor's lenient Java parser reads it: strings may also be
    single-quoted, as Python's repr of a dict or list writes them."""
    try:
        return json.loads(text)
    except ValueError:
        pass

    def requote(match: re.Match) -> str:
        inner = match.group(1)
        if inner is None:  # a double-quoted string goes through as it is
            return match.group(0)
        return '"' + ESCAPE.sub(lambda e: '\\"' if e.group(1) is None else
                                ("'" if e.group(1) == "'" else e.group(0)), inner) + '"'
    return json.loads(STRING.sub(requote, text))


def text_param(form: Form, name: str, max_len: int, *, unit: str = "chars",
               required: bool = False) -> str:
    value = form.get(name, "")
    if not value:
        if required:
            raise Refusal(414, f"{name} is required")
        return ""
    size = len(value.encode()) if unit == "bytes" else len(value)
    if size > max_len:
        raise Refusal(414, f"{name} is too long: {size} {unit}, at most {max_len}")
    return value


def accid_param(form: Form, name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise Refusal(414, f"{name} is required")
    if not ACCID.fullmatch(value):
        raise Refusal(414, f"{name}: {value[:40]!r} is not a valid accid "
                               "(at most 32 of letters, digits, _ @ . -)")
    return value.lower()  # accids are case-insensitive: stored lower-cased


def boolean_param(form: Form, name: str) -> bool:
    value = form.get(name)
    if value is None or value == "":
        return False
    if value not in ("true", "false"):
        raise Refusal(414, f"{name} not boolean")
    return value == "true"


def int_param(form: Form, name: str, *, default: int) -> int:
    value = form.get(name, "")
    if value == "":
        return default
    if not re.fullmatch(r"-?\d+", value):
        raise Refusal(414, f"{name} not integer")
    return int(value)


def choice_param(form: Form, name: str, choices: tuple[str, ...], *,
                 required: bool = False) -> str:
    value = form.get(name, "")
    if value == "" and not required:
        return ""
    if value not in choices:
        raise Refusal(414, f"{name}: {value[:20]!r} is not one of {', '.join(choices)}")
    return value


def list_param(form: Form, name: str, *, max_items: int | None = None,
               max_bytes: int | None = None, required: bool = True) -> list[str]:
    """A JSON array of strings sent as one form field."""
    raw = form.get(name, "")
    if raw == "":
        if required:
            raise Refusal(414, f"{name} is required")
        return []
    if max_bytes is not None and len(raw.encode()) > max_bytes:
        raise Refusal(414, f"{name} is too long: {len(raw.encode())} bytes, "
                               f"at most {max_bytes}")
    try:
        items = lenient_json(raw)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Refusal(414, f"{name} is not a JSON array of strings")
    if max_items is not None and len(items) > max_items:
        raise Refusal(414, f"{name}: {len(items)} items, at most {max_items}")
    return items


def profile_params(form: Form) -> dict[str, str]:
    fields = {name: text_param(form, name, size) for name, size in PROFILE_LIMITS.items()}
    gender = choice_param(form, "gender", ("0", "1", "2"))
    if gender:
        fields["gender"] = gender
    return {name: value for name, value in fields.items() if value}


def route_param(form: Form) -> bool:
    """Whether the send is copied to the app's feed: option's `route`, true
    unless set false (NetEase's msg/send* option field)."""
    raw = form.get("option", "")
    if not raw:
        return True
    try:
        option = lenient_json(raw)
    except ValueError:
        option = None
    if not isinstance(option, dict):
        raise Refusal(414, "option is not a JSON object")
    route = option.get("route", True)
    if not isinstance(route, bool):
        raise Refusal(414, "option: route not boolean")
    return route


def message_params(form: Form, *, max_body: int) -> dict[str, Any]:
    """`type` and `body` of a message, as an inbox entry: text or custom."""
    kind = choice_param(form, "type", tuple(sorted(MESSAGE_TYPES)), required=True)
    body = text_param(form, "body", max_body, required=True)
    try:
        content = lenient_json(body)
    except ValueError:
        raise Refusal(414, "body is not JSON") from None
    if kind == "0":
        if not isinstance(content, dict) or not isinstance(content.get("msg"), str):
            raise Refusal(414, 'body: a text message needs {"msg": "..."}')
        return {"text": content["msg"]}
    if kind in ("1", "6") and not (isinstance(content, dict) and content.get("url")):
        raise Refusal(414, "body: a picture or file message needs its url")
    return {"custom": content, "type": int(kind)}
