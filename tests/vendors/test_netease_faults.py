"""NetEase behind a misbehaving gateway: replies that cannot be read, HTTP
429, success replies missing what the call must return, and 416. Real HTTP
(in-process ASGI) to the NetEase sandbox, whose replies a gateway in front of
it replaces; the sandbox's inboxes say what was really delivered."""

import asyncio
import dataclasses
import json
import time

import httpx
import pytest
from starlette.responses import HTMLResponse, JSONResponse, Response

from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.jobs.progress import progress, results
from imshift.vendors.vocabulary import Group, Message, Outcome, Profile
from imshift.vendors.netease import NeteaseClient
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.settings import AppSettings, Settings
from imshift.workers.embedded import in_process_workers

BASE = "http://sandbox.test"
BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def behind_gateway(box, rewrites):
    """Put a gateway in front of `box`: a call to a path in `rewrites` (as
    "msg/sendBatchMsg.action") is answered with what the rewrite gives. A
    Response is answered at the gateway (the sandbox never sees the call); a
    function of the sandbox's reply body answers after the sandbox has acted."""
    sandbox = box.app

    async def gateway(scope, receive, send):
        rewrite = rewrites.get(scope.get("path", "").removeprefix("/nimserver/"))
        if rewrite is None:
            return await sandbox(scope, receive, send)
        if not isinstance(rewrite, Response):
            parts = []

            async def keep(message):
                if message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))

            await sandbox(scope, receive, keep)
            rewrite = rewrite(b"".join(parts))
        await rewrite(scope, receive, send)

    box.app = gateway
    return box


async def registered(box, *ids):
    results = await box.client().register_users([Profile(i, i) for i in ids])
    assert all(r.outcome is Outcome.OK for r in results), results


def without(*path):
    """The sandbox's own reply with one (dotted) field taken out."""
    def rewrite(body):
        reply = json.loads(body)
        inner = reply
        for part in path[:-1]:
            inner = inner[part]
        del inner[path[-1]]
        return JSONResponse(reply)
    return rewrite


UNREADABLE = {
    "html": lambda body: HTMLResponse(BAD_GATEWAY),  # HTTP 200, a proxy's page
    "truncated": lambda body: Response(body[:len(body) // 2], media_type="application/json"),
    "internal error": lambda body: JSONResponse({"code": 500, "desc": "server error"}),
    "html 502": lambda body: HTMLResponse(BAD_GATEWAY, status_code=502),
}


# -- 1. a reply that cannot be read, to a call that is not idempotent -------------------------

@pytest.mark.parametrize("reply", list(UNREADABLE), ids=list(UNREADABLE))
async def test_an_unreadable_reply_to_a_batch_send_may_have_been_delivered(reply):
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat", "dan")
    behind_gateway(box, {"msg/sendBatchMsg.action": UNREADABLE[reply]})
    results = await box.client().send("ann", ["bob", "cat", "dan"], Message(text="once"))
    assert all(r.outcome is Outcome.RETRYABLE and r.maybe_delivered for r in results), results
    assert box.calls["send"] == 1  # the client did not send it again itself
    assert [len(box.inbox(u)) for u in ("bob", "cat", "dan")] == [1, 1, 1]


@pytest.mark.parametrize("reply", list(UNREADABLE), ids=list(UNREADABLE))
async def test_an_unreadable_reply_to_a_group_send_or_broadcast_may_have_been_delivered(reply):
    box = NeteaseSandbox()
    await registered(box, "ann", "bob")
    tid = (await box.client().create_group(Group("g", "G", "ann", ["bob"]))).data["group_id"]
    behind_gateway(box, {"msg/sendMsg.action": UNREADABLE[reply],
                         "msg/broadcastMsg.action": UNREADABLE[reply]})
    client = box.client()
    [to_group] = await client.send_group("ann", [tid], Message(text="to team"))
    to_all = await client.broadcast("ann", Message(text="to everyone"))
    for result in (to_group, to_all):
        assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered, result
    assert box.calls["send_group"] == box.calls["broadcast"] == 1
    assert [m["text"] for m in box.inbox("bob")] == ["to team", "to everyone"]


@pytest.mark.parametrize("reply", list(UNREADABLE), ids=list(UNREADABLE))
async def test_an_unreadable_reply_to_an_idempotent_call_is_plainly_retryable(reply):
    box = behind_gateway(NeteaseSandbox(), {"user/create.action": UNREADABLE[reply],
                                            "user/updateUinfo.action": UNREADABLE[reply]})
    [created] = await box.client().register_users([Profile("ann", "Ann")])
    [updated] = await box.client().update_profiles([Profile("ann", "Annie")])
    for result in (created, updated):
        assert result.outcome is Outcome.RETRYABLE and not result.maybe_delivered, result


def test_a_batch_send_job_whose_replies_cannot_be_read_delivers_each_message_once(tmp_path):
    """The report: 1,000 recipients behind a gateway that garbles the reply
    got 8 copies each (one per attempt). Now the items end `unknown`."""
    ctx = Context(Settings(database_url=f"sqlite:///{tmp_path}/imshift.db",
                           apps={"new": AppSettings(vendor="netease", sandbox=True)}))
    box = ctx.sandboxes["new"] = NeteaseSandbox()
    recipients = [f"user_{i:06d}" for i in range(1000)]
    asyncio.run(registered(box, "sender", *recipients))
    behind_gateway(box, {"msg/sendBatchMsg.action": UNREADABLE["html"]})
    to = tmp_path / "to.txt"
    to.write_text("\n".join(recipients), encoding="utf-8")
    planned = kinds.plan_send(ctx.engine, ctx.target("new"), to, sender="sender",
                                 message=Message(text="once only"), chunk_size=500)
    job_id = planned.report.job_id
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        control.start(ctx.engine, ctx.broker, job_id)
        deadline = time.monotonic() + 60
        while (p := progress(ctx.engine, job_id)).status == "running":
            assert time.monotonic() < deadline, p
            time.sleep(0.1)
    assert p.status == "finished"
    assert p.counts == {"unknown": 1000}, p.counts
    assert box.calls["send"] == 2
    assert {len(box.inbox(r)) for r in recipients} == {1}
    assert "may have been delivered" in next(iter(results(ctx.engine, job_id, "unknown"))).message


# -- 2. HTTP 429 -------------------------------------------------------------------------------

TOO_MANY = {
    "json body": (JSONResponse({"message": "Too Many Requests"}, status_code=429,
                               headers={"Retry-After": "7"}), 7.0),
    "empty body": (Response(b"", status_code=429, headers={"Retry-After": "7"}), 7.0),
    "html, no Retry-After": (HTMLResponse("<h1>429 Too Many Requests</h1>", status_code=429), None),
}


@pytest.mark.parametrize("reply", list(TOO_MANY), ids=list(TOO_MANY))
async def test_http_429_is_rate_limited_for_every_item_with_retry_after(reply):
    answer, retry_after = TOO_MANY[reply]
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat")
    behind_gateway(box, {"msg/sendBatchMsg.action": answer, "user/create.action": answer})
    sent = await box.client().send("ann", ["bob", "cat"], Message(text="hi"))
    created = await box.client().register_users([Profile("dan"), Profile("eve")])
    for result in sent + created:
        assert result.outcome is Outcome.RATE_LIMITED, result
        assert result.code == "http 429" and result.retry_after == retry_after
        assert not result.maybe_delivered
    assert box.calls["send"] == 0 and box.inbox("bob") == [] and "dan" not in box.users


# -- 3. a success reply without what the call must return ------------------------------------

async def test_refresh_token_without_a_token_is_retryable():
    box = NeteaseSandbox()
    await registered(box, "ann")
    behind_gateway(box, {"user/refreshToken.action": without("info", "token")})
    [result] = await box.client().issue_tokens(["ann"])
    assert result.outcome is Outcome.RETRYABLE and result.code == "incomplete", result
    assert "info.token" in result.message and not result.maybe_delivered
    assert result.data == {"user_id": "ann"}


async def test_team_create_without_a_tid_is_retryable_and_adds_no_one():
    box = NeteaseSandbox()
    members = [f"member_{i:024d}" for i in range(100)]  # three slices
    await registered(box, "owner", *members)
    behind_gateway(box, {"team/create.action": without("tid")})
    result = await box.client().create_group(Group("g", "Big", "owner", members))
    assert result.outcome is Outcome.RETRYABLE and result.code == "incomplete", result
    assert "tid" in result.message
    assert result.maybe_delivered  # the team was made: creating it again makes a second one
    assert len(box.teams) == 1 and box.calls["add_members"] == 0


async def test_user_create_without_info_is_retryable():
    box = behind_gateway(NeteaseSandbox(), {"user/create.action": without("info")})
    [result] = await box.client().register_users([Profile("ann", "Ann")])
    assert result.outcome is Outcome.RETRYABLE and result.code == "incomplete", result
    assert "info" in result.message and not result.maybe_delivered
    assert "token" not in result.data


# -- 4. 416, frequency control ----------------------------------------------------------------

async def test_416_is_rate_limited_with_the_vendor_block_period():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob")
    tid = (await box.client().create_group(Group("g", "G", "ann", ["bob"]))).data["group_id"]
    limited = JSONResponse({"code": 416, "desc": "api frequency control"})
    behind_gateway(box, {path: limited for path in (
        "user/create.action", "msg/sendBatchMsg.action", "msg/sendMsg.action",
        "msg/broadcastMsg.action")})
    client = box.client()
    [register] = await client.register_users([Profile("cat")])
    sends = await client.send("ann", ["bob", "ann"], Message(text="hi"))
    [group] = await client.send_group("ann", [tid], Message(text="hi"))
    broadcast = await client.broadcast("ann", Message(text="hi"))
    for result in [register, *sends, group, broadcast]:
        assert result.outcome is Outcome.RATE_LIMITED and result.code == "416", result
        assert result.message == "api frequency control" and not result.maybe_delivered
    assert register.retry_after == 10.0
    assert [r.retry_after for r in sends] == [60.0, 60.0]
    assert group.retry_after is None and broadcast.retry_after is None
    assert box.inbox("bob") == []


async def test_416_with_a_retry_after_header_waits_that_long():
    box = behind_gateway(NeteaseSandbox(), {"user/create.action": JSONResponse(
        {"code": 416, "desc": "api frequency control"}, headers={"Retry-After": "3"})})
    [result] = await box.client().register_users([Profile("ann")])
    assert result.outcome is Outcome.RATE_LIMITED and result.retry_after == 3.0


# -- per-item concurrency ---------------------------------------------------------------------

async def test_one_item_calls_go_out_at_most_concurrency_at_a_time():
    box = NeteaseSandbox()
    sandbox = box.app
    in_flight, most = [0], [0]

    async def counting(scope, receive, send):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await asyncio.sleep(0.01)
            await sandbox(scope, receive, send)
        finally:
            in_flight[0] -= 1

    box.app = counting
    config = dataclasses.replace(box.config(BASE), concurrency=3)
    client = NeteaseClient(config, httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)))
    results = await client.register_users([Profile(f"u{i}") for i in range(12)])
    assert all(r.outcome is Outcome.OK for r in results)
    assert most[0] == 3
    assert box.config(BASE).concurrency == 8
