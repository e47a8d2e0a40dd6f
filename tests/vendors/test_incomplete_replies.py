"""A success reply without the value its operation exists for (a token, the
vendor's id, a message id) is never `ok`: it is `retryable` "incomplete"
(and maybe delivered, for a send). Each vendor's client talks over
in-process HTTP to its sandbox, behind a gateway that takes that one value
out of the sandbox's own reply after the sandbox has acted."""

import asyncio
import json

import pytest
from starlette.responses import JSONResponse

from imshift.vendors.vocabulary import Group, Message, Outcome, Profile
from imshift.vendors.sandbox.maxim import MaximSandbox
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox


def without(box, path, *field, when=lambda body: True):
    """Requests to `path` (whose JSON body `when` accepts) get the sandbox's
    reply with `field` (a dotted path, given as parts) emptied: {} for a
    dict, removed otherwise."""
    sandbox = box.app

    async def gateway(scope, receive, send):
        if scope.get("type") != "http" or not scope.get("path", "").endswith(path):
            return await sandbox(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            wanted = when(json.loads(body))
        except ValueError:  # a form body
            wanted = True
        if not wanted:
            return await sandbox(scope, replay, send)
        parts = []

        async def keep(message):
            if message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await sandbox(scope, replay, keep)
        reply = json.loads(b"".join(parts))
        inner = reply
        for part in field[:-1]:
            inner = inner[part]
        if isinstance(inner.get(field[-1]), dict):
            inner[field[-1]] = {}
        else:
            inner.pop(field[-1], None)
        await JSONResponse(reply)(scope, receive, send)

    box.app = gateway
    return box


def answer(box, path, reply):
    """Calls to `path` are answered `reply` at the gateway; the sandbox never sees them."""
    sandbox = box.app

    async def gateway(scope, receive, send):
        if scope.get("path") != path:
            return await sandbox(scope, receive, send)
        await JSONResponse(reply)(scope, receive, send)

    box.app = gateway


def incomplete(result):
    assert (result.outcome, result.code) == (Outcome.RETRYABLE, "incomplete"), result
    assert not result.data.get("token") and not result.data.get("msg_id")


async def registered(box, *ids):
    results = await box.client().register_users([Profile(i, i.title()) for i in ids])
    assert all(r.succeeded for r in results), results
    return [r.data.get("user_id", i) for r, i in zip(results, ids, strict=True)]


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_openim_a_user_token_reply_without_a_token_is_not_ok(version):
    async def go():
        box = OpenIMSandbox(api_version=version)
        await registered(box, "ann")
        path = "/auth/get_user_token" if version == "v3" else "/auth/user_token"
        # v3 {"errCode":0,"data":{}}; v2's path serves the admin's token too: only ann's is emptied.
        without(box, path, "data", when=lambda body: body.get("userID") == "ann")
        [result] = await box.client().issue_tokens(["ann"])
        incomplete(result)

    asyncio.run(go())


@pytest.mark.parametrize("version", ["v3", "v2"])
@pytest.mark.parametrize("group", [False, True])
def test_openim_a_send_reply_without_a_message_id_is_not_ok(version, group):
    async def go():
        box = OpenIMSandbox(api_version=version)
        await registered(box, "ann", "bob")
        path = "/msg/send_msg" if version == "v3" else "/msg/manage_send_msg"
        without(box, path, "data", "serverMsgID")
        client = box.client()  # after the gateway: a client holds the app it was made with
        if group:
            assert (await client.create_group(Group("g1", "G", "ann", ["bob"]))).succeeded
            [result] = await client.send_group("ann", ["g1"], Message(text="hi"))
        else:  # a recipient the batch call failed is sent alone, through send_msg
            failed_key = "failedUserIDs" if version == "v3" else "FailedIDList"
            answer(box, "/msg/batch_send_msg", {"errCode": 0, "errMsg": "", "data": {failed_key: ["bob"]}})
            client = box.client()
            [result] = await client.send("ann", ["bob"], Message(text="hi"))
        assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered, result
        assert not result.data.get("msg_id")

    asyncio.run(go())


def test_openim_a_batch_send_result_without_a_message_id_leaves_its_recipient_unsure():
    async def go():
        box = OpenIMSandbox()
        await registered(box, "ann", "bob")
        answer(box, "/msg/batch_send_msg", {"errCode": 0, "errMsg": "", "data": {  # bob, but no ids
            "results": [{"recvID": "bob"}], "failedUserIDs": []}})
        [result] = await box.client().send("ann", ["bob"], Message(text="hi"))
        assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered, result

    asyncio.run(go())


def test_netease_a_group_send_reply_without_a_msgid_is_not_ok():
    async def go():
        box = NeteaseSandbox()
        await registered(box, "ann", "bob")
        without(box, "msg/sendMsg.action", "data")
        client = box.client()
        created = await client.create_group(Group("g", "G", "ann", ["bob"]))
        assert created.succeeded, created
        [result] = await client.send_group("ann", [created.data["group_id"]], Message(text="hi"))
        assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered, result
        assert "msg_id" not in result.data

    asyncio.run(go())


@pytest.mark.parametrize("path, field", [
    ("user/refreshToken.action", ("info", "token")),  # issue_tokens
    ("team/create.action", ("tid",)),  # create_group: NetEase picks the id
])
def test_netease_replies_without_the_value_were_already_refused(path, field):
    async def go():
        box = NeteaseSandbox()
        await registered(box, "ann", "bob")
        without(box, path, *field)
        client = box.client()
        result = ((await client.issue_tokens(["ann"]))[0] if "Token" in path else
                  await client.create_group(Group("g", "G", "ann", ["bob"])))
        assert (result.outcome, result.code) == (Outcome.RETRYABLE, "incomplete"), result

    asyncio.run(go())


def test_rongcloud_a_get_token_reply_without_a_token_is_not_ok():
    async def go():
        box = without(RongCloudSandbox(), "/user/getToken.json", "token")
        [result] = await box.client().register_users([Profile("ann", "Ann")])
        incomplete(result)

    asyncio.run(go())


@pytest.mark.parametrize("path, field", [
    ("/user/register/batch", None),  # each item's user_id: Maxim picks the id
    ("/token/id", ("data", "token")),
    ("/group/create", ("data", "group_id")),
])
def test_maxim_replies_without_the_vendors_id_or_token_are_not_ok(path, field):
    async def go():
        box = MaximSandbox()
        ann, bob = await registered(box, "ann", "bob")
        if path == "/user/register/batch":
            sandbox = box.app

            async def gateway(scope, receive, send):
                if scope.get("path") != path:
                    return await sandbox(scope, receive, send)
                parts = []

                async def keep(message):
                    if message["type"] == "http.response.body":
                        parts.append(message.get("body", b""))

                await sandbox(scope, receive, keep)
                reply = json.loads(b"".join(parts))
                for item in reply["data"]:
                    item.pop("user_id", None)
                await JSONResponse(reply)(scope, receive, send)

            box.app = gateway
            [result] = await box.client().register_users([Profile("carol", "Carol")])
            assert result.outcome is Outcome.RETRYABLE and "user_id" not in result.data, result
            return
        client = without(box, path, *field).client()
        result = ((await client.issue_tokens([ann]))[0] if path == "/token/id" else
                  await client.create_group(Group("g", "G", ann, [bob])))
        assert (result.outcome, result.code) == (Outcome.RETRYABLE, "incomplete"), result

    asyncio.run(go())
