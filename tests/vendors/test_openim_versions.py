"""OpenIM on the shared client base: one class per API version picked by the
config, each version's rules, the auth flow (operationID, the admin token)
and replies the base reads (unreadable, HTTP 429, internal errors)."""

import asyncio
import csv
import dataclasses
import io
import itertools
import json

import httpx
import pytest

from imshift.vendors.vocabulary import Message, Operation, Outcome, Profile
from imshift.vendors.client import CallFailed
from imshift.vendors.openim import OpenIMClient, OpenIMConfig
from imshift.vendors.openim_v1 import RULES_V1, OpenIMV1Client
from imshift.vendors.openim_v2 import RULES_V2, OpenIMV2Client
from imshift.vendors.openim_v3 import RULES_V3, OpenIMV3Client
from imshift.vendors.registry import vendor
from imshift.vendors.sandbox.openim import OpenIMSandbox

BASE = "http://sandbox.test"
_ids = itertools.count()


def uid() -> str:
    return f"v_{next(_ids):06d}"


class Recorder(httpx.AsyncBaseTransport):
    """The sandbox in-process, keeping every request as it left the client
    (path, headers, JSON body) and how many were in flight at most. A path in
    `override` is answered by that (async) function instead."""

    def __init__(self, box, override=None):
        self.inner = httpx.ASGITransport(app=box.app)
        self.override = override or {}
        self.seen = []
        self.in_flight = self.max_in_flight = 0

    async def handle_async_request(self, request):
        self.seen.append((request.url.path, request.headers, json.loads(request.content or b"null")))
        if request.url.path in self.override:
            return await self.override[request.url.path](request, self.inner)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1


def recorded(box, override=None, concurrency=8, **kwargs):
    """A client of `box` through a Recorder, built as the registry's users build one."""
    recorder = Recorder(box, override)
    config = dataclasses.replace(box.config(BASE), concurrency=concurrency)
    client = OpenIMClient(config, httpx.AsyncClient(transport=recorder), **kwargs)
    return client, recorder


async def registered(client, count):
    profiles = [Profile(uid(), f"User {i}") for i in range(count)]
    assert all(r.outcome is Outcome.OK for r in await client.register_users(profiles))
    return [p.user_id for p in profiles]


# -- one class per API version -------------------------------------------------------------

def test_the_config_picks_the_version_class_and_its_rules():
    v3, v2 = OpenIMConfig(secret="x"), OpenIMConfig(secret="x", api_version="v2")
    v1 = OpenIMConfig(secret="x", api_version="v1")
    assert OpenIMClient.for_config(v3) is OpenIMV3Client and OpenIMClient.for_config(v2) is OpenIMV2Client
    assert OpenIMClient.for_config(v1) is OpenIMV1Client and OpenIMClient.rules_for(v1) is RULES_V1
    assert OpenIMClient.rules_for(v2) is RULES_V2 and OpenIMClient.rules_for(v3) is RULES_V3
    assert OpenIMClient.rules is RULES_V3  # read on the class: the default version's
    assert vendor("openim").client is OpenIMClient and vendor("openim").config is OpenIMConfig
    http = httpx.AsyncClient()
    for config, cls in ((v3, OpenIMV3Client), (v2, OpenIMV2Client), (v1, OpenIMV1Client)):
        for made in (OpenIMClient(config, http), OpenIMClient.for_config(config)(config, http, timeout=3)):
            assert type(made) is cls and isinstance(made, OpenIMClient)
            assert made.rules is cls.rules and made.version == config.api_version
            assert made.concurrency == 8


def test_concurrency_is_configured():
    assert OpenIMConfig(secret="x", concurrency=2).concurrency == 2
    with pytest.raises(ValueError, match="concurrency"):
        OpenIMConfig(secret="x", concurrency=0)


def test_a_v2_app_takes_dotted_ids_and_gender_that_v3_refuses():
    rows = list(csv.DictReader(io.StringIO("user_id,name,gender\nalice.smith,Alice,1\n")))
    profiles = [Profile(r["user_id"], r["name"], extra={"gender": r["gender"]}) for r in rows]
    v2 = OpenIMClient.rules_for(OpenIMConfig(secret="x", api_version="v2"))
    v3 = OpenIMClient.rules_for(OpenIMConfig(secret="x"))
    assert [v2.check_profile(p) for p in profiles] == [[]]
    problems = v3.check_profile(profiles[0])
    assert any(p.startswith("gender: not a profile field") for p in problems)
    assert any(p.startswith("user_id: 'alice.smith' is not allowed") for p in problems)
    # and v3 keeps refusing what the v3 server refuses
    assert v3.check_profile(Profile("ok_1", "")) == ["name: required"]
    assert v3.check_profile(Profile("a:b", "A"))[0].startswith("user_id")


@pytest.mark.parametrize("length", [65, 300, 5000])
async def test_v3_takes_long_nicknames_as_its_server_does(length):
    # open-im-server v3: UserRegisterReq.Check refuses only an empty nickname,
    # and neither the user rpc nor its Mongo model limits the length.
    box = OpenIMSandbox()
    client = box.client()
    profiles = [Profile(uid(), "x" * length), Profile(uid(), "名" * length)]
    assert OpenIMClient.rules_for(client.config).check_profile(profiles[0]) == []
    assert [r.outcome for r in await client.register_users(profiles)] == [Outcome.OK] * 2
    assert await client.get_profiles([p.user_id for p in profiles]) == profiles
    [updated] = await client.update_profiles([Profile(profiles[0].user_id, "y" * length)])
    assert updated.outcome is Outcome.OK and box.stored_profile(profiles[0].user_id).name == "y" * length


async def test_v2_still_refuses_a_65_character_nickname():
    box = OpenIMSandbox(api_version="v2")  # ApiUserInfo binding: nickname max=64
    [result] = await box.client().register_users([Profile(uid(), "x" * 65)])
    assert result.outcome is Outcome.REJECTED and result.message.startswith("name: 65 chars")
    assert box.calls.total() == 0


# -- the auth flow -------------------------------------------------------------------------

async def test_v3_puts_the_operation_id_in_a_header_only():
    client, recorder = recorded(OpenIMSandbox())
    await client.get_profiles(await registered(client, 2))
    paths = [path for path, _, _ in recorder.seen]
    assert paths == ["/auth/get_admin_token", "/user/user_register", "/user/get_users_info"]
    ids = [headers["operationID"] for _, headers, _ in recorder.seen]
    assert len(set(ids)) == 3 and all(ids)
    assert all("operationID" not in body for _, _, body in recorder.seen)
    assert "token" not in recorder.seen[0][1] and all(h["token"] for _, h, _ in recorder.seen[1:])


async def test_v2_puts_the_operation_id_in_the_body_only():
    client, recorder = recorded(OpenIMSandbox(api_version="v2"))
    users = await registered(client, 2)
    await client.get_profiles(users)
    await client.issue_tokens(users[:1])
    await client.send(users[0], users[1:], Message(text="hi"))
    paths = [path for path, _, _ in recorder.seen]
    assert paths == ["/auth/user_register"] * 2 + ["/auth/user_token", "/user/get_users_info",
                                                   "/auth/user_token", "/msg/batch_send_msg"]
    assert all("operationid" not in {k.lower() for k in headers} for _, headers, _ in recorder.seen)
    ids = [body["operationID"] for _, _, body in recorder.seen]
    assert len(set(ids)) == len(ids) and all(ids)
    # the admin token goes with admin calls only; register and user tokens carry the secret
    with_token = [path for path, headers, _ in recorder.seen if "token" in headers]
    assert with_token == ["/user/get_users_info", "/msg/batch_send_msg"]


async def test_the_token_fetch_is_throttled_as_auth_and_made_once():
    keys = []

    async def throttle(key, weight):
        keys.append(key)

    box = OpenIMSandbox()
    client, _ = recorded(box, throttle=throttle)
    users = await registered(client, 3)
    await asyncio.gather(*(client.get_profiles(users) for _ in range(10)))
    assert keys[:2] == ["register", "auth"]  # the call's own key, then the token fetch it needs
    assert keys.count("auth") == 1 and box.calls["auth"] == 1


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_a_token_the_server_stops_taking_is_fetched_again_inside_the_call(version):
    box = OpenIMSandbox(api_version=version)
    client, recorder = recorded(box)
    users = await registered(client, 2)
    await client.get_profiles(users)  # the client now holds a token it thinks fresh
    for token in box.tokens.values():
        token.expires_at = 0  # the server drops it (v3: 1501; v2: HTTP 400, the token echoed)
    reads = await asyncio.gather(*(client.get_profiles(users) for _ in range(5)))
    assert all(all(read) for read in reads)
    assert box.calls["auth"] == 2  # the first, and one refresh the five calls share
    assert box.calls["get_profiles"] == 1 + 5  # each sent again once, inside its own call


async def test_a_token_fetch_that_times_out_leaves_no_lock_behind():
    box = OpenIMSandbox()
    hung = []

    async def hang_once(request, inner):
        if not hung:
            hung.append(request)
            await asyncio.sleep(5)
        return await inner.handle_async_request(request)

    client, _ = recorded(box, {"/auth/get_admin_token": hang_once}, timeout=0.1)
    [first] = await client.register_users([Profile(uid(), "Ann")])
    assert first.outcome is Outcome.RETRYABLE and first.code == "timeout"
    [again] = await client.register_users([Profile(uid(), "Bob")])
    assert again.outcome is Outcome.OK


async def test_a_wrong_secret_is_auth_and_never_echoed():
    box = OpenIMSandbox()
    client = box.client(wrong_secret=True)
    [result] = await client.send("someone", ["other"], Message(text="hi"))
    assert result.outcome is Outcome.AUTH and result.code == "1002"
    assert not result.maybe_delivered  # nothing was sent
    assert client.config.secret not in result.message


# -- replies the base reads ----------------------------------------------------------------

async def garbage(request, inner):
    return httpx.Response(200, content=b"<html>bad gateway</html>", headers={"content-type": "text/html"})


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_an_unreadable_reply_to_a_send_may_have_been_delivered(version):
    box = OpenIMSandbox(api_version=version)
    users = await registered(box.client(), 2)
    client, _ = recorded(box, {"/msg/batch_send_msg": garbage, "/user/get_users_info": garbage})
    [sent] = await client.send(users[0], users[1:], Message(text="hi"))
    assert sent.outcome is Outcome.RETRYABLE and sent.code == "no code" and sent.maybe_delivered
    with pytest.raises(CallFailed) as failed:  # a read: safe to repeat
        await client.get_profiles(users)
    assert failed.value.result.outcome is Outcome.RETRYABLE and not failed.value.result.maybe_delivered


@pytest.mark.parametrize("version", ["v3", "v2", "v1"])
async def test_http_429_to_a_send_is_rate_limited_with_retry_after(version):
    box = OpenIMSandbox(api_version=version, rate_limits={"send": 1}, clock=lambda: 7000.5)
    client = box.client()
    users = await registered(client, 3)
    first = await client.send(users[0], users[1:2], Message(text="one"))
    second = await client.send(users[0], users[2:], Message(text="two"))
    assert first[0].outcome is Outcome.OK
    assert second[0].outcome is Outcome.RATE_LIMITED and second[0].code == "http 429"
    assert second[0].retry_after == 1.0 and not second[0].maybe_delivered
    assert box.inbox(users[2]) == []


# -- per-item calls --------------------------------------------------------------------------

@pytest.mark.parametrize("concurrency", [1, 3])
async def test_per_item_calls_run_at_most_concurrency_at_a_time(concurrency):
    box = OpenIMSandbox()
    client, recorder = recorded(box, concurrency=concurrency)
    users = await registered(client, 10)
    box.faults.latency = 0.01  # calls overlap when the client lets them
    recorder.max_in_flight = 0
    results = await client.issue_tokens(users)
    assert [r.data["user_id"] for r in results] == users  # in input order
    assert recorder.max_in_flight == concurrency
    assert client.rules.batch_size[Operation.ISSUE_TOKEN] == 1
