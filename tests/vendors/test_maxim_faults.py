"""Maxim against endpoints that misbehave (a tiny Starlette app over ASGI),
and the batch sizes a config sets."""

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile
from imshift.vendors.maxim import MaximClient, MaximConfig
from imshift.vendors.sandbox.maxim import MaximSandbox

BASE = "http://maxim.test"
HTML = Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")


class Endpoint:
    """Answers every call with `answer(path, body)` and keeps what it was sent."""

    def __init__(self, answer):
        self.answer = answer
        self.seen: list[tuple[str, dict, dict]] = []  # (path, headers, JSON body)
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.seen.append((request.url.path, dict(request.headers), body))
        return self.answer(request.url.path, body)

    def client(self, **config) -> MaximClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))
        return MaximClient(MaximConfig(app_id="app-1", access_token="admin-secret",
                                       api_endpoint=BASE, **config), http)


def ok(data=True):
    return JSONResponse({"code": 200, "message": None, "data": data})


# -- sends: an unsure reply is maybe_delivered ------------------------------------------


async def test_html_200_to_a_send_without_a_dedup_key_is_retryable_maybe_delivered():
    site = Endpoint(lambda path, body: HTML)
    results = await site.client().send("2199040544800", ["2199040544816", "2199040544832"],
                                       Message(text="hi"))
    assert [r.outcome for r in results] == [Outcome.RETRYABLE] * 2
    assert all(r.maybe_delivered and r.code == "no code" for r in results)
    assert "not the vendor's JSON" in results[0].message
    assert "transaction_id" not in site.seen[0][2]


async def test_html_200_to_a_send_with_a_dedup_key_may_be_repeated():
    site = Endpoint(lambda path, body: HTML)
    client = site.client()
    results = await client.send("2199040544800", ["2199040544816"], Message(text="hi"), dedup_key="k1")
    assert results[0].outcome is Outcome.RETRYABLE and results[0].maybe_delivered
    assert MaximClient.repeat_safe("send") and MaximClient.repeat_safe(Operation.SEND_GROUP)
    again = await client.send("2199040544800", ["2199040544816"], Message(text="hi"), dedup_key="k1")
    assert again[0].maybe_delivered
    first, second = (body["transaction_id"] for _, _, body in site.seen)
    assert first == second  # a repeat carries the same id, so the vendor drops it


async def test_broadcast_takes_no_transaction_id_so_it_is_not_repeat_safe():
    site = Endpoint(lambda path, body: HTML)
    result = await site.client().broadcast("2199040544800", Message(text="news"), dedup_key="b1")
    assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered
    assert not MaximClient.repeat_safe("broadcast")
    assert not MaximClient.repeat_safe(Operation.BROADCAST)


async def test_a_gateway_error_with_a_code_in_its_body_is_retryable():
    # A body code on a status other than 200 is not Maxim's: the status decides.
    site = Endpoint(lambda path, body: JSONResponse({"code": 10002, "message": "upstream"},
                                                    status_code=502))
    sent = await site.client().send("2199040544800", ["2199040544816"], Message(text="hi"))
    assert sent[0].outcome is Outcome.RETRYABLE and sent[0].code == "http 502"
    assert sent[0].maybe_delivered
    registered = await site.client().register_users([Profile("ann")])
    assert registered[0].outcome is Outcome.RETRYABLE and not registered[0].maybe_delivered


# -- rate limits -------------------------------------------------------------------------


async def test_http_429_is_rate_limited_with_retry_after():
    site = Endpoint(lambda path, body: JSONResponse(
        {"code": 429, "message": "slow down"}, status_code=429, headers={"Retry-After": "7"}))
    client = site.client()
    sent = await client.send("2199040544800", ["2199040544816", "2199040544832"], Message(text="hi"),
                             dedup_key="k")
    assert [(r.outcome, r.retry_after, r.maybe_delivered) for r in sent] == [
        (Outcome.RATE_LIMITED, 7.0, False)] * 2
    assert len(site.seen) == 1  # not split into single calls: nothing was refused
    registered = await client.register_users([Profile("ann")])
    assert registered[0].outcome is Outcome.RATE_LIMITED and registered[0].retry_after == 7.0


async def test_body_code_429_on_http_200_is_rate_limited():
    site = Endpoint(lambda path, body: JSONResponse({"code": 429, "message": "busy"},
                                                    headers={"Retry-After": "2"}))
    results = await site.client().import_friends("2199040544800", ["2199040544816"])
    assert results[0].outcome is Outcome.RATE_LIMITED and results[0].retry_after == 2.0


# -- replies that say OK but leave things out --------------------------------------------


@pytest.mark.parametrize("data", [
    [{"username": "ann", "success": True}, {"username": "bob", "success": True, "user_id": None}],
    [],
    True,
    None,
])
async def test_register_ok_without_user_ids_is_not_ok(data):
    site = Endpoint(lambda path, body: ok(data))
    results = await site.client().register_users([Profile("ann"), Profile("bob")])
    assert [r.outcome for r in results] == [Outcome.RETRYABLE] * 2
    assert all(not r.succeeded and "user_id" not in r.data and not r.maybe_delivered for r in results)
    assert [path for path, _, _ in site.seen] == ["/user/register/batch"]  # no profile calls


async def test_create_group_ok_without_a_group_id_is_maybe_delivered():
    site = Endpoint(lambda path, body: ok({"name": "g"}))
    result = await site.client().create_group(Group("g1", "Team", "2199040544800", ["2199040544816"]))
    assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered
    assert "group_id" in result.message and "group_id" not in result.data


async def test_token_reply_without_a_token_is_not_ok():
    site = Endpoint(lambda path, body: ok({"user_id": 2199040544800}))
    [result] = await site.client().issue_tokens(["2199040544800"])
    assert result.outcome is Outcome.RETRYABLE and "token" not in result.data
    assert [path for path, _, _ in site.seen] == ["/user/change_password_admin", "/token/id"]


# -- headers -----------------------------------------------------------------------------


async def test_admin_headers_on_every_call_and_user_id_only_when_acting_as_a_user():
    site = Endpoint(lambda path, body: ok({"user_id": 2199040544800, "nick_name": "Ann"}))
    client = site.client()
    await client.get_profiles(["2199040544800"])
    await client.send("2199040544800", ["2199040544816"], Message(text="hi"))
    (_, acting, _), (_, plain, _) = site.seen
    for headers in (acting, plain):
        assert headers["app_id"] == "app-1" and headers["access-token"] == "admin-secret"
    assert acting["user_id"] == "2199040544800" and "user_id" not in plain


# -- batch sizes from the config ---------------------------------------------------------


def test_rules_for_applies_the_configs_batch_sizes():
    config = MaximConfig(app_id="a", access_token="t", batch_sizes={Operation.REGISTER: 7})
    assert MaximClient.rules_for(config).batch_size[Operation.REGISTER] == 7
    assert MaximClient.rules.batch_size[Operation.REGISTER] == 100  # the class's own are untouched
    capped = MaximClient.rules_for(MaximConfig(app_id="a", access_token="t", batch_sizes={
        Operation.SEND: 900, "send_group": 1000, Operation.ADD_MEMBERS: 0}))
    assert capped.batch_size[Operation.SEND] == capped.batch_size[Operation.SEND_GROUP] == 500
    assert capped.batch_size[Operation.ADD_MEMBERS] == 1


async def test_the_client_splits_register_batches_by_rules_for():
    sandbox = MaximSandbox()
    config = MaximConfig(app_id=sandbox.app_id, access_token=sandbox.access_token, api_endpoint=BASE,
                         batch_sizes={Operation.REGISTER: 7})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as http:
        client = MaximClient(config, http)
        assert client.rules == MaximClient.rules_for(config)
        results = await client.register_users([Profile(f"u{i}") for i in range(15)])
    assert all(r.outcome is Outcome.OK for r in results)
    assert sandbox.accepted["register"] == 3  # 7 + 7 + 1
